/**
 * bench:submit — acked json0 submits per second and ack latency, 100
 * clients on 100 documents: our server durable (SQLite file, WAL), our
 * server with its history in memory (no disk), and a bare Bun JSON ack
 * server, each in its own process, driven by the same load client.
 */
import { fmt, runMeasured, startChild, startOurs, table } from './lib.ts'

interface Result {
  mode: string
  acked: number
  refused: number
  rate: number
  p50: number
  p99: number
  max: number
  offered: number | null
}

const seconds = process.env.BENCH_SECONDS ?? '5'
const clients = process.env.BENCH_CLIENTS ?? '100'
const offered = process.env.BENCH_RATE ?? '10000'

const targets = [
  {
    name: 'bare Bun JSON ack',
    start: () =>
      startChild(['bun', 'bench/peers/bare-ack.ts']).then((c) => ({ ...c, cleanup() {} })),
  },
  {
    name: 'teable-realtime, history in memory',
    start: () => startOurs({ DB_PATH: ':memory:', HOST: '127.0.0.1' }),
  },
  {
    name: 'teable-realtime, durable (SQLite WAL file)',
    start: () => startOurs({ HOST: '127.0.0.1' }),
  },
] as const

const rows: Array<Array<string | number>> = []
for (const mode of ['closed', 'open'] as const) {
  const results: Array<Result & { serverCpu: number }> = []
  for (const target of targets) {
    const server = await target.start()
    try {
      results.push(
        await runMeasured<Result>(server, [
          'bun',
          'bench/load/submit-client.ts',
          `http://127.0.0.1:${server.port}`,
          mode,
          clients,
          seconds,
          offered,
        ]),
      )
    } finally {
      await server.stop()
      server.cleanup()
    }
  }
  const baseline = results[0] as Result
  results.forEach((r, i) => {
    rows.push([
      targets[i]?.name ?? '',
      mode === 'closed' ? 'max (closed loop)' : `${fmt(Number(offered))}/s offered`,
      fmt(r.rate),
      `${fmt((r.rate / baseline.rate) * 100, 1)}%`,
      fmt(r.p50, 2),
      fmt(r.p99, 2),
      fmt(r.max, 1),
      fmt(r.refused),
      fmt((r.serverCpu / Math.max(r.acked, 1)) * 1e6, 1),
    ])
  })
}

console.log(
  `\nbench:submit — ${clients} clients, one document each, {p:['n'], na:1} ops; closed loop keeps ${process.env.BENCH_WINDOW ?? 4} ops in flight per client; ${seconds} s measured after 1 s warm-up; server and load client are separate processes sharing 2 cores\n`,
)
console.log(
  table(
    [
      'server',
      'load',
      'acked ops/s',
      'vs bare',
      'p50 ms',
      'p99 ms',
      'max ms',
      'refused',
      'server CPU µs/op',
    ],
    rows,
  ),
)
