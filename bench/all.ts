/**
 * `bun run bench`: every benchmark of the embedded server, one after the
 * other (each prints its own table), then issue 13's targets with the
 * figures of this run, each against its baseline from the same run.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fmt, table } from './lib.ts'

const root = join(import.meta.dir, '..')
const BENCHES = [
  'memory',
  'fanout',
  'record',
  'reconnect',
  'submit',
  'presence',
  'backlog',
  'binary',
]

const results = mkdtempSync(join(tmpdir(), 'teable-realtime-bench-results-'))
try {
  for (const bench of BENCHES) {
    const run = Bun.spawn([process.execPath, join('bench', `${bench}.ts`)], {
      cwd: root,
      env: { ...process.env, BENCH_RESULTS: results },
      stdio: ['inherit', 'inherit', 'inherit'],
    })
    const code = await run.exited
    if (code !== 0) throw new Error(`bench:${bench} exited ${code}`)
  }
  const read = (name: string): Record<string, number> =>
    JSON.parse(readFileSync(join(results, `${name}.json`), 'utf8')) as Record<string, number>
  const memory = read('memory')
  const fanout = read('fanout')
  const record = read('record')
  const reconnect = read('reconnect')
  const ratio = (x: number | undefined) => (x === undefined ? '—' : `${fmt(x, 2)}×`)
  const targets: Array<[string, string, boolean | undefined]> = [
    [
      'idle memory per connection ≤ 2× bare (open mode)',
      ratio(memory.openPerConnection),
      (memory.openPerConnection ?? Number.POSITIVE_INFINITY) <= 2,
    ],
    [
      'idle memory per connection, HS256 tokens (reported)',
      ratio(memory.tokenPerConnection),
      undefined,
    ],
    [
      'peak RSS in the 10,000-subscriber fan-out ≤ 2.5× bare',
      ratio(fanout.peakRss10000),
      (fanout.peakRss10000 ?? Number.POSITIVE_INFINITY) <= 2.5,
    ],
    [
      'fan-out ≥ 0.8× bare (same bytes), 1,000 subscribers',
      ratio(fanout.rate1000),
      (fanout.rate1000 ?? 0) >= 0.8,
    ],
    [
      'fan-out ≥ 0.8× bare (same bytes), 10,000 subscribers',
      ratio(fanout.rate10000),
      (fanout.rate10000 ?? 0) >= 0.8,
    ],
    [
      'POST /api/ws/publish/record ≥ 0.75× bare, 1,000 subscribers',
      ratio(record.rate),
      (record.rate ?? 0) >= 0.75,
    ],
    [
      'reconnect storm fully recovered ≤ 5 s',
      reconnect.ms === undefined ? '—' : `${fmt(reconnect.ms)} ms`,
      reconnect.complete === 1 && (reconnect.ms ?? Number.POSITIVE_INFINITY) <= 5000,
    ],
    [
      'HS256 connection setups ≥ 0.5× bare upgrades/s',
      ratio(memory.tokenSetups),
      (memory.tokenSetups ?? 0) >= 0.5,
    ],
  ]
  console.log('\nbun run bench — issue 13 targets, this run\n')
  console.log(
    table(
      ['target', 'measured', 'met'],
      targets.map(([name, value, met]) => [
        name,
        value,
        met === undefined ? '—' : met ? 'yes' : 'NO',
      ]),
    ),
  )
} finally {
  rmSync(results, { recursive: true, force: true })
}
