/**
 * Load client for bench:cluster, run as its own process: bench:fanout's
 * load spread over one or more server processes. Subscriber i (of one
 * channel) is on server i mod count (all on 127.0.0.1: the servers listen
 * there only, and a few thousand sockets leave ports to spare). Each
 * publisher sends `POST /api/ws/broadcast/channel` to the servers in turn,
 * with at most WINDOW messages in flight in all
 * (counted by deliveries to every subscriber, so publishers never run ahead
 * of what the sockets take). Prints the deliveries per second it saw.
 */
import { type Counter, frameWaiter, openSubscribed } from './ws-counter.ts'

const [urlsArg, subscribersArg, secondsArg] = process.argv.slice(2)
if (!urlsArg || !subscribersArg)
  throw new Error('usage: cluster-fanout-client <url,url,...> <subscribers> [seconds]')
const urls = urlsArg.split(',')
const subscribers = Number(subscribersArg)
const seconds = Number(secondsArg ?? 5)
const WINDOW = Number(process.env.BENCH_WINDOW ?? 32)
const PUBLISHERS = Number(process.env.BENCH_PUBLISHERS ?? 16)
const CHANNEL = 'bench'
const WARMUP_MS = 1000
const counter: Counter = { frames: 0, bytes: 0 }
// The same payload as bench:fanout.
const body = JSON.stringify({
  channel: CHANNEL,
  message: { kind: 'cell', table: 'tbl1', record: 'rec1', field: 'fld1', value: 'x'.repeat(40) },
})

const urlOf = (i: number) => urls[i % urls.length] as string

const sockets = []
for (let start = 0; start < subscribers; start += 500) {
  const batch = []
  for (let i = start; i < Math.min(start + 500, subscribers); i++) {
    const { port } = new URL(urlOf(i))
    batch.push(
      openSubscribed(
        '127.0.0.1',
        Number(port),
        `/api/ws/socket?user_id=bench${i}`,
        counter,
        CHANNEL,
      ),
    )
  }
  sockets.push(...(await Promise.all(batch)))
}
const setupFrames = counter.frames
const frames = frameWaiter(counter)

let published = 0
let running = true

async function publishLoop(publisher: number): Promise<void> {
  // Each publisher takes the processes in turn, so each gets an equal share.
  for (let turn = publisher; running; turn++) {
    const url = `${urlOf(turn)}/api/ws/broadcast/channel`
    // Publish message k only once message k-WINDOW reached every subscriber.
    while (running && counter.frames - setupFrames < (published - WINDOW) * subscribers)
      await frames.until(setupFrames + (published - WINDOW) * subscribers)
    published++
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    })
    await response.arrayBuffer()
    if (!response.ok) throw new Error(`${url}: ${response.status}`)
  }
}

const loops = Array.from({ length: PUBLISHERS }, (_, j) => publishLoop(j))
await Bun.sleep(WARMUP_MS)
console.log('{"phase":"start"}')
const cpuAtStart = process.cpuUsage()
const startFrames = counter.frames
const startBytes = counter.bytes
const started = performance.now()
await Bun.sleep(seconds * 1000)
const elapsed = (performance.now() - started) / 1000
const deliveries = counter.frames - startFrames
const frameBytes = (counter.bytes - startBytes) / Math.max(deliveries, 1)
const { user, system } = process.cpuUsage(cpuAtStart)
console.log('{"phase":"end"}')
running = false
frames.releaseAll()
await Promise.all(loops)
console.log(
  JSON.stringify({
    // This process's CPU seconds in the measured window (it may exit before its parent samples it).
    clientCpu: (user + system) / 1e6,
    seconds: elapsed,
    servers: urls.length,
    subscribers,
    deliveries,
    rate: deliveries / elapsed,
    frameBytes,
  }),
)
for (const socket of sockets) socket.end()
process.exit(0)
