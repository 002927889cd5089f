/**
 * bench:fanout — deliveries per second of one channel broadcast to 1,000 and
 * 10,000 subscribers: our server against a bare Bun.serve pub/sub, each in
 * its own process, driven by the same load client process, same payload.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { chart } from './chart.ts'
import { fmt, recordResult, runMeasured, startTarget, table } from './lib.ts'

interface Result {
  target: string
  subscribers: number
  deliveries: number
  seconds: number
  rate: number
  frameBytes: number
}

const sizes = (process.env.BENCH_SUBSCRIBERS ?? '100,1000,3000,10000').split(',').map(Number)
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
/** Per size: [bare same bytes, ours] for the chart. */
const measured: Array<{ subscribers: number; bare: Measured; ours: Measured }> = []
for (const subscribers of sizes) {
  const results: Measured[] = []
  for (const { target, body } of targets) {
    const server = await startTarget(target)
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
      results.push({ ...result, rss: await server.peakMiB() })
    } finally {
      await server.stop()
      server.cleanup()
    }
  }
  const baseline = results[1] as Measured
  measured.push({ subscribers, bare: baseline, ours: results[2] as Measured })
  results.forEach((r, i) => {
    rows.push([
      targets[i]?.name ?? '',
      fmt(subscribers),
      fmt(r.rate),
      `${fmt((r.rate / baseline.rate) * 100, 1)}%`,
      fmt((r.serverCpu / r.deliveries) * 1e6, 2),
      fmt(r.frameBytes),
      fmt(r.rss, 1),
      `${fmt(r.rss / baseline.rss, 2)}×`,
    ])
  })
}

// The chart of docs/BENCHMARKS.md: deliveries/s and RSS against subscribers.
const oursColor = '#d62728'
const bareColor = '#1f77b4'
const svg = chart(
  [
    {
      title: 'deliveries per second',
      unit: 'deliveries/s',
      series: [
        {
          name: 'bare',
          color: bareColor,
          dashed: true,
          points: measured.map((m) => [m.subscribers, m.bare.rate]),
        },
        {
          name: 'ours',
          color: oursColor,
          points: measured.map((m) => [m.subscribers, m.ours.rate]),
        },
      ],
    },
    {
      title: 'server peak RSS (connects and the run)',
      unit: 'MiB',
      series: [
        {
          name: 'bare',
          color: bareColor,
          dashed: true,
          points: measured.map((m) => [m.subscribers, m.bare.rss]),
        },
        {
          name: 'ours',
          color: oursColor,
          points: measured.map((m) => [m.subscribers, m.ours.rss]),
        },
      ],
    },
  ],
  [
    { name: 'bare Bun.serve, same frame bytes', color: bareColor, dashed: true, points: [] },
    { name: 'teable-realtime', color: oursColor, points: [] },
  ],
)
recordResult(
  'fanout',
  Object.fromEntries(
    measured.flatMap((m) => [
      [`rate${m.subscribers}`, m.ours.rate / m.bare.rate],
      [`peakRss${m.subscribers}`, m.ours.rss / m.bare.rss],
    ]),
  ),
)
if (measured.length > 1) {
  const file = process.env.BENCH_CHART ?? join(import.meta.dir, '..', 'docs', 'bench-fanout.svg')
  writeFileSync(file, svg)
  console.log(`chart: ${file}`)
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
      'server peak RSS MiB',
      'vs bare',
    ],
    rows,
  ),
)
