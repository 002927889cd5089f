/**
 * `bun run test`: every suite when PostgreSQL and Redis answer. Without
 * them, the suites that need neither, then one line naming the ones left out
 * and why; with REQUIRE_SERVICES=1 (CI) a missing service fails the run at
 * once instead. Arguments go to `bun test` unchanged; its exit code is ours.
 * Which suites need the services: needsServices in test/support/services.ts.
 */

import { join } from 'node:path'
import { Glob } from 'bun'
import { missingServices, needsServices, SUITES_GLOB } from '../test/support/services.ts'

const root = join(import.meta.dir, '..')

async function serviceSuites(): Promise<string[]> {
  const suites: string[] = []
  for await (const path of new Glob(SUITES_GLOB).scan({ cwd: root }))
    if (needsServices(path, await Bun.file(join(root, path)).text())) suites.push(path)
  return suites.sort()
}

const missing = await missingServices()
const left = missing === undefined ? [] : await serviceSuites()
const report = left.length > 0 ? `(${missing}): ${left.join(', ')}` : undefined
if (report !== undefined && process.env.REQUIRE_SERVICES === '1') {
  console.error(`REQUIRE_SERVICES=1: cannot run ${report}`)
  process.exit(1)
}

const test = Bun.spawn(
  [
    'bun',
    'test',
    // A suite that dies mid-run leaves no nginx or server process behind.
    '--no-orphans',
    ...left.map((path) => `--path-ignore-patterns=${path}`),
    ...process.argv.slice(2),
  ],
  { cwd: root, stdio: ['inherit', 'inherit', 'inherit'] },
)
const code = await test.exited
// Last, where it is seen: a run that passed without these suites did not test them.
if (report !== undefined) console.error(`skipped ${report}`)
process.exit(code)
