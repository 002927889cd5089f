import { join } from 'node:path'
import { type ServerProcess, spawnServer, tempDir, within } from '../helpers.ts'
import { type Nginx, startNginx } from './nginx.ts'
import { freshDatabase, freshRedisPrefix } from './services.ts'

export interface ClusterOptions {
  /** How many server processes (NODE_ID node-1 … node-n). */
  nodes?: number
  /**
   * More environment for every process, over the defaults (not NODE_ID).
   * LOG_LEVEL must stay info or finer: the port is read from the
   * `listening` line.
   */
  env?: Record<string, string>
  /** nginx in front (round robin over the nodes); the nodes then get TRUST_PROXY=1. */
  nginx?: boolean
}

export interface ClusterNode {
  readonly id: string
  /** The current process's (a restart may change them). */
  readonly port: number
  readonly url: string
  readonly wsUrl: string
  readonly pid: number
  /** The current process's stdout lines so far (its JSON log). */
  readonly lines: string[]
  /** The current process's exit code, once it is gone. */
  readonly exited: Promise<number>
  readonly running: boolean
  /** Sends a signal to the current process (SIGKILL: a crash; SIGSTOP: a hang); await `exited` to see it go. */
  kill(signal: NodeJS.Signals): void
  /** Stops it (SIGTERM) if running, then starts it again with the same NODE_ID and environment. */
  restart(): Promise<void>
}

export interface Cluster {
  nodes: ClusterNode[]
  /** The cluster's own PostgreSQL database, dropped by stop(). */
  databaseUrl: string
  /**
   * Its Redis and key prefix; stop() deletes every key under the prefix, so
   * a test's own keys (an INTAKE_STREAM) belong under it too.
   */
  redis: { url: string; prefix: string }
  /** Every process's ADMIN_TOKEN: the server API through nginx needs it (no caller is loopback there). */
  adminToken: string
  /** `Authorization: Bearer <adminToken>`, for getJson/postJson. */
  adminHeaders: Record<string, string>
  nginx?: Nginx
  /** Stops the processes and nginx, drops the database, deletes the Redis keys. */
  stop(): Promise<void>
}

/** A graceful stop that does not wait forever: SIGKILL after 10 s. */
async function terminate(server: ServerProcess): Promise<void> {
  const { proc } = server
  if (proc.exitCode !== null || proc.signalCode !== null) return
  // A SIGSTOPped process would never handle SIGTERM.
  proc.kill('SIGCONT')
  proc.kill('SIGTERM')
  await within(server.exited, 10_000, `stopping pid ${proc.pid}`).catch(async (error: unknown) => {
    proc.kill('SIGKILL')
    await server.exited
    throw error
  })
}

class ProcessNode implements ClusterNode {
  constructor(
    readonly id: string,
    private readonly env: Record<string, string>,
    private server: ServerProcess,
    private readonly moved: () => Promise<void>,
  ) {}

  static async start(
    id: string,
    env: Record<string, string>,
    moved: () => Promise<void>,
  ): Promise<ProcessNode> {
    return new ProcessNode(id, env, await spawnServer(env), moved)
  }

  get port() {
    return this.server.port
  }
  get url() {
    return this.server.url
  }
  get wsUrl() {
    return this.server.wsUrl
  }
  get pid() {
    return this.server.proc.pid
  }
  get lines() {
    return this.server.lines
  }
  get exited() {
    return this.server.exited
  }
  get running() {
    return this.server.proc.exitCode === null && this.server.proc.signalCode === null
  }

  kill(signal: NodeJS.Signals): void {
    this.server.proc.kill(signal)
  }

  async restart(): Promise<void> {
    await terminate(this.server)
    this.server = await spawnServer(this.env)
    await this.moved()
  }

  stop(): Promise<void> {
    return terminate(this.server)
  }
}

/** Runs every step, then throws the first failure (cleanup must not stop at one). */
async function allOf(steps: Array<() => Promise<void>>): Promise<void> {
  const results = await Promise.allSettled(steps.map((step) => step()))
  const failed = results.find((result) => result.status === 'rejected')
  if (failed) throw failed.reason
}

/**
 * Real server processes (`bun src/main.ts`) sharing a fresh PostgreSQL
 * database and a fresh Redis key prefix, each on its own ephemeral port;
 * optionally nginx in front. Started together, as a deployment would start
 * them (migrations at start must cope).
 */
export async function startCluster({
  nodes: count = 3,
  env = {},
  nginx: withNginx = false,
}: ClusterOptions = {}): Promise<Cluster> {
  const database = await freshDatabase()
  const redis = freshRedisPrefix()
  const dir = tempDir()
  const adminToken = `cluster-admin-${crypto.randomUUID()}`
  const started: ProcessNode[] = []
  let nginx: Nginx | undefined

  const stop = () =>
    allOf([
      ...started.map((node) => () => node.stop()),
      async () => {
        await nginx?.stop()
      },
    ]).finally(() => allOf([() => database.drop(), () => redis.clean(), async () => dir.remove()]))

  const upstreams = () => started.map((node) => ({ host: '127.0.0.1', port: node.port }))
  const moved = async () => {
    await nginx?.setUpstreams(upstreams())
  }

  try {
    const ids = Array.from({ length: count }, (_, i) => `node-${i + 1}`)
    const spawned = await Promise.allSettled(
      ids.map((id) =>
        ProcessNode.start(
          id,
          {
            DATABASE_URL: database.url,
            REDIS_URL: redis.url,
            REDIS_PREFIX: redis.prefix,
            // Unused with DATABASE_URL; keeps a process that ignored it off ./data.
            DB_PATH: join(dir.path, `${id}.db`),
            ADMIN_TOKEN: adminToken,
            LOG_LEVEL: 'info',
            // Guard against oven-sh/bun #33627 (wrong rows under SQL pipelining).
            BUN_FEATURE_FLAG_DISABLE_SQL_AUTO_PIPELINING: '1',
            ...(withNginx ? { TRUST_PROXY: '1' } : {}),
            ...env,
            NODE_ID: id,
          },
          moved,
        ),
      ),
    )
    for (const result of spawned) if (result.status === 'fulfilled') started.push(result.value)
    const failed = spawned.find((result) => result.status === 'rejected')
    if (failed) throw failed.reason
    if (withNginx) nginx = await startNginx(upstreams())
  } catch (error) {
    await stop().catch(() => {})
    throw error
  }

  return {
    nodes: started,
    databaseUrl: database.url,
    redis: { url: redis.url, prefix: redis.prefix },
    adminToken,
    adminHeaders: { Authorization: `Bearer ${adminToken}` },
    nginx,
    stop,
  }
}
