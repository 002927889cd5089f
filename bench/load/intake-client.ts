/**
 * Load client for bench:intake, run as its own process. One subscriber of
 * the table's record collection on every server process; then the same
 * record publishes either as intake entries (`XADD` of `publish/record`,
 * pipelined, at most WINDOW entries not yet received by every subscriber)
 * or as `POST /api/ws/publish/record` from CLIENTS concurrent HTTP clients
 * (client j on server j mod count, one request at a time each). Prints the
 * entries per second that reached every subscriber (XADD or POST to
 * fan-out) over the measured window.
 */
import Redis from 'ioredis'
import { type Counter, openSubscribed } from './ws-counter.ts'

const [urlsArg, mode, secondsArg] = process.argv.slice(2)
if (!urlsArg || (mode !== 'intake' && mode !== 'rest'))
  throw new Error('usage: intake-client <url,url,...> intake|rest [seconds]')
const urls = urlsArg.split(',')
const seconds = Number(secondsArg ?? 5)
const TABLE = process.env.BENCH_TABLE ?? 'tbl1'
const RECORDS = Number(process.env.BENCH_RECORDS ?? 64)
/** Entries XADDed and not yet received by every subscriber, at most (intake). */
const WINDOW = Number(process.env.BENCH_WINDOW ?? 2000)
/** XADDs per pipeline (intake). */
const CHUNK = 100
/** Concurrent HTTP clients (rest). */
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 64)
const WARMUP_MS = 1000
const collection = `record_${TABLE}`

/** A record op: a number field set, then incremented (valid whatever came before). */
const recordBody = (n: number) =>
  JSON.stringify({
    table_id: TABLE,
    record_id: `rec${n % RECORDS}`,
    operation: n < RECORDS ? [{ p: ['n'], oi: 0 }] : [{ p: ['n'], na: 1 }],
  })

const counters: Counter[] = urls.map(() => ({ frames: 0, bytes: 0 }))
const sockets = await Promise.all(
  urls.map((url, i) => {
    const { port } = new URL(url)
    return openSubscribed(
      '127.0.0.1',
      Number(port),
      `/api/ws/socket?user_id=bench${i}`,
      counters[i] as Counter,
      collection,
    )
  }),
)
const setup = counters.map((c) => c.frames)
/** Publishes received by every subscriber (each is one op frame). */
const received = () => Math.min(...counters.map((c, i) => c.frames - (setup[i] as number)))

let sent = 0
let running = true
const yieldTurn = () => new Promise((resolve) => setImmediate(resolve))

async function intakeLoop(): Promise<void> {
  const stream = process.env.BENCH_STREAM
  const redisUrl = process.env.BENCH_REDIS_URL
  if (!stream || !redisUrl) throw new Error('intake needs BENCH_STREAM and BENCH_REDIS_URL')
  const redis = new Redis(redisUrl)
  try {
    while (running) {
      const room = Math.min(CHUNK, WINDOW - (sent - received()))
      if (room <= 0) {
        await yieldTurn()
        continue
      }
      const pipeline = redis.pipeline()
      for (let i = 0; i < room; i++)
        pipeline.xadd(stream, '*', 'route', 'publish/record', 'body', recordBody(sent + i))
      sent += room
      for (const [error] of (await pipeline.exec()) ?? []) if (error) throw error
    }
  } finally {
    redis.disconnect()
  }
}

async function restLoop(client: number): Promise<void> {
  const url = `${urls[client % urls.length]}/api/ws/publish/record`
  while (running) {
    const n = sent++
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: recordBody(n),
    })
    await response.arrayBuffer()
    if (!response.ok) throw new Error(`${url}: ${response.status}`)
  }
}

const loops =
  mode === 'intake' ? [intakeLoop()] : Array.from({ length: CLIENTS }, (_, j) => restLoop(j))
await Bun.sleep(WARMUP_MS)
console.log('{"phase":"start"}')
const cpuAtStart = process.cpuUsage()
const startReceived = received()
const started = performance.now()
await Bun.sleep(seconds * 1000)
const elapsed = (performance.now() - started) / 1000
const entries = received() - startReceived
const { user, system } = process.cpuUsage(cpuAtStart)
console.log('{"phase":"end"}')
running = false
await Promise.all(loops)
console.log(
  JSON.stringify({
    clientCpu: (user + system) / 1e6,
    seconds: elapsed,
    sent,
    entries,
    rate: entries / elapsed,
  }),
)
for (const socket of sockets) socket.end()
process.exit(0)
