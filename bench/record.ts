/**
 * bench:record — the realistic publish path: 1,000 subscribers of a table's
 * record collection while the table backend publishes json0 record ops over
 * `POST /api/ws/publish/record` (16 publishers, at most 32 ops in flight),
 * each op versioned, applied, stored and fanned out; against bare Bun.serve
 * publishing bodies of the same frame size through the same load client.
 */
import { fmt, recordResult, runMeasured, startTarget, table } from './lib.ts'

const subscribers = process.env.BENCH_SUBSCRIBERS ?? '1000'
const seconds = process.env.BENCH_SECONDS ?? '5'
const env = {
  BENCH_PUBLISHERS: process.env.BENCH_PUBLISHERS ?? '16',
  BENCH_WINDOW: process.env.BENCH_WINDOW ?? '32',
}

interface Result {
  deliveries: number
  rate: number
  frameBytes: number
}

async function run(target: 'ours' | 'bare', frameBytes?: number) {
  const server = await startTarget(target)
  try {
    const result = await runMeasured<Result>(
      server,
      [
        'bun',
        'bench/load/fanout-client.ts',
        target,
        `http://127.0.0.1:${server.port}`,
        subscribers,
        seconds,
        'payload',
      ],
      {
        ...env,
        BENCH_ROUTE: 'record',
        ...(frameBytes ? { BENCH_FRAME_BYTES: String(Math.round(frameBytes)) } : {}),
      },
    )
    return { ...result, rss: await server.rssMiB() }
  } finally {
    await server.stop()
    server.cleanup()
  }
}

const ours = await run('ours')
const bare = await run('bare', ours.frameBytes)
console.log(
  `\nbench:record — ${fmt(Number(subscribers))} subscribers of record_tbl1; POST /api/ws/publish/record, ${env.BENCH_PUBLISHERS} publishers, at most ${env.BENCH_WINDOW} ops in flight; bare Bun.serve publishes bodies of the same frame size\n`,
)
console.log(
  table(
    [
      'server',
      'deliveries/s',
      'vs bare',
      'server CPU s / 1M deliveries',
      'bytes/frame',
      'server RSS MiB',
    ],
    [bare, ours].map((r, i) => [
      i === 0 ? 'bare Bun.serve, same frame bytes' : 'teable-realtime, publish/record',
      fmt(r.rate),
      `${fmt((r.rate / bare.rate) * 100, 1)}%`,
      fmt((r.serverCpu / r.deliveries) * 1e6, 2),
      fmt(r.frameBytes),
      fmt(r.rss, 1),
    ]),
  ),
)
recordResult('record', { rate: ours.rate / bare.rate })
