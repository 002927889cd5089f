/**
 * Load client for bench:submit, run as its own process: N clients, each
 * writing json0 ops to its own document, and the ack latency of each op.
 *   closed: every client keeps WINDOW ops in flight (max throughput)
 *   open:   ops are sent on a fixed schedule at RATE ops/s in total
 */

import type { Socket } from 'bun'
import { offerLoad } from './offered-load.ts'
import { type Counter, maskedText, openCounted } from './ws-counter.ts'

const [url, mode, clientsArg, secondsArg, rateArg] = process.argv.slice(2)
if (!url || (mode !== 'closed' && mode !== 'open'))
  throw new Error('usage: submit-client <url> <closed|open> [clients] [seconds] [rate]')
const clients = Number(clientsArg ?? 100)
const seconds = Number(secondsArg ?? 5)
const rate = Number(rateArg ?? 10_000)
const WINDOW = Number(process.env.BENCH_WINDOW ?? 4)
const WARMUP_MS = 1000
const { port } = new URL(url)
const counter: Counter = { frames: 0, bytes: 0 }

interface Writer {
  socket: Socket<unknown>
  document: string
  nextV: number
  nextId: number
  inflight: number
  sentAt: Map<number, number>
}

let measuring = false
let acked = 0
let refused = 0
const latencies: number[] = []

function send(writer: Writer): void {
  const id = writer.nextId++
  writer.sentAt.set(id, performance.now())
  writer.inflight++
  writer.socket.write(
    maskedText(
      JSON.stringify({
        type: 'submit',
        id,
        collection: 'record_bench',
        document: writer.document,
        v: writer.nextV++,
        op: [{ p: ['n'], na: 1 }],
        // As a ShareDB-style client does, for dedupe after a reconnect.
        src: writer.document,
        seq: id,
      }),
    ),
  )
}

function onReply(writer: Writer, text: string): void {
  const reply = JSON.parse(text) as { type: string; id?: number }
  if (reply.id === undefined || !writer.sentAt.has(reply.id)) return
  const latency = performance.now() - (writer.sentAt.get(reply.id) as number)
  writer.sentAt.delete(reply.id)
  writer.inflight--
  if (measuring) {
    if (reply.type === 'submit') {
      acked++
      latencies.push(latency)
    } else refused++
  }
  if (mode === 'closed' && running) send(writer)
}

let running = true
async function connect(i: number): Promise<Writer> {
  const writer = {
    document: `doc${i}`,
    nextV: 1,
    nextId: 1,
    inflight: 0,
    sentAt: new Map(),
  } as unknown as Writer
  let ready: () => void = () => {}
  const created = new Promise<void>((resolve) => {
    ready = resolve
  })
  writer.socket = (await openCounted(
    '127.0.0.1',
    Number(port),
    `/api/ws/socket?user_id=bench${i}`,
    counter,
    (text, socket) => {
      const message = JSON.parse(text) as { type: string; id?: number }
      if (message.type === 'connected') {
        socket.write(
          maskedText(
            JSON.stringify({
              type: 'submit',
              id: 0,
              collection: 'record_bench',
              document: writer.document,
              create: { data: { n: 0 } },
            }),
          ),
        )
        return true
      }
      if (message.id === 0) {
        ready()
        return true
      }
      onReply(writer, text)
      return true
    },
  )) as Socket<unknown>
  await created
  return writer
}

const writers = await Promise.all(Array.from({ length: clients }, (_, i) => connect(i)))

const stopLoad = offerLoad(writers, send, mode, WINDOW, rate)

await Bun.sleep(WARMUP_MS)
measuring = true
console.log('{"phase":"start"}')
const started = performance.now()
await Bun.sleep(seconds * 1000)
const elapsed = (performance.now() - started) / 1000
measuring = false
console.log('{"phase":"end"}')
running = false
stopLoad()

latencies.sort((a, b) => a - b)
const pct = (p: number) =>
  latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0
console.log(
  JSON.stringify({
    mode,
    clients,
    offered: mode === 'open' ? rate : null,
    acked,
    refused,
    rate: acked / elapsed,
    p50: pct(50),
    p99: pct(99),
    max: latencies.at(-1) ?? 0,
  }),
)
process.exit(0)
