/**
 * Load client for bench:presence, run as its own process: N clients connect,
 * then all subscribe to one channel at once (a mass reconnect), and the
 * client measures the time until presence has settled everywhere and the
 * presence frames that took.
 *   full:   settled when every client knows the N-1 others (N(N-1) joins);
 *           run it against a server whose PRESENCE_MAX_MEMBERS is above N
 *   count:  settled when every client saw a count of N
 *   capped: a `full` channel past PRESENCE_MAX_MEMBERS; settled when every
 *           client saw N connections (in a `mode` or a `count` event)
 */
import type { Socket } from 'bun'
import { type Counter, maskedText, openCounted } from './ws-counter.ts'

const [url, mode, clientsArg] = process.argv.slice(2)
if (!url || (mode !== 'full' && mode !== 'count' && mode !== 'capped'))
  throw new Error('usage: presence-client <url> <full|count|capped> [clients]')
const clients = Number(clientsArg ?? 1000)
const { port } = new URL(url)
const channel = mode === 'count' ? 'count_bench' : 'full_bench'
const counter: Counter = { frames: 0, bytes: 0 }

let presenceFrames = 0
let presenceBytes = 0
let replies = 0
let settledClients = 0
let resolveSettled: () => void = () => {}
const settled = new Promise<void>((resolve) => {
  resolveSettled = resolve
})
const checkSettled = () => {
  const done =
    replies === clients &&
    (mode === 'full' ? presenceFrames === clients * (clients - 1) : settledClients === clients)
  if (done) resolveSettled()
}

async function connect(i: number): Promise<Socket<unknown>> {
  const host = `127.0.0.${1 + (i % 4)}`
  let ready: () => void = () => {}
  const connected = new Promise<void>((resolve) => {
    ready = resolve
  })
  let sawFull = false
  const socket = await openCounted(
    host,
    Number(port),
    `/api/ws/socket?user_id=u${i}`,
    counter,
    (text) => {
      if (text.startsWith('{"type":"connected"')) {
        ready()
      } else if (text.startsWith('{"type":"presence"')) {
        presenceFrames++
        presenceBytes += text.length
        if (mode !== 'full' && !sawFull && text.includes(`"connections":${clients},`)) {
          sawFull = true
          settledClients++
        }
        checkSettled()
      } else if (text.startsWith('{"type":"subscribe"')) {
        replies++
        checkSettled()
      }
      return true
    },
  )
  await connected
  return socket as Socket<unknown>
}

const sockets: Array<Socket<unknown>> = []
for (let start = 0; start < clients; start += 250) {
  const batch = []
  for (let i = start; i < Math.min(start + 250, clients); i++) batch.push(connect(i))
  sockets.push(...(await Promise.all(batch)))
}

console.log('{"phase":"start"}')
const started = performance.now()
const subscribe = maskedText(JSON.stringify({ type: 'subscribe', id: 1, collection: channel }))
for (const socket of sockets) socket.write(subscribe)
await settled
const elapsed = performance.now() - started
console.log('{"phase":"end"}')
console.log(JSON.stringify({ mode, clients, presenceFrames, presenceBytes, ms: elapsed }))
process.exit(0)
