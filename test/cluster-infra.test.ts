import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { SQL } from 'bun'
import Redis from 'ioredis'
import {
  eventually,
  getJson,
  spawnServer,
  startServer,
  TestClient,
  type TestServer,
  tempDir,
  uniqueName,
  upgradeRequest,
  within,
} from './helpers.ts'
import { type Cluster, startCluster } from './support/cluster.ts'
import { docsExample, NGINX, type Nginx, startNginx } from './support/nginx.ts'
import {
  needsServices,
  POSTGRES_ADMIN_URL,
  REDIS_URL,
  requireServices,
} from './support/services.ts'

await requireServices()

const root = join(import.meta.dir, '..')
const upstreamOf = (server: { port: number }) => ({ host: '127.0.0.1', port: server.port })

/** The upstream field of an access log line: `127.0.0.1:4001`, or `a, b` when nginx tried a first. */
function upstreamField(line: string): string {
  const match = line.match(/upstream=(.*) upstream_status=/)
  if (!match?.[1]) throw new Error(`no upstream in ${line}`)
  return match[1]
}

/** The access log lines of requests whose target contains `marker`, once there are `count`. */
function logged(nginx: Nginx, marker: string, count: number): Promise<string[]> {
  return eventually(() => {
    const lines = nginx.accessLog().filter((line) => line.includes(marker))
    expect(lines).toHaveLength(count)
    return lines
  })
}

describe('nginx in front of two servers', () => {
  let a: TestServer
  let b: TestServer
  let nginx: Nginx
  // TRUST_PROXY=2 reads the entry left of the one nginx appends: what the client sent.
  const env = { TRUST_PROXY: '2', ADMIN_TOKEN: 'admin' }

  beforeAll(async () => {
    a = startServer(env)
    b = startServer(env)
    nginx = await startNginx([upstreamOf(a), upstreamOf(b)])
  })
  afterAll(async () => {
    await nginx.stop()
    await a.close()
    await b.close()
    expect(existsSync(nginx.prefix)).toBe(false)
  })

  test('HTTP requests alternate between the two', async () => {
    const marker = uniqueName('rr')
    for (let i = 0; i < 4; i++) {
      const response = await fetch(`${nginx.url}/healthz?${marker}=${i}`)
      expect(response.status).toBe(200)
      expect(await response.json()).toEqual({ status: 'ok' })
    }
    const served = (await logged(nginx, marker, 4)).map(upstreamField)
    const first = served[0] === `127.0.0.1:${a.port}` ? a : b
    const second = first === a ? b : a
    expect(served).toEqual([first, second, first, second].map((s) => `127.0.0.1:${s.port}`))
  })

  test('WebSocket upgrades alternate too, and frames flow both ways through nginx', async () => {
    const clients: TestClient[] = []
    // One at a time: the order of the upgrades is the order of nginx's picks.
    for (let i = 0; i < 4; i++) clients.push(await TestClient.connect(nginx))
    try {
      const on = clients.map((client) => {
        const holders = [a, b].filter((server) => server.hub.getById(client.connectionId))
        expect(holders).toHaveLength(1)
        return holders[0]
      })
      expect(on[1]).not.toBe(on[0] as TestServer)
      expect(on[2]).toBe(on[0] as TestServer)
      expect(on[3]).toBe(on[1] as TestServer)
      for (const client of clients) {
        const reply = await client.ok({ type: 'subscribe', collection: 'record_tbl' })
        expect(reply.data.channel).toBe('record_tbl')
      }
    } finally {
      await Promise.all(clients.map((client) => client.close()))
    }
  })

  test('X-Forwarded-For: nginx appends the peer it saw to what the client sent', async () => {
    const user = uniqueName('xff')
    const upgrade = await upgradeRequest(nginx, `?user_id=${user}`, {
      'X-Forwarded-For': '198.51.100.1, 203.0.113.7',
    })
    expect(upgrade.status).toBe(101)
    // Passed on unchanged, the second from the right would be 198.51.100.1;
    // replaced by nginx's peer, or dropped, the loopback address.
    const address = await eventually(async () => {
      for (const server of [a, b]) {
        const { status, body } = await getJson(server, '/api/ws/online', {
          Authorization: 'Bearer admin',
        })
        if (status !== 200) throw new Error(`/api/ws/online: ${status} ${JSON.stringify(body)}`)
        const entry = body.online.find((u: { user_id: string }) => u.user_id === user)
        if (entry) return entry.sessions[0].remote_address as string
      }
      throw new Error(`${user} is on neither server`)
    })
    expect(address).toBe('203.0.113.7')
  })
})

test('a killed upstream: its sockets close, and the next requests reach the live one; it is skipped after one failure', async () => {
  const dir = tempDir()
  const doomed = await spawnServer({ DB_PATH: join(dir.path, 'doomed.db') })
  const live = startServer()
  // The doomed process first: nginx's round robin starts at the first server.
  const nginx = await startNginx([upstreamOf(doomed), upstreamOf(live)])
  try {
    const before = [await TestClient.connect(nginx), await TestClient.connect(nginx)]
    const onLive = before.filter((client) => live.hub.getById(client.connectionId))
    expect(onLive).toHaveLength(1)
    const onDoomed = before.find((client) => !onLive.includes(client)) as TestClient

    doomed.proc.kill('SIGKILL')
    await doomed.exited
    await within(onDoomed.closed, 5000, 'the socket on the killed process closing')

    const marker = uniqueName('after_kill')
    const after: TestClient[] = []
    for (let i = 0; i < 3; i++) {
      after.push(await TestClient.connect(nginx, { user_id: `${marker}_${i}` }))
      expect((await fetch(`${nginx.url}/healthz?${marker}=${i}`)).status).toBe(200)
    }
    for (const client of after) expect(live.hub.getById(client.connectionId)).toBeDefined()
    await Promise.all([...after, ...before].map((client) => client.close()))

    // Round robin's next pick was the dead process: the first request tried it,
    // then the live one; max_fails=1 kept the other five off it.
    const served = (await logged(nginx, marker, 6)).map(upstreamField)
    const dead = `127.0.0.1:${doomed.port}`
    const alive = `127.0.0.1:${live.port}`
    expect(served.filter((upstream) => upstream.includes(dead))).toEqual([`${dead}, ${alive}`])
    expect(served.filter((upstream) => upstream === alive)).toHaveLength(5)
  } finally {
    doomed.proc.kill('SIGKILL')
    await nginx.stop()
    await live.close()
    dir.remove()
  }
})

test('setUpstreams reloads: new requests go to the new upstream, an open socket stays on the old one', async () => {
  const first = startServer()
  const second = startServer()
  const nginx = await startNginx([upstreamOf(first)])
  try {
    const old = await TestClient.connect(nginx)
    expect(first.hub.getById(old.connectionId)).toBeDefined()

    await nginx.setUpstreams([upstreamOf(second)])
    const fresh = await TestClient.connect(nginx)
    expect(second.hub.getById(fresh.connectionId)).toBeDefined()
    await old.ok({ type: 'ping' })
    expect(first.hub.getById(old.connectionId)).toBeDefined()
    await Promise.all([old.close(), fresh.close()])
  } finally {
    await nginx.stop()
    await first.close()
    await second.close()
  }
})

describe('docs/nginx-cluster.conf', () => {
  test('is the config the tests run (for three processes on :8080)', () => {
    expect(readFileSync(join(root, 'docs/nginx-cluster.conf'), 'utf8')).toBe(docsExample())
  })

  test('nginx accepts it', async () => {
    const prefix = mkdtempSync(join(tmpdir(), 'teable-realtime-nginx-check-'))
    try {
      const check = Bun.spawn(
        [
          NGINX,
          '-t',
          '-q',
          '-e',
          'stderr',
          '-p',
          prefix,
          '-c',
          join(root, 'docs/nginx-cluster.conf'),
        ],
        { stdout: 'ignore', stderr: 'pipe' },
      )
      const code = await check.exited
      expect(await new Response(check.stderr).text()).toBe('')
      expect(code).toBe(0)
    } finally {
      rmSync(prefix, { recursive: true, force: true })
    }
  })
})

describe('which suites need PostgreSQL and Redis', () => {
  test('the cluster, store-contract and redis-broker files, and any file calling requireServices', () => {
    for (const path of [
      'test/cluster.test.ts',
      'test/cluster-failover.test.ts',
      'test/store-contract.test.ts',
      'test/redis-broker.test.ts',
    ])
      expect(needsServices(path, '')).toBe(true)
    expect(needsServices('test/intake.test.ts', 'await requireServices()\n')).toBe(true)
    for (const path of ['test/socket.test.ts', 'test/sub/cluster.test.ts', 'test/clustering.ts'])
      expect(needsServices(path, 'import { freshDatabase }')).toBe(false)
  })

  test('every suite that needs them by name calls requireServices, so none passes run alone without them', async () => {
    const unguarded: string[] = []
    for await (const path of new Bun.Glob('test/**/*.test.ts').scan({ cwd: root })) {
      const source = await Bun.file(join(root, path)).text()
      if (needsServices(path, '') && !source.includes('await requireServices()'))
        unguarded.push(path)
    }
    expect(unguarded).toEqual([])
  })
})

/** Runs a command in the project with the test services' addresses overridden; its exit code and output. */
async function run(argv: string[], env: Record<string, string>) {
  const proc = Bun.spawn(argv, {
    cwd: root,
    env: { ...process.env, ...env },
    stdout: 'pipe',
    stderr: 'pipe',
  })
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ])
  return { code, stdout, stderr }
}

describe('bun run test (scripts/test.ts)', () => {
  // Nothing listens on port 1: Redis "is down" for the runs below.
  const noRedis = { TEST_REDIS_URL: 'redis://127.0.0.1:1', REQUIRE_SERVICES: '' }
  const line = /skipped \(Redis not reachable at 127\.0\.0\.1:1\): (.*)\n/

  test('a service missing: runs the other suites, then names the ones it left out and why', async () => {
    const { code, stdout, stderr } = await run(['bun', 'scripts/test.ts', 'tokens.test'], noRedis)
    expect(code).toBe(0)
    expect(stderr).toContain('test/tokens.test.ts')
    const skipped = stderr.match(line)?.[1]?.split(', ')
    expect(skipped).toContain('test/cluster-infra.test.ts')
    expect(stdout + stderr).not.toContain('this suite needs PostgreSQL and Redis')
  })

  test('a service missing: a suite that needs it is not run even when asked for', async () => {
    const { code, stderr } = await run(['bun', 'scripts/test.ts', 'cluster-infra'], noRedis)
    expect(code).toBe(1)
    expect(stderr).toMatch(line)
    expect(stderr).not.toContain('this suite needs PostgreSQL and Redis')
  })

  test('REQUIRE_SERVICES=1 and a service missing: fails at once, naming it', async () => {
    const { code, stdout, stderr } = await run(['bun', 'scripts/test.ts', 'tokens.test'], {
      ...noRedis,
      REQUIRE_SERVICES: '1',
    })
    expect(code).toBe(1)
    expect(stderr).toMatch(
      /^REQUIRE_SERVICES=1: cannot run \(Redis not reachable at 127\.0\.0\.1:1\): .*test\/cluster-infra\.test\.ts/,
    )
    expect(stdout + stderr).not.toContain('tokens.test.ts')
  })

  test('both services up: no line, and bun test’s exit code', async () => {
    const passing = await run(['bun', 'scripts/test.ts', 'tokens.test'], {})
    expect(passing.code).toBe(0)
    expect(passing.stderr).not.toContain('skipped')
    const nothing = await run(['bun', 'scripts/test.ts', 'no-such-suite'], {})
    expect(nothing.code).toBe(1)
    expect(nothing.stderr).not.toContain('skipped')
  })

  test('a suite that needs the services, run directly without them, fails with the reason', async () => {
    const { code, stderr } = await run(['bun', 'test', './test/cluster-infra.test.ts'], noRedis)
    expect(code).toBe(1)
    expect(stderr).toContain(
      'Redis not reachable at 127.0.0.1:1: this suite needs PostgreSQL and Redis',
    )
    expect(stderr).toContain('0 pass')
  })
})

describe('startCluster', () => {
  let cluster: Cluster

  beforeAll(async () => {
    cluster = await startCluster({ nodes: 2, nginx: true, env: { HEARTBEAT_INTERVAL: '5' } })
  })
  afterAll(() => cluster.stop())

  /** A process's environment as the kernel holds it. */
  const environment = (pid: number) =>
    new Map(
      readFileSync(`/proc/${pid}/environ`, 'utf8')
        .split('\0')
        .filter(Boolean)
        .map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]),
    )

  test('each process has the cluster environment, its own NODE_ID and port', async () => {
    expect(cluster.nodes.map((node) => node.id)).toEqual(['node-1', 'node-2'])
    expect(new Set(cluster.nodes.map((node) => node.port)).size).toBe(2)
    for (const node of cluster.nodes) {
      const env = environment(node.pid)
      expect(env.get('NODE_ID')).toBe(node.id)
      expect(env.get('DATABASE_URL')).toBe(cluster.databaseUrl)
      expect(env.get('REDIS_URL')).toBe(cluster.redis.url)
      expect(env.get('REDIS_PREFIX')).toBe(cluster.redis.prefix)
      expect(env.get('BUN_FEATURE_FLAG_DISABLE_SQL_AUTO_PIPELINING')).toBe('1')
      expect(env.get('TRUST_PROXY')).toBe('1')
      expect(env.get('ADMIN_TOKEN')).toBe(cluster.adminToken)
      expect(env.get('HEARTBEAT_INTERVAL')).toBe('5')
      expect((await fetch(`${node.url}/healthz`)).status).toBe(200)
    }
    expect(cluster.databaseUrl).toStartWith(
      POSTGRES_ADMIN_URL.slice(0, POSTGRES_ADMIN_URL.lastIndexOf('/')),
    )
  })

  test('a killed node restarts with the same NODE_ID on a new process, and nginx follows it', async () => {
    const node = cluster.nodes[0]
    if (!node) throw new Error('no node')
    const pid = node.pid
    node.kill('SIGKILL')
    await node.exited
    expect(node.running).toBe(false)
    await node.restart()
    expect(node.running).toBe(true)
    expect(node.pid).not.toBe(pid)
    expect(environment(node.pid).get('NODE_ID')).toBe('node-1')

    const nginx = cluster.nginx as Nginx
    const marker = uniqueName('restarted')
    for (let i = 0; i < 4; i++)
      expect((await fetch(`${nginx.url}/healthz?${marker}=${i}`)).status).toBe(200)
    const served = new Set((await logged(nginx, marker, 4)).map(upstreamField))
    expect(served).toEqual(new Set(cluster.nodes.map((n) => `127.0.0.1:${n.port}`)))
  })

  test('stop ends the processes and nginx, drops the database and deletes the Redis keys', async () => {
    const own = await startCluster({ nodes: 1, nginx: true })
    const redis = new Redis(REDIS_URL)
    const admin = new SQL(POSTGRES_ADMIN_URL, { max: 1 })
    try {
      await redis.set(`${own.redis.prefix}probe`, '1')
      const name = new URL(own.databaseUrl).pathname.slice(1)
      const node = own.nodes[0] as Cluster['nodes'][number]
      const prefix = (own.nginx as Nginx).prefix
      await own.stop()
      expect(node.running).toBe(false)
      expect(existsSync(prefix)).toBe(false)
      expect(await redis.keys(`${own.redis.prefix}*`)).toEqual([])
      expect(await admin`SELECT 1 FROM pg_database WHERE datname = ${name}`).toHaveLength(0)
    } finally {
      redis.disconnect()
      await admin.close()
    }
  })
})
