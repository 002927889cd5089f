/**
 * bench:intake — record publishes handed over through the intake queue
 * (Redis Streams) against the same publishes over REST, in one run on one
 * machine, on the PostgreSQL store with one process and with three (one of
 * which consumes: one consumer at a time, by design), and on one SQLite
 * process. The rate is entries per second from XADD (or POST) to fan-out:
 * counted when every subscriber (one per process) has received the op.
 * Load clients run in their own processes. The database and Redis keys of
 * the run are removed at the end, also after a failure or Ctrl-C.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Redis from 'ioredis'
import { freshDatabase, freshRedisPrefix } from '../test/support/services.ts'
import { fmt, ourServer, type QuietChild, runClient, startReady, table } from './lib.ts'

const seconds = process.env.BENCH_SECONDS ?? '5'
const restClients = process.env.BENCH_CLIENTS ?? '64'
const window = process.env.BENCH_WINDOW ?? '2000'
const GROUP = 'teable-realtime'

/** Every process: quiet logs, limits far above what the load sends. */
const serverEnv = {
  HOST: '127.0.0.1',
  LOG_LEVEL: 'warn',
  MAX_CONNECTIONS: '50000',
  CONNECT_RATE_PER_IP: '1000000',
  MESSAGE_RATE: '1000000',
  // Guard against oven-sh/bun #33627 (wrong rows under SQL pipelining).
  BUN_FEATURE_FLAG_DISABLE_SQL_AUTO_PIPELINING: '1',
}

/** Undone in reverse order at the end, whatever happened (and on SIGINT/SIGTERM). */
const cleanups: Array<() => Promise<void> | void> = []
async function cleanUp(): Promise<void> {
  for (const step of cleanups.splice(0).reverse())
    await Promise.resolve()
      .then(step)
      .catch((error: unknown) => console.error('cleanup step failed:', error))
}
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  process.once(signal, () => {
    void cleanUp().finally(() => process.exit(130))
  })

const keys = freshRedisPrefix()
cleanups.push(() => keys.clean())
const redis = new Redis(keys.url)
cleanups.push(() => redis.disconnect())

interface Deployment {
  name: string
  servers: QuietChild[]
  urls: string[]
  stream: string
  /** Stops its processes (and drops its database) before the next one starts. */
  stop(): Promise<void>
}

async function startServer(env: Record<string, string>): Promise<QuietChild> {
  const server = await startReady(ourServer(), { ...serverEnv, ...env })
  const stop = async () => {
    // A process that will not stop within 10 s is killed, so cleanup goes on.
    const stopped = server.stop()
    const timeout = Bun.sleep(10_000).then(() => 'timeout' as const)
    if ((await Promise.race([stopped, timeout])) === 'timeout') {
      server.proc.kill('SIGKILL')
      await server.proc.exited
    }
  }
  cleanups.push(stop)
  return server
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'teable-realtime-bench-intake-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** `count` processes on PostgreSQL (a fresh database), or one on SQLite; all with INTAKE_STREAM. */
async function deploy(name: string, count: number, store: 'postgres' | 'sqlite') {
  const stream = `${keys.prefix}intake:${name.replace(/\W+/g, '-')}`
  const dir = tempDir()
  const database = store === 'postgres' ? await freshDatabase() : undefined
  if (database) cleanups.push(() => database.drop())
  const servers = await Promise.all(
    Array.from({ length: count }, (_, i) =>
      startServer({
        ...(database ? { DATABASE_URL: database.url } : {}),
        REDIS_URL: keys.url,
        REDIS_PREFIX: `${keys.prefix}${name.replace(/\W+/g, '-')}:`,
        NODE_ID: `bench-node-${i + 1}`,
        DB_PATH: join(dir, `node-${i + 1}.db`),
        INTAKE_STREAM: stream,
      }),
    ),
  )
  const deployment: Deployment = {
    name,
    servers,
    urls: servers.map((server) => `http://127.0.0.1:${server.port}`),
    stream,
    async stop() {
      await Promise.all(servers.map((server) => server.stop()))
      await database?.drop()
    },
  }
  return deployment
}

interface LoadResult {
  sent: number
  entries: number
  rate: number
  seconds: number
}

/** Runs one load; the servers' CPU seconds (summed) over its measured window come with it. */
async function load(deployment: Deployment, mode: 'intake' | 'rest', tableId: string) {
  let cpuAtStart = 0
  let serverCpu = 0
  const cpu = async () =>
    (await Promise.all(deployment.servers.map((server) => server.cpuSeconds()))).reduce(
      (a, b) => a + b,
      0,
    )
  const result = await runClient<LoadResult>(
    ['bun', 'bench/load/intake-client.ts', deployment.urls.join(','), mode, seconds],
    async (phase) => {
      if (phase === 'start') cpuAtStart = await cpu()
      if (phase === 'end') serverCpu = (await cpu()) - cpuAtStart
    },
    {
      BENCH_TABLE: tableId,
      BENCH_STREAM: deployment.stream,
      BENCH_REDIS_URL: keys.url,
      BENCH_WINDOW: window,
      BENCH_CLIENTS: restClients,
    },
  )
  return { ...result, serverCpu }
}

interface Measured {
  deployment: string
  consumer: string
  consumers: number
  intake: Awaited<ReturnType<typeof load>>
  rest: Awaited<ReturnType<typeof load>>
  dead: number
}

async function measure(name: string, count: number, store: 'postgres' | 'sqlite') {
  const deployment = await deploy(name, count, store)
  try {
    const intake = await load(deployment, 'intake', 'tbl_intake')
    const consumer = (await redis.get(`${deployment.stream}:lease:${GROUP}`)) ?? '?'
    const dead = await redis.xlen(`${deployment.stream}:dead`)
    const rest = await load(deployment, 'rest', 'tbl_rest')
    return { deployment: name, consumer, consumers: count, intake, rest, dead } satisfies Measured
  } finally {
    await deployment.stop()
  }
}

const results: Measured[] = []
try {
  results.push(await measure('PostgreSQL, 1 process', 1, 'postgres'))
  results.push(await measure('PostgreSQL, 3 processes', 3, 'postgres'))
  results.push(await measure('SQLite, 1 process', 1, 'sqlite'))
} finally {
  await cleanUp()
}

const µsPer = (r: { serverCpu: number; entries: number }) =>
  fmt((r.serverCpu / Math.max(r.entries, 1)) * 1e6, 1)
const rows = results.flatMap((m) => {
  const ratio = m.intake.rate / m.rest.rate
  const who =
    m.consumers === 1
      ? 'its process consumes'
      : `${m.consumer} consumes, the other ${m.consumers - 1} stand by`
  return [
    [
      m.deployment,
      `intake (XADD; ${who})`,
      fmt(m.intake.rate),
      `${fmt(ratio, 2)}×`,
      µsPer(m.intake),
      fmt(m.dead),
      `intake ≥ REST: ${ratio >= 1 ? 'met' : 'MISSED'}`,
    ],
    [
      m.deployment,
      `REST (${restClients} clients${m.consumers > 1 ? ' over the processes' : ''})`,
      fmt(m.rest.rate),
      '1.00×',
      µsPer(m.rest),
      '—',
      'baseline',
    ],
  ]
})

console.log(
  `\nbench:intake — POST /api/ws/publish/record bodies (json0 ops on 64 records of one table) as intake entries (XADD, pipelined ${100} at a time, at most ${window} not yet fanned out) or as REST calls (${restClients} concurrent HTTP clients, one request in flight each). Rate: entries per second from XADD/POST until every subscriber (one per process, on the table's record collection) received the op. With 3 processes only one consumes the stream at a time (a lease; the others take over when it dies): the intake gains nothing from more processes, by design. ${seconds} s measured after 1 s warm-up. One machine with 2 cores shared by the servers, PostgreSQL, Redis and the load client.\n`,
)
console.log(
  table(
    [
      'store, processes',
      'path',
      'entries/s to fan-out',
      'vs REST',
      'server CPU µs / entry',
      'dead letters',
      'target',
    ],
    rows,
  ),
)
