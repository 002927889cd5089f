/**
 * bench:cluster — the server as a cluster (3 processes, PostgreSQL store,
 * Redis fan-out) against one process with the embedded SQLite store, in one
 * run on one machine:
 *   - durable acked submits: 100 clients on 100 documents, spread over the
 *     processes; closed loop (max throughput) and a fixed offered rate;
 *   - fan-out: 1,000 subscribers of one channel per process, REST
 *     broadcasts sent to every process; one process with all of them as
 *     the baseline.
 * Load clients run in their own processes. The database and Redis keys of
 * the run are removed at the end, also after a failure or Ctrl-C.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freshDatabase, freshRedisPrefix } from '../test/support/services.ts'
import {
  type CpuShares,
  fmt,
  ourServer,
  type ProcessSample,
  type QuietChild,
  runProfiled,
  startReady,
  table,
} from './lib.ts'

const seconds = process.env.BENCH_SECONDS ?? '5'
const clients = process.env.BENCH_CLIENTS ?? '100'
const offered = Number(process.env.BENCH_RATE ?? 5_000)
const nodeCount = 3
const subscribersPerNode = Number(process.env.BENCH_SUBSCRIBERS_PER_NODE ?? 1_000)
/** Ops each submitting client keeps in flight in the closed loop (as bench:submit). */
const submitWindow = process.env.BENCH_SUBMIT_WINDOW ?? '4'
/** Publishers and broadcasts in flight of the fan-out (as bench:fanout). */
const fanoutEnv = {
  BENCH_PUBLISHERS: process.env.BENCH_PUBLISHERS ?? '16',
  BENCH_WINDOW: process.env.BENCH_FANOUT_WINDOW ?? '32',
}

const TARGET_RATE = 20_000
const TARGET_P99_MS = 25
const TARGET_FANOUT_RATIO = 0.5

/** Every process, cluster or not: quiet logs, limits far above what the load sends. */
const serverEnv = {
  HOST: '127.0.0.1',
  LOG_LEVEL: 'warn',
  MAX_CONNECTIONS: '50000',
  CONNECT_RATE_PER_IP: '1000000',
  MESSAGE_RATE: '1000000',
}

interface Deployment {
  name: string
  servers: QuietChild[]
  urls: string[]
  /** Its PostgreSQL database, if any: that database's backends are counted as PostgreSQL's CPU. */
  database?: string
}

/** Undone in reverse order at the end, whatever happened (and on SIGINT/SIGTERM). */
const cleanups: Array<() => Promise<void> | void> = []
let cleaning = Promise.resolve()
/**
 * Undoes what is registered now, after any cleanup already running: a
 * signal's cleanup and the main flow's `finally` both wait for all of it.
 */
function cleanUp(): Promise<void> {
  cleaning = cleaning.then(async () => {
    for (const step of cleanups.splice(0).reverse())
      await Promise.resolve()
        .then(step)
        .catch((error: unknown) => console.error('cleanup step failed:', error))
  })
  return cleaning
}
for (const signal of ['SIGINT', 'SIGTERM'] as const)
  process.once(signal, () => {
    void cleanUp().finally(() => process.exit(130))
  })

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'teable-realtime-bench-cluster-'))
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Stops a server; one that will not stop within 10 s is killed, so cleanup goes on. */
async function stopServer(server: QuietChild): Promise<void> {
  const timeout = Bun.sleep(10_000).then(() => 'timeout' as const)
  if ((await Promise.race([server.stop(), timeout])) === 'timeout') {
    server.proc.kill('SIGKILL')
    await server.proc.exited
  }
}

/** Starts the processes together; every one that started is stopped at cleanup, together. */
async function startServers(envs: Array<Record<string, string>>): Promise<QuietChild[]> {
  const started = await Promise.allSettled(
    envs.map((env) => startReady(ourServer(), { ...serverEnv, ...env })),
  )
  const servers = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []))
  cleanups.push(async () => {
    await Promise.all(servers.map(stopServer))
  })
  const failed = started.find((result) => result.status === 'rejected')
  if (failed) throw failed.reason
  return servers
}

async function startSingle(): Promise<Deployment> {
  const dir = tempDir()
  const servers = await startServers([{ DB_PATH: join(dir, 'bench.db') }])
  return {
    name: '1 process, SQLite',
    servers,
    urls: servers.map((server) => `http://127.0.0.1:${server.port}`),
  }
}

async function startCluster(): Promise<Deployment> {
  const database = await freshDatabase()
  cleanups.push(() => database.drop())
  const redis = freshRedisPrefix()
  cleanups.push(() => redis.clean())
  const dir = tempDir()
  const servers = await startServers(
    Array.from({ length: nodeCount }, (_, i) => ({
      DATABASE_URL: database.url,
      REDIS_URL: redis.url,
      REDIS_PREFIX: redis.prefix,
      NODE_ID: `bench-node-${i + 1}`,
      // Unused with DATABASE_URL; keeps a process that ignored it off ./data.
      DB_PATH: join(dir, `node-${i + 1}.db`),
      // Guard against oven-sh/bun #33627 (wrong rows under SQL pipelining).
      BUN_FEATURE_FLAG_DISABLE_SQL_AUTO_PIPELINING: '1',
    })),
  )
  return {
    name: `cluster: ${nodeCount} processes, PostgreSQL + Redis`,
    servers,
    urls: servers.map((server) => `http://127.0.0.1:${server.port}`),
    database: database.name,
  }
}

type Group = 'servers' | 'postgres' | 'redis' | 'load'

/** What every load client reports besides its figures: its own CPU seconds over its window. */
interface LoadCpu {
  clientCpu: number
  seconds: number
}

/** Moves the load client's own CPU from `other` (where the machine's total put it) to `load`. */
function withLoad<T extends LoadCpu & { cpu: CpuShares<Group> }>(result: T): T {
  const load = result.clientCpu / Math.max(result.seconds, 1e-9)
  return { ...result, cpu: { ...result.cpu, load, other: Math.max(0, result.cpu.other - load) } }
}

interface SubmitResult extends LoadCpu {
  acked: number
  refused: number
  refusals: Record<string, number>
  rate: number
  p50: number
  p99: number
  max: number
  cpu: CpuShares<Group>
}

interface FanoutResult extends LoadCpu {
  subscribers: number
  deliveries: number
  rate: number
  frameBytes: number
  cpu: CpuShares<Group>
}

/**
 * Which part of the run a process is: our servers, PostgreSQL's shared
 * processes and this run's backends, Redis. The load client reports its own
 * CPU (see withLoad); anything else (other work on the machine) is `other`.
 */
function classifier(deployment: Deployment) {
  const servers = new Set(deployment.servers.map((server) => server.proc.pid))
  return (pid: number, sample: ProcessSample): Group | undefined => {
    if (servers.has(pid)) return 'servers'
    if (sample.comm === 'redis-server') return 'redis'
    if (sample.comm !== 'postgres') return undefined
    // A backend's title names its database and client ("… db 127.0.0.1(port) idle").
    const backend = /\d+\.\d+\.\d+\.\d+\(\d+\)/.test(sample.cmdline)
    return !backend || (deployment.database && sample.cmdline.includes(` ${deployment.database} `))
      ? 'postgres'
      : undefined
  }
}

interface Measured {
  closed: SubmitResult
  open: SubmitResult
  fanout: FanoutResult
}

/** Each load on a fresh set of documents (so runs on one store do not collide). */
async function measure(deployment: Deployment): Promise<Measured> {
  const classify = classifier(deployment)
  const submit = async (mode: 'closed' | 'open') =>
    withLoad(
      await runProfiled<SubmitResult, Group>(
        [
          'bun',
          'bench/load/cluster-submit-client.ts',
          deployment.urls.join(','),
          mode,
          clients,
          seconds,
          String(offered),
        ],
        classify,
        { BENCH_DOC_PREFIX: `${mode}-`, BENCH_WINDOW: submitWindow },
      ),
    )
  const closed = await submit('closed')
  const open = await submit('open')
  const fanout = withLoad(
    await runProfiled<FanoutResult, Group>(
      [
        'bun',
        'bench/load/cluster-fanout-client.ts',
        deployment.urls.join(','),
        String(subscribersPerNode * nodeCount),
        seconds,
      ],
      classify,
      fanoutEnv,
    ),
  )
  return { closed, open, fanout }
}

/** Warnings and errors the processes logged since `since` (their counts then): none expected. */
function loggedSince(deployment: Deployment, since: number[]): string[] {
  return deployment.servers.flatMap((server, i) => {
    const count = Math.min(server.logged() - (since[i] ?? 0), server.log.length)
    return server.log
      .slice(server.log.length - count)
      .map((line) => `${deployment.name} #${i + 1}: ${line}`)
  })
}

/** Cores used by each part over the measured window. */
const cores = ({ servers, postgres, redis, load, other }: CpuShares<Group>) =>
  [servers, postgres, redis, load, other].map((c) => fmt(c ?? 0, 2)).join(' / ')

const verdict = (met: boolean) => (met ? 'met' : 'MISSED')
const ratio = (a: number, b: number) => `${fmt(a / b, 2)}×`

let cluster: Measured
let single: Measured
const notes: string[] = []
try {
  // Start-up warnings (open mode) are expected; only what is logged under load is shown.
  const clustered = await startCluster()
  const clusterStart = clustered.servers.map((server) => server.logged())
  cluster = await measure(clustered)
  notes.push(...loggedSince(clustered, clusterStart))
  // Gone (processes, database, keys) before the baseline runs on the same cores.
  await cleanUp()
  const alone = await startSingle()
  const singleStart = alone.servers.map((server) => server.logged())
  single = await measure(alone)
  notes.push(...loggedSince(alone, singleStart))
} finally {
  await cleanUp()
}

const clusterName = `cluster (${nodeCount} × PostgreSQL + Redis)`
const singleName = '1 process, SQLite'
const submitRow = (
  name: string,
  load: string,
  r: SubmitResult,
  vs: string,
  target: string,
): Array<string | number> => [
  load,
  name,
  `${fmt(r.rate)} ops/s`,
  vs,
  fmt(r.p50, 2),
  fmt(r.p99, 2),
  fmt(r.refused),
  fmt(((r.cpu.servers ?? 0) / Math.max(r.rate, 1)) * 1e6, 1),
  cores(r.cpu),
  target,
]
const fanoutRow = (
  name: string,
  load: string,
  r: FanoutResult,
  vs: string,
  target: string,
): Array<string | number> => [
  load,
  name,
  `${fmt(r.rate)} deliveries/s`,
  vs,
  '—',
  '—',
  '—',
  fmt(((r.cpu.servers ?? 0) / Math.max(r.rate, 1)) * 1e6, 2),
  cores(r.cpu),
  target,
]

const closedLoad = 'durable submits, max (closed loop)'
const openLoad = `durable submits, ${fmt(offered)}/s offered`
const fanoutLoad = `fan-out, ${fmt(subscribersPerNode * nodeCount)} subscribers`
const fanoutRatio = cluster.fanout.rate / single.fanout.rate
const rows = [
  submitRow(
    clusterName,
    closedLoad,
    cluster.closed,
    ratio(cluster.closed.rate, single.closed.rate),
    `≥ ${fmt(TARGET_RATE)} ops/s: ${verdict(cluster.closed.rate >= TARGET_RATE)}`,
  ),
  submitRow(singleName, closedLoad, single.closed, '1.00×', 'baseline'),
  submitRow(
    clusterName,
    openLoad,
    cluster.open,
    ratio(cluster.open.rate, single.open.rate),
    `p99 ≤ ${TARGET_P99_MS} ms: ${verdict(cluster.open.p99 <= TARGET_P99_MS)}`,
  ),
  submitRow(singleName, openLoad, single.open, '1.00×', 'baseline'),
  fanoutRow(
    `${clusterName}, ${fmt(subscribersPerNode)} per process`,
    fanoutLoad,
    cluster.fanout,
    ratio(cluster.fanout.rate, single.fanout.rate),
    `≥ ${TARGET_FANOUT_RATIO}× single: ${verdict(fanoutRatio >= TARGET_FANOUT_RATIO)}`,
  ),
  fanoutRow(singleName, fanoutLoad, single.fanout, '1.00×', 'baseline'),
]

console.log(
  `\nbench:cluster — submits: ${clients} clients, one document each, {p:['n'], na:1} ops, client i on process i mod ${nodeCount}; closed loop keeps ${submitWindow} ops in flight per client; ack = after the store's commit. Fan-out: one channel, REST broadcast/channel from ${fanoutEnv.BENCH_PUBLISHERS} publishers spread over the processes, at most ${fanoutEnv.BENCH_WINDOW} messages in flight. ${seconds} s measured after 1 s warm-up. One machine with 2 cores shared by the server processes, PostgreSQL, Redis and the load client (its own process). Server CPU is summed over the server processes; cores: CPU seconds per second of each part over the measured window ('other' is the rest of the machine, not this run).\n`,
)
console.log(
  table(
    [
      'load',
      'deployment',
      'rate',
      'vs 1 process',
      'p50 ms',
      'p99 ms',
      'refused',
      'server CPU µs / op or delivery',
      'cores: servers / PostgreSQL / Redis / load / other',
      'target',
    ],
    rows,
  ),
)
console.log(`\ncluster fan-out / single process: ${fmt(fanoutRatio, 2)}×`)
const refusals: Record<string, number> = {}
for (const [code, count] of [cluster.closed, cluster.open].flatMap((r) =>
  Object.entries(r.refusals),
))
  refusals[code] = (refusals[code] ?? 0) + count
if (Object.keys(refusals).length > 0)
  console.log(`cluster refusals by code: ${JSON.stringify(refusals)}`)
if (notes.length > 0)
  console.log(
    `\nserver log lines at warn or above under load (${notes.length}):\n${notes.slice(0, 20).join('\n')}`,
  )
