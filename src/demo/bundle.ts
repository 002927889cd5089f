import { join } from 'node:path'

/**
 * A Bun macro (imported `with { type: 'macro' }`): bundles the demo's
 * script, SDK included, when the importing module is transpiled, so the
 * script is a string inside the program, the compiled binary included.
 * Bun.build cannot run inside a macro (the bundler waits for it): the CLI can.
 */
export function demoScript(): string {
  const entry = join(import.meta.dir, 'grid.ts')
  // This Bun, not whichever `bun` is first on PATH (or none).
  const build = Bun.spawnSync([
    process.execPath,
    'build',
    entry,
    '--target=browser',
    '--format=esm',
    '--minify',
  ])
  if (build.exitCode !== 0) throw new Error(`bundling the demo failed: ${build.stderr.toString()}`)
  return build.stdout.toString()
}
