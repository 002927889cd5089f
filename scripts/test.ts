/**
 * `bun run test`: every suite when PostgreSQL and Redis answer and nginx is
 * installed. Without them, the suites that need neither, then one line per
 * missing piece naming the suites left out and why; with REQUIRE_SERVICES=1
 * (CI) a missing one fails the run at once instead. Arguments go to `bun
 * test` unchanged. Without arguments and with both services, STORE_SUITES
 * then run again with TEST_STORE=postgres and TEST_STORE=cluster. Any
 * failing run fails ours. Which suites need what: needsServices and
 * NGINX_SUITES in test/support/services.ts.
 */

import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { Glob } from 'bun'
import { NGINX } from '../test/support/nginx.ts'
import {
  missingServices,
  NGINX_SUITES,
  needsServices,
  STORE_SUITES,
  SUITES_GLOB,
} from '../test/support/services.ts'

const root = join(import.meta.dir, '..')
const args = process.argv.slice(2)
/**
 * Tests start real servers and processes: 30 s each, not bun's 5 s. Only
 * the flag sets it (bunfig.toml's [test] has no timeout in Bun 1.3).
 */
const TIMEOUT = ['--timeout', '30000']

async function serviceSuites(): Promise<string[]> {
  const suites: string[] = []
  for await (const path of new Glob(SUITES_GLOB).scan({ cwd: root }))
    if (needsServices(path, await Bun.file(join(root, path)).text())) suites.push(path)
  return suites.sort()
}

const missing = await missingServices()
const reports: string[] = []
const left = new Set<string>()
if (missing !== undefined) {
  const suites = await serviceSuites()
  for (const suite of suites) left.add(suite)
  if (suites.length > 0) reports.push(`(${missing}): ${suites.join(', ')}`)
}
if (!existsSync(NGINX)) {
  const suites = NGINX_SUITES.filter((suite) => !left.has(suite))
  for (const suite of suites) left.add(suite)
  if (suites.length > 0)
    reports.push(`(nginx not installed at ${NGINX}; Debian: nginx-light): ${suites.join(', ')}`)
}
if (reports.length > 0 && process.env.REQUIRE_SERVICES === '1') {
  for (const report of reports) console.error(`REQUIRE_SERVICES=1: cannot run ${report}`)
  process.exit(1)
}

const test = Bun.spawn(
  [
    'bun',
    'test',
    // A suite that dies mid-run leaves no nginx or server process behind.
    '--no-orphans',
    ...TIMEOUT,
    ...[...left].map((path) => `--path-ignore-patterns=${path}`),
    ...args,
  ],
  { cwd: root, stdio: ['inherit', 'inherit', 'inherit'] },
)
let code = await test.exited

if (missing === undefined && args.length === 0)
  for (const store of ['postgres', 'cluster'] as const) {
    console.log(
      store === 'postgres'
        ? `\nTEST_STORE=postgres: ${STORE_SUITES.length} suites again on PostgreSQL (one process, no Redis)`
        : `\nTEST_STORE=cluster: ${STORE_SUITES.length} suites again on PostgreSQL and Redis (cluster mode, one node)`,
    )
    const again = Bun.spawn(['bun', 'test', '--no-orphans', ...TIMEOUT, ...STORE_SUITES], {
      cwd: root,
      // Bun reads the flag only at start; deployments on PostgreSQL set it (docs/CLUSTER.md).
      env: { ...process.env, TEST_STORE: store, BUN_FEATURE_FLAG_DISABLE_SQL_AUTO_PIPELINING: '1' },
      stdio: ['inherit', 'inherit', 'inherit'],
    })
    const storeCode = await again.exited
    if (code === 0) code = storeCode
  }

// Last, where it is seen: a run that passed without these suites did not test them.
for (const report of reports) console.error(`skipped ${report}`)
process.exit(code)
