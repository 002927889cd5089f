/**
 * `bun run start`: bundles src/main.ts (the same bundler as `bun run build`)
 * into a directory of this start's own and runs the bundle. The bundle
 * holds ~19 MiB less resident memory than the ~250 modules of the source,
 * for the server's whole life (docs/BENCHMARKS.md), and takes ~0.2 s to
 * make. Settings, stdio, signals and the exit code are the server's.
 * `bun run dev` runs the source with --watch.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { constants, tmpdir } from 'node:os'
import { join } from 'node:path'

const root = join(import.meta.dir, '..')

/**
 * Bundles the server into a new directory and returns its entry. A
 * directory per start, so processes started together never read a bundle
 * another one is writing.
 */
export function bundleServer(): { entry: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'teable-realtime-start-'))
  const build = Bun.spawnSync(
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
  if (build.exitCode !== 0) {
    rmSync(dir, { recursive: true, force: true })
    throw new Error(`bundling src/main.ts failed (bun build exited ${build.exitCode})`)
  }
  return { entry: join(dir, 'main.js'), dir }
}

if (import.meta.main) {
  let bundle: { entry: string; dir: string }
  try {
    bundle = bundleServer()
  } catch (error) {
    process.stderr.write(`teable-realtime: ${(error as Error).message}\n`)
    process.exit(1)
  }
  // Its own process group: a terminal's Ctrl-C reaches the server once, through here.
  // Relative paths (DB_PATH) are read from the caller's directory, as with `bun src/main.ts`.
  const server = Bun.spawn([process.execPath, bundle.entry], {
    stdio: ['inherit', 'inherit', 'inherit'],
    detached: true,
  })
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const)
    process.on(signal, () => server.kill(signal))
  const code = await server.exited
  rmSync(bundle.dir, { recursive: true, force: true })
  process.exit(server.signalCode ? 128 + constants.signals[server.signalCode] : code)
}
