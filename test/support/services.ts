import { SQL } from 'bun'
import Redis from 'ioredis'

/**
 * The machine's services, as CLUSTER.md and the CI machine have them.
 * TEST_POSTGRES_URL (a database the tests may CREATE DATABASE from) and
 * TEST_REDIS_URL point the tests elsewhere; the runner's own test points
 * them at a closed port to play a missing service.
 */
export const POSTGRES_ADMIN_URL =
  process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

/** Whether PostgreSQL and Redis answer (each within a second). */
export async function servicesAvailable(): Promise<{ postgres: boolean; redis: boolean }> {
  const postgres = (async () => {
    const sql = new SQL(POSTGRES_ADMIN_URL, { max: 1, connectionTimeout: 1 })
    try {
      await sql`SELECT 1`
      return true
    } catch {
      return false
    } finally {
      await sql.close().catch(() => {})
    }
  })()
  const redis = (async () => {
    const client = new Redis(REDIS_URL, {
      lazyConnect: true,
      connectTimeout: 1000,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    })
    client.on('error', () => {})
    try {
      await client.connect()
      return (await client.ping()) === 'PONG'
    } catch {
      return false
    } finally {
      client.disconnect()
    }
  })()
  return { postgres: await postgres, redis: await redis }
}

const suffix = () => `${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`

/** A new, empty PostgreSQL database for one test run; `drop` removes it (ending its connections). */
export async function freshDatabase(): Promise<{
  url: string
  name: string
  drop(): Promise<void>
}> {
  const name = `teable_rt_test_${suffix()}`
  const admin = new SQL(POSTGRES_ADMIN_URL, { max: 1 })
  try {
    await admin.unsafe(`CREATE DATABASE ${name}`)
  } finally {
    await admin.close()
  }
  const url = new URL(POSTGRES_ADMIN_URL)
  url.pathname = `/${name}`
  return {
    name,
    url: url.href,
    async drop() {
      const sql = new SQL(POSTGRES_ADMIN_URL, { max: 1 })
      try {
        await sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await sql.close()
      }
    },
  }
}

/** A Redis key prefix of one test run; `clean` deletes every key under it. */
export function freshRedisPrefix(): { url: string; prefix: string; clean(): Promise<void> } {
  const prefix = `teable-realtime-test:${suffix()}:`
  return {
    url: REDIS_URL,
    prefix,
    async clean() {
      const client = new Redis(REDIS_URL)
      try {
        let cursor = '0'
        do {
          const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
          cursor = next
          if (keys.length > 0) await client.del(...keys)
        } while (cursor !== '0')
      } finally {
        client.disconnect()
      }
    },
  }
}

/**
 * Why suites that need the services cannot run, as one phrase
 * (`PostgreSQL not reachable at 127.0.0.1:5432; Redis not reachable at …`),
 * or undefined when both answer.
 */
export async function missingServices(): Promise<string | undefined> {
  const available = await servicesAvailable()
  const missing = [
    available.postgres
      ? undefined
      : `PostgreSQL not reachable at ${new URL(POSTGRES_ADMIN_URL).host}`,
    available.redis ? undefined : `Redis not reachable at ${new URL(REDIS_URL).host}`,
  ].filter((reason) => reason !== undefined)
  return missing.length > 0 ? missing.join('; ') : undefined
}

let checked: Promise<string | undefined> | undefined

/**
 * The guard of every suite that needs PostgreSQL and Redis: `await
 * requireServices()` at the top of the file. It throws when either does not
 * answer, so the file fails instead of passing with nothing run. The test
 * runner (scripts/test.ts) leaves such files out when a service is missing
 * and names them; it finds them by this call (see needsServices).
 */
export async function requireServices(): Promise<void> {
  checked ??= missingServices()
  const missing = await checked
  if (missing !== undefined)
    throw new Error(`${missing}: this suite needs PostgreSQL and Redis (bun run test skips it)`)
}

/** Where the suites are: bun test's `*.test.ts` files (browser tests are `*.e2e.ts`, run apart). */
export const SUITES_GLOB = 'test/**/*.test.ts'

/** Suites that need the services by name, whether or not they call requireServices yet. */
const SERVICE_SUITES = [
  /^test\/cluster[^/]*\.test\.ts$/,
  /^test\/store-contract\.test\.ts$/,
  /^test\/redis-broker\.test\.ts$/,
]

/**
 * The one rule for which suites need PostgreSQL and Redis: the names above,
 * and any suite that calls requireServices(). `path` is relative to the
 * project, with `/`.
 */
export function needsServices(path: string, source: string): boolean {
  return SERVICE_SUITES.some((pattern) => pattern.test(path)) || source.includes('requireServices(')
}

/**
 * The suites that start nginx (Debian's nginx-light), left out where it is
 * not installed. A new one that is not listed fails there with startNginx's
 * message saying what to install.
 */
export const NGINX_SUITES = ['test/cluster-failover.test.ts', 'test/cluster-infra.test.ts']

/**
 * Suites about what a client sees, whatever the store: they start their
 * servers with startServerOnTestStore (test/helpers.ts), and `bun run test`
 * runs them again on PostgreSQL (TEST_STORE=postgres) and in cluster mode
 * (TEST_STORE=cluster) once the normal run is done.
 */
export const STORE_SUITES = [
  'test/auth.test.ts',
  'test/backlog.test.ts',
  'test/client-core.test.ts',
  'test/client-protocol.test.ts',
  'test/client-regressions.test.ts',
  'test/client-resume.test.ts',
  'test/client-treaty.test.ts',
  'test/documents.test.ts',
  'test/fuzz.test.ts',
  'test/heartbeat.test.ts',
  'test/hub.test.ts',
  'test/limits.test.ts',
  'test/ops.test.ts',
  'test/presence.test.ts',
  'test/proxy.test.ts',
  'test/replay.test.ts',
  'test/socket.test.ts',
  'test/strict-input.test.ts',
]

// `bun test/support/services.ts`: CI's check that both answer, naming any that does not.
if (import.meta.main) {
  const missing = await missingServices()
  if (missing !== undefined) {
    console.error(`services missing: ${missing}`)
    process.exit(1)
  }
  console.log(
    `PostgreSQL and Redis answer (${new URL(POSTGRES_ADMIN_URL).host}, ${new URL(REDIS_URL).host})`,
  )
}
