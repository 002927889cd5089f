/**
 * bench:binary — the single binary: its size, time from exec to /readyz
 * answering 200 in an empty directory (median of 5 starts, against
 * `bun src/main.ts` as the baseline, and `bun run start`, which bundles
 * first), and resident memory when idle.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fmt, startChild, table } from './lib.ts'

const root = join(import.meta.dir, '..')
const work = mkdtempSync(join(tmpdir(), 'teable-realtime-binary-bench-'))
const binary = join(work, 'teable-realtime')
const build = Bun.spawnSync(
  ['bun', 'build', '--compile', '--minify', 'src/main.ts', '--outfile', binary],
  { cwd: root },
)
if (build.exitCode !== 0) throw new Error(build.stderr.toString())

async function start(argv: string[], cwd: string): Promise<{ ms: number; rssMiB: number }> {
  const dir = mkdtempSync(join(work, 'run-'))
  const started = performance.now()
  const child = await startChild(
    argv,
    { SOCKET_PORT: '0', HOST: '127.0.0.1', DB_PATH: join(dir, 'db.sqlite'), LOG_LEVEL: 'info' },
    cwd,
  )
  while (
    (await fetch(`http://127.0.0.1:${child.port}/readyz`).catch(() => undefined))?.status !== 200
  )
    await Bun.sleep(1)
  const ms = performance.now() - started
  await Bun.sleep(2000) // idle
  const rssMiB = await child.rssMiB()
  await child.stop()
  return { ms, rssMiB }
}

const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0
const rows: Array<Array<string | number>> = []
for (const [name, argv, cwd] of [
  ['dist binary (bun build --compile)', [binary], work],
  ['bun run start (bundled at start)', ['bun', 'scripts/start.ts'], root],
  ['bun src/main.ts (baseline)', ['bun', 'src/main.ts'], root],
] as const) {
  const runs = []
  for (let i = 0; i < 5; i++) runs.push(await start([...argv], cwd))
  rows.push([
    name,
    name.startsWith('dist') ? fmt(statSync(binary).size / 1024 / 1024, 1) : '—',
    fmt(median(runs.map((r) => r.ms))),
    fmt(median(runs.map((r) => r.rssMiB)), 1),
  ])
}
rmSync(work, { recursive: true, force: true })
console.log(
  '\nbench:binary — exec to /readyz 200 in an empty directory (median of 5), idle RSS 2 s after\n',
)
console.log(table(['program', 'size MiB', 'start to ready ms', 'idle RSS MiB'], rows))
