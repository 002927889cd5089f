/**
 * bench:fanout — deliveries per second of one channel broadcast to 1,000 and
 * 10,000 subscribers: our server against a bare Bun.serve pub/sub, each in
 * its own process, driven by the same load client process, same payload.
 */
import { fmt, runMeasured, startChild, startOurs, table } from './lib.ts'

interface Result {
  target: string
  subscribers: number
  deliveries: number
  seconds: number
  rate: number
  frameBytes: number
}

const sizes = (process.env.BENCH_SUBSCRIBERS ?? '1000,10000').split(',').map(Number)
const seconds = process.env.BENCH_SECONDS ?? '5'
const publishers = process.env.BENCH_PUBLISHERS ?? '16'
const window = process.env.BENCH_WINDOW ?? '32'

/** The bare server twice: with the raw payload, and with bytes the size of our frames. */
const targets = [
  { name: 'bare Bun.serve, raw payload', target: 'bare', body: 'payload' },
  { name: 'bare Bun.serve, same frame bytes', target: 'bare', body: 'frame' },
  { name: 'teable-realtime', target: 'ours', body: 'payload' },
] as const

type Measured = Result & { rss: number; serverCpu: number }
const rows: Array<Array<string | number>> = []
for (const subscribers of sizes) {
  const results: Measured[] = []
  for (const { target, body } of targets) {
    const server =
      target === 'ours'
        ? await startOurs()
        : {
            ...(await startChild(['bun', 'bench/peers/bare-bun.ts'], { HOST: '0.0.0.0' })),
            cleanup() {},
          }
    try {
      const result = await runMeasured<Result>(
        server,
        [
          'bun',
          'bench/load/fanout-client.ts',
          target,
          `http://127.0.0.1:${server.port}`,
          String(subscribers),
          seconds,
          body,
        ],
        { BENCH_PUBLISHERS: publishers, BENCH_WINDOW: window },
      )
      results.push({ ...result, rss: await server.rssMiB() })
    } finally {
      await server.stop()
      server.cleanup()
    }
  }
  const baseline = results[1] as Measured
  results.forEach((r, i) => {
    rows.push([
      targets[i]?.name ?? '',
      fmt(subscribers),
      fmt(r.rate),
      `${fmt((r.rate / baseline.rate) * 100, 1)}%`,
      fmt((r.serverCpu / r.deliveries) * 1e6, 2),
      fmt(r.frameBytes),
      fmt(r.rss, 1),
    ])
  })
}

console.log(
  `\nbench:fanout — one channel; ${publishers} HTTP publishers with at most ${window} messages in flight; ${seconds} s measured after 1 s warm-up; server and load client are separate processes sharing 2 cores\n`,
)
console.log(
  table(
    [
      'server',
      'subscribers',
      'deliveries/s',
      'vs bare (same bytes)',
      'server CPU s / 1M deliveries',
      'bytes/frame',
      'server RSS MiB',
    ],
    rows,
  ),
)
