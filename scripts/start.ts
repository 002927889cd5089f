/**
 * `bun run start`: bundles src/main.ts (the bundler `bun run build` uses)
 * into a directory of this start's own and runs the bundle in this process.
 * The bundle holds ~17 MiB less resident memory than the ~250 modules of
 * the source, for the server's whole life (docs/BENCHMARKS.md), and takes
 * ~0.2 s to make. In this process, not a child: settings, signals, stdio
 * and the exit code are the server's own, and nothing can outlive it. A
 * directory per start, so processes started together never read a bundle
 * another one is writing; removed when the process exits, or, after a
 * SIGKILL, by the next start. `bun run dev` runs the source with --watch.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = join(import.meta.dir, '..')
const PREFIX = 'teable-realtime-start-'

/** Whether a process with this pid runs (EPERM: it does, as another user). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

// Bundles left by starts that were SIGKILLed (their pid is in the name).
for (const name of readdirSync(tmpdir())) {
  const pid = Number(name.slice(PREFIX.length).split('-')[0])
  if (name.startsWith(PREFIX) && Number.isInteger(pid) && pid > 0 && !alive(pid))
    rmSync(join(tmpdir(), name), { recursive: true, force: true })
}
const dir = mkdtempSync(join(tmpdir(), `${PREFIX}${process.pid}-`))
const removeBundle = () => rmSync(dir, { recursive: true, force: true })
process.on('exit', removeBundle)
const build = Bun.spawn(
  [
    process.execPath,
    'build',
    'src/main.ts',
    '--target=bun',
    // Not minified, without a source map: a source map alone costs ~15 MiB
    // resident; unminified, a stack trace still names the functions.
    '--splitting',
    '--outdir',
    dir,
  ],
  { cwd: root, stdout: 'ignore', stderr: 'inherit' },
)
// A signal before the server installed its own handlers (during the build
// or while the bundle loads) stops the start, and the bundle is removed.
// Once the server's are in place, they alone act.
const exitCodes = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 } as const
for (const [signal, code] of Object.entries(exitCodes))
  process.on(signal, () => {
    if (process.listenerCount(signal) > 1) return
    build.kill()
    process.exit(code)
  })
const built = await build.exited
if (built !== 0) {
  process.stderr.write(`teable-realtime: bundling src/main.ts failed (bun build exited ${built})\n`)
  process.exit(1)
}
// Relative paths (DB_PATH) are read from the caller's directory, as with `bun src/main.ts`.
await import(join(dir, 'main.js'))
