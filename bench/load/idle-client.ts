/**
 * Load client for bench:memory, run as its own process: opens N sockets
 * (spread over 127.0.0.x), each subscribed to one collection, prints
 * {"phase":"ready"} and keeps them open, idle, until its stdin closes.
 * With BENCH_CONNECT_ONLY=1 it measures connection setup alone (until our
 * `connected` frame, or the bare server's first frame), then closes them.
 */
import { type Counter, openSubscribed } from './ws-counter.ts'

const [target, url, countArg, collectionsArg] = process.argv.slice(2)
if (!target || !url || !countArg)
  throw new Error('usage: idle-client <ours|bare> <http url> <connections> [collections]')
const count = Number(countArg)
const collections = Number(collectionsArg ?? 1)
const port = Number(new URL(url).port)
const counter: Counter = { frames: 0, bytes: 0 }
const connectOnly = process.env.BENCH_CONNECT_ONLY === '1'
/** One token per client (bench:memory signs them before the timed connects). */
const tokens = process.env.BENCH_TOKEN_FILE
  ? (await Bun.file(process.env.BENCH_TOKEN_FILE).text()).split('\n')
  : undefined

async function open(i: number) {
  const host = `127.0.0.${1 + (i % 4)}`
  const query = tokens ? `token=${tokens[i]}` : `user_id=bench${i}`
  const path = target === 'ours' ? `/api/ws/socket?${query}` : '/'
  return openSubscribed(host, port, path, counter, `bench${i % collections}`, connectOnly)
}

const started = performance.now()
const sockets = []
for (let start = 0; start < count; start += 500) {
  const batch = []
  for (let i = start; i < Math.min(start + 500, count); i++) batch.push(open(i))
  sockets.push(...(await Promise.all(batch)))
}
const seconds = (performance.now() - started) / 1000
if (connectOnly) {
  console.log(
    JSON.stringify({ connections: sockets.length, seconds, rate: sockets.length / seconds }),
  )
  for (const socket of sockets) socket.end()
  process.exit(0)
}
console.log('{"phase":"ready"}')
console.log(
  JSON.stringify({ connections: sockets.length, seconds, rate: sockets.length / seconds }),
)
for await (const _ of Bun.stdin.stream()) {
  // held open until the driver closes stdin
}
for (const socket of sockets) socket.end()
process.exit(0)
