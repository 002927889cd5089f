/**
 * Load client for bench:fanout, run as its own process. Opens N subscriber
 * sockets (spread over 127.0.0.x so ephemeral ports do not run out), then
 * publishes over HTTP with at most WINDOW messages in flight (counted by
 * deliveries, so the publisher never runs ahead of what sockets can take),
 * and prints the deliveries per second it saw.
 */
import { type Counter, frameWaiter, openSubscribed } from './ws-counter.ts'

const [target, url, subscribersArg, secondsArg, bodyKind] = process.argv.slice(2)
if (!target || !url || !subscribersArg)
  throw new Error(
    'usage: fanout-client <ours|bare> <http url> <subscribers> [seconds] [payload|frame]',
  )
const subscribers = Number(subscribersArg)
const seconds = Number(secondsArg ?? 5)
const WINDOW = Number(process.env.BENCH_WINDOW ?? 8)
const WARMUP_MS = 1000
const payload = {
  kind: 'cell',
  table: 'tbl1',
  record: 'rec1',
  field: 'fld1',
  value: 'x'.repeat(40),
}
const port = Number(new URL(url).port)
/**
 * BENCH_ROUTE=record: ours is published to over `POST /api/ws/publish/record`
 * (json0 ops on 64 records of one table, as the table backend does) and the
 * subscribers follow the table's record collection; the bare server then
 * publishes a body of BENCH_FRAME_BYTES bytes (the size of our op frames).
 */
const route = process.env.BENCH_ROUTE ?? 'channel'
const collection = route === 'record' ? 'record_tbl1' : 'bench'
const RECORDS = 64
const counter: Counter = { frames: 0, bytes: 0 }
const frames = frameWaiter(counter)

async function subscribe(i: number) {
  const host = `127.0.0.${1 + (i % 4)}`
  const path = target === 'ours' ? `/api/ws/socket?user_id=bench${i}` : '/'
  return openSubscribed(host, port, path, counter, collection)
}

const sockets = []
for (let start = 0; start < subscribers; start += 500) {
  const batch = []
  for (let i = start; i < Math.min(start + 500, subscribers); i++) batch.push(subscribe(i))
  sockets.push(...(await Promise.all(batch)))
}
let setupFrames = counter.frames

const publishUrl =
  target !== 'ours'
    ? `${url}/publish`
    : route === 'record'
      ? `${url}/api/ws/publish/record`
      : `${url}/api/ws/broadcast/channel`
// For the bare server, `frame` publishes bytes shaped and sized like the frame
// ours delivers (envelope included), so both move the same bytes per delivery.
const oursFrame = {
  type: 'message',
  collection: 'bench',
  data: { message: payload, offset: 1_000_000, epoch: '0a1b2c3d' },
  timestamp: new Date().toISOString(),
}
const frameBytesWanted = Number(process.env.BENCH_FRAME_BYTES ?? 0)
const body =
  target === 'ours'
    ? JSON.stringify({ channel: 'bench', message: payload })
    : frameBytesWanted > 0
      ? JSON.stringify({ type: 'op', pad: '' }).replace(
          '""',
          `"${'x'.repeat(frameBytesWanted - 24)}"`,
        )
      : JSON.stringify(bodyKind === 'frame' ? oursFrame : payload)
/** A record op: a number field incremented (valid whatever came before). */
const recordBody = (n: number) =>
  JSON.stringify({
    table_id: 'tbl1',
    record_id: `rec${n % RECORDS}`,
    operation: n < RECORDS ? [{ p: ['n'], oi: 0 }] : [{ p: ['n'], na: 1 }],
  })
if (target === 'ours' && route === 'record')
  for (let n = 0; n < RECORDS; n++) {
    const response = await fetch(publishUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: recordBody(n),
    })
    await response.arrayBuffer()
  }
if (target === 'ours' && route === 'record') {
  // The seeding ops reached every subscriber before the measured publishes start.
  await frames.until(setupFrames + RECORDS * subscribers)
  setupFrames = counter.frames
}
let published = 0
let running = true

async function publishLoop(): Promise<void> {
  while (running) {
    // Publish message k only once message k-WINDOW reached every subscriber.
    while (running && counter.frames - setupFrames < (published - WINDOW) * subscribers)
      await frames.until(setupFrames + (published - WINDOW) * subscribers)
    published++
    const response = await fetch(publishUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: target === 'ours' && route === 'record' ? recordBody(RECORDS + published) : body,
    })
    await response.arrayBuffer()
  }
}

const loops = Array.from({ length: Number(process.env.BENCH_PUBLISHERS ?? 2) }, () => publishLoop())
await Bun.sleep(WARMUP_MS)
console.log('{"phase":"start"}')
const startFrames = counter.frames
const startBytes = counter.bytes
const started = performance.now()
await Bun.sleep(seconds * 1000)
const elapsed = (performance.now() - started) / 1000
const deliveries = counter.frames - startFrames
const frameBytes = (counter.bytes - startBytes) / Math.max(deliveries, 1)
console.log('{"phase":"end"}')
running = false
frames.releaseAll()
await Promise.all(loops)
console.log(
  JSON.stringify({
    target,
    subscribers,
    deliveries,
    seconds: elapsed,
    rate: deliveries / elapsed,
    frameBytes,
  }),
)
for (const socket of sockets) socket.end()
process.exit(0)
