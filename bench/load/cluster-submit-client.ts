/**
 * Load client for bench:cluster, run as its own process: bench:submit's
 * load (N clients, each writing json0 ops to its own document, ack latency
 * of each op) spread over one or more server processes, client i on
 * server i mod count.
 *   closed: every client keeps WINDOW ops in flight (max throughput)
 *   open:   ops are sent on a fixed schedule at RATE ops/s in total
 * Documents are `${BENCH_DOC_PREFIX}${i}`, so several runs can share a store.
 */

import type { Socket } from 'bun'
import { offerLoad } from './offered-load.ts'
import { type Counter, maskedText, openCounted } from './ws-counter.ts'

const [urlsArg, mode, clientsArg, secondsArg, rateArg] = process.argv.slice(2)
if (!urlsArg || (mode !== 'closed' && mode !== 'open'))
  throw new Error(
    'usage: cluster-submit-client <url,url,...> <closed|open> [clients] [seconds] [rate]',
  )
const ports = urlsArg.split(',').map((url) => Number(new URL(url).port))
const clients = Number(clientsArg ?? 100)
const seconds = Number(secondsArg ?? 5)
const rate = Number(rateArg ?? 5_000)
const WINDOW = Number(process.env.BENCH_WINDOW ?? 4)
const PREFIX = process.env.BENCH_DOC_PREFIX ?? 'doc'
const WARMUP_MS = 1000
const COLLECTION = 'record_bench'
const counter: Counter = { frames: 0, bytes: 0 }

interface Writer {
  socket: Socket<unknown>
  document: string
  nextV: number
  nextId: number
  sentAt: Map<number, number>
}

let measuring = false
let running = true
let acked = 0
let refused = 0
const refusals = new Map<string, number>()
const latencies: number[] = []

function send(writer: Writer): void {
  const id = writer.nextId++
  writer.sentAt.set(id, performance.now())
  writer.socket.write(
    maskedText(
      JSON.stringify({
        type: 'submit',
        id,
        collection: COLLECTION,
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
  const reply = JSON.parse(text) as { type: string; id?: number; error?: { code?: string } }
  if (reply.id === undefined || !writer.sentAt.has(reply.id)) return
  const latency = performance.now() - (writer.sentAt.get(reply.id) as number)
  writer.sentAt.delete(reply.id)
  if (measuring) {
    if (reply.type === 'submit') {
      acked++
      latencies.push(latency)
    } else {
      refused++
      const code = reply.error?.code ?? reply.type
      refusals.set(code, (refusals.get(code) ?? 0) + 1)
    }
  }
  if (mode === 'closed' && running) send(writer)
}

async function connect(i: number): Promise<Writer> {
  const writer: Writer = {
    socket: undefined as unknown as Socket<unknown>,
    document: `${PREFIX}${i}`,
    nextV: 1,
    nextId: 1,
    sentAt: new Map(),
  }
  const created = Promise.withResolvers<void>()
  writer.socket = (await openCounted(
    '127.0.0.1',
    ports[i % ports.length] as number,
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
              collection: COLLECTION,
              document: writer.document,
              create: { data: { n: 0 } },
            }),
          ),
        )
      } else if (message.id === 0) {
        if (message.type === 'submit') created.resolve()
        else created.reject(new Error(`creating ${writer.document}: ${text}`))
      } else onReply(writer, text)
      return true
    },
  )) as Socket<unknown>
  await created.promise
  return writer
}

const writers = await Promise.all(Array.from({ length: clients }, (_, i) => connect(i)))

const stopLoad = offerLoad(writers, send, mode, WINDOW, rate)

await Bun.sleep(WARMUP_MS)
measuring = true
console.log('{"phase":"start"}')
const cpuAtStart = process.cpuUsage()
const started = performance.now()
await Bun.sleep(seconds * 1000)
const elapsed = (performance.now() - started) / 1000
measuring = false
const { user, system } = process.cpuUsage(cpuAtStart)
console.log('{"phase":"end"}')
running = false
stopLoad()

latencies.sort((a, b) => a - b)
const pct = (p: number) =>
  latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] ?? 0
console.log(
  JSON.stringify({
    // This process's CPU seconds in the measured window (it may exit before its parent samples it).
    clientCpu: (user + system) / 1e6,
    seconds: elapsed,
    mode,
    clients,
    servers: ports.length,
    offered: mode === 'open' ? rate : null,
    acked,
    refused,
    refusals: Object.fromEntries(refusals),
    rate: acked / elapsed,
    p50: pct(50),
    p99: pct(99),
    max: latencies.at(-1) ?? 0,
  }),
)
process.exit(0)
