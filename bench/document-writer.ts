/**
 * bench:document — what one writer can do to everyone else through one
 * document, at the default limits (MESSAGE_RATE 100/s, 64 KiB frames,
 * MAX_DOCUMENT_SIZE 1 MiB). A bystander on another connection pings every
 * 20 ms (not waiting for replies, so a stall is sampled as often as it lasts)
 * while, each in its own process:
 *
 * - idle: nobody writes (the baseline);
 * - append: a writer inserts 60 KB strings into one list at BENCH_RATE/s
 *   (the issue's repro; the limit refuses it after ~17 ops);
 * - churn: the same, then once refused it deletes the oldest string and
 *   inserts a new one, op after op: every op is accepted and the document
 *   stays at the limit (the worst case: each batch writes it whole);
 * - rest: the churn through REST publishes (4 requests in flight, no rate:
 *   what a leaked ADMIN_TOKEN allows);
 * - small ops: on that ~1 MiB document, one small op at a time (closed loop):
 *   ack latency.
 *
 * BENCH_BEFORE=<dir of another checkout> runs the same against that tree's
 * server too, for a before/after table from one run.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fmt, runMeasured, startChild, table } from './lib.ts'

type Scenario = 'idle' | 'append' | 'churn' | 'rest' | 'small'

interface Result {
  acked: number
  refused: number
  errors: number
  pings: number
  /** Pings unanswered because the server closed the bystander. */
  lost: number
  /** How the server closed a client during the run, if it did. */
  closed?: string
  p50: number
  p99: number
  max: number
  /** Small ops: ack latency, ms. */
  opP50?: number
  opP99?: number
  opMean?: number
}

const seconds = Number(process.env.BENCH_SECONDS ?? '10')
const rate = Number(process.env.BENCH_RATE ?? '95')
const CHUNK = 60_000
const REST_CONCURRENCY = 4

const percentile = (sorted: number[], p: number) =>
  sorted.length === 0
    ? 0
    : (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0)

interface Reply {
  type: string
  id?: number
  error?: { code: number }
}

/** A socket whose replies are matched to requests by id. */
async function open(url: string, user: string) {
  const socket = new WebSocket(`${url}?user_id=${user}`)
  const waiting = new Map<number, (reply: Reply) => void>()
  let onOther: (reply: Reply) => void = () => {}
  let closedCode: number | undefined
  let closedAt = 0
  await new Promise<void>((resolve, reject) => {
    socket.onerror = () => reject(new Error('socket error'))
    socket.onclose = (event) => {
      // Measured, not fatal: a stalled server may close a client as flooding once it catches up.
      closedCode = event.code
      closedAt = performance.now()
      for (const wake of waiting.values()) wake({ type: 'closed' })
      waiting.clear()
    }
    socket.onmessage = (event) => {
      const reply = JSON.parse(String(event.data)) as Reply
      if (reply.type === 'connected') resolve()
      const wake = reply.id === undefined ? undefined : waiting.get(reply.id)
      if (wake && reply.id !== undefined) {
        waiting.delete(reply.id)
        wake(reply)
      } else onOther(reply)
    }
  })
  let nextId = 1
  return {
    get closed() {
      return closedCode === undefined ? undefined : { code: closedCode, at: closedAt }
    },
    send(message: Record<string, unknown>, onReply: (reply: Reply) => void = () => {}) {
      if (closedCode !== undefined) return onReply({ type: 'closed' })
      const id = nextId++
      waiting.set(id, onReply)
      socket.send(JSON.stringify({ ...message, id }))
    },
    request(message: Record<string, unknown>) {
      return new Promise<Reply>((resolve) => this.send(message, resolve))
    },
    set onOther(handler: (reply: Reply) => void) {
      onOther = handler
    },
    close() {
      socket.onclose = null
      socket.close()
    },
  }
}

/** The load side (its own process): a bystander pinging and, unless idle, a writer. */
async function client(url: string, scenario: Scenario): Promise<void> {
  const bystander = await open(url, 'bystander')
  const writer = await open(url, 'writer')
  const collection = `record_bench${Date.now()}`
  const doc = { collection, document: 'big' }
  await writer.request({ type: 'submit', ...doc, create: { data: { list: [], n: 0 } } })
  const result: Result = {
    acked: 0,
    refused: 0,
    errors: 0,
    pings: 0,
    lost: 0,
    p50: 0,
    p99: 0,
    max: 0,
  }
  let full = false
  const chunk = (i: number) => `${i}`.padEnd(CHUNK, 'x')
  const insert = (i: number) => ({ p: ['list', 0], li: chunk(i) })
  if (scenario === 'small') {
    // Fill to ~1 MiB first (17 × 60 KB; this tree's limit would refuse an 18th).
    for (let i = 0; i < 17; i++) await writer.request({ type: 'submit', ...doc, op: [insert(i)] })
  }
  const rtts: number[] = []
  const opLatencies: number[] = []
  console.log('{"phase":"start"}')
  const started = performance.now()
  const until = started + seconds * 1000
  const pinger = setInterval(() => {
    const sent = performance.now()
    bystander.send({ type: 'ping' }, (reply) => {
      if (reply.type === 'closed') result.lost++
      else rtts.push(performance.now() - sent)
    })
  }, 20)
  let sentOps = 0
  const onReply = (reply: Reply) => {
    if (reply.type === 'closed') return
    if (reply.type !== 'error') result.acked++
    else if (reply.error?.code === 413) {
      result.refused++
      full = true
    } else result.errors++
  }
  if (scenario === 'append' || scenario === 'churn') {
    await new Promise<void>((resolve) => {
      const tick = () => {
        const now = performance.now()
        if (now >= until) return resolve()
        // Paced from the start: a late timer sends what it owes, never more than the rate.
        const owed = Math.floor(((now - started) / 1000) * rate) - sentOps
        for (let i = 0; i < owed; i++, sentOps++) {
          // Once refused, churn removes the oldest string for each one it adds.
          const op =
            scenario === 'churn' && full
              ? [{ p: ['list', 16], ld: null }, insert(sentOps)]
              : [insert(sentOps)]
          writer.send({ type: 'submit', ...doc, op }, onReply)
        }
        setTimeout(tick, 2)
      }
      tick()
    })
    // The replies still owed (refusals included) arrive before this one.
    await writer.request({ type: 'ping' })
  } else if (scenario === 'rest') {
    // A leaked ADMIN_TOKEN (here: loopback): REST publishes have no per-user rate.
    const api = `${url.replace(/^ws/, 'http').replace(/\/socket$/, '')}/publish/document`
    let sent = 0
    const loop = async () => {
      while (performance.now() < until) {
        const op = full ? [{ p: ['list', 16], ld: null }, insert(sent++)] : [insert(sent++)]
        const response = await fetch(api, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ ...doc, operation: op }),
        })
        await response.arrayBuffer()
        onReply(
          response.ok ? { type: 'submit' } : { type: 'error', error: { code: response.status } },
        )
      }
    }
    await Promise.all(Array.from({ length: REST_CONCURRENCY }, loop))
  } else if (scenario === 'small') {
    // Paced at the rate too: MESSAGE_RATE would close a faster writer.
    for (let i = 0; performance.now() < until; i++) {
      const due = started + (i * 1000) / rate
      if (performance.now() < due) await Bun.sleep(due - performance.now())
      const sent = performance.now()
      const reply = await writer.request({ type: 'submit', ...doc, op: [{ p: ['n'], na: 1 }] })
      opLatencies.push(performance.now() - sent)
      onReply(reply)
    }
  } else await Bun.sleep(seconds * 1000)
  clearInterval(pinger)
  await bystander.request({ type: 'ping' })
  for (const [who, socket] of [
    ['bystander', bystander],
    ['writer', writer],
  ] as const) {
    const closed = socket.closed
    if (closed)
      result.closed = `${result.closed ? `${result.closed}, ` : ''}${who} ${closed.code} at ${fmt((closed.at - started) / 1000, 1)} s`
  }
  console.log('{"phase":"end"}')
  rtts.sort((a, b) => a - b)
  opLatencies.sort((a, b) => a - b)
  result.pings = rtts.length
  result.p50 = percentile(rtts, 0.5)
  result.p99 = percentile(rtts, 0.99)
  result.max = rtts.at(-1) ?? 0
  if (opLatencies.length > 0) {
    result.opP50 = percentile(opLatencies, 0.5)
    result.opP99 = percentile(opLatencies, 0.99)
    result.opMean = opLatencies.reduce((a, b) => a + b, 0) / opLatencies.length
  }
  bystander.close()
  writer.close()
  console.log(JSON.stringify(result))
  process.exit(0)
}

async function driver(): Promise<void> {
  const trees = [{ name: 'this tree', cwd: join(import.meta.dir, '..') }]
  if (process.env.BENCH_BEFORE) trees.unshift({ name: 'before', cwd: process.env.BENCH_BEFORE })
  const rows: Array<Array<string | number>> = []
  for (const scenario of ['idle', 'append', 'churn', 'rest', 'small'] as const) {
    for (const tree of trees) {
      const dir = mkdtempSync(join(tmpdir(), 'teable-realtime-bench-'))
      const db = join(dir, 'bench.db')
      const server = await startChild(
        ['bun', 'src/main.ts'],
        { SOCKET_PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', DB_PATH: db },
        tree.cwd,
      )
      try {
        const result = await runMeasured<Result>(server, [
          'bun',
          'bench/document-writer.ts',
          `ws://127.0.0.1:${server.port}/api/ws/socket`,
          scenario,
        ])
        const rss = await server.rssMiB()
        const fileMiB = (path: string) =>
          (statSync(path, { throwIfNoEntry: false })?.size ?? 0) / 2 ** 20
        rows.push([
          scenario,
          tree.name,
          result.acked,
          result.refused,
          result.errors,
          fmt(result.p50, 1),
          fmt(result.p99, 1),
          fmt(result.max, 1),
          result.closed ? `${result.closed}; ${result.lost} pings lost` : '—',
          result.opMean === undefined
            ? '—'
            : `${fmt(result.opMean, 2)} / ${fmt(result.opP99 ?? 0, 2)}`,
          fmt(result.serverCpu, 1),
          fmt(rss, 0),
          fmt(fileMiB(db) + fileMiB(`${db}-wal`), 1),
        ])
      } finally {
        await server.stop()
        rmSync(dir, { recursive: true, force: true })
      }
    }
  }
  console.log(
    `\nOne writer vs a bystander's ping (20 ms cadence), ${seconds} s per row, writer at ${rate} ops/s of ${CHUNK / 1000} KB\n`,
  )
  console.log(
    table(
      [
        'scenario',
        'server',
        'acked',
        '413',
        'other errors',
        'ping p50 ms',
        'ping p99 ms',
        'ping max ms',
        'closed by the server',
        'small op mean / p99 ms',
        'server CPU s',
        'RSS MiB',
        'db+wal MiB',
      ],
      rows,
    ),
  )
}

const [url, scenario] = process.argv.slice(2)
if (url && scenario) await client(url, scenario as Scenario)
else await driver()
