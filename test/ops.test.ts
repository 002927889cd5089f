import { Database } from 'bun:sqlite'
import { describe, expect, test } from 'bun:test'
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  eventually,
  getJson,
  postJson,
  spawnServer,
  startServer,
  startServerOnTestStore,
  TestClient,
  tempDir,
} from './helpers.ts'

/** The value of one sample line of the Prometheus text, or undefined. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`${name}${labels} `) || (labels === '' && l.startsWith(`${name} `)))
  return line === undefined ? undefined : Number(line.split(' ').at(-1))
}

describe('metrics', () => {
  test('values match a scripted scenario', async () => {
    const server = await startServerOnTestStore()
    try {
      const a = await TestClient.connect(server, { user_id: 'ma' })
      const b = await TestClient.connect(server, { user_id: 'mb' })
      await a.ok({ type: 'subscribe', collection: 'record_m' })
      await b.ok({ type: 'subscribe', collection: 'record_m', since: { epoch: 'old', offset: 0 } })
      for (let i = 0; i < 3; i++)
        await a.ok({
          type: 'submit',
          collection: 'record_m',
          document: 'd',
          op: [{ p: ['n'], oi: i }],
        })
      await a.request({ type: 'ping' })
      await a.request({ type: 'nope' })
      await b.collect(3, (m) => m.type === 'op')
      await b.close()
      await eventually(async () =>
        expect((await getJson(server, '/api/ws/stats')).body.connections).toBe(1),
      )

      const response = await fetch(`${server.url}/metrics`)
      expect(response.status).toBe(200)
      expect(response.headers.get('content-type')).toContain('text/plain')
      const text = await response.text()
      const p = 'teable_realtime_'
      expect(sample(text, `${p}connections`)).toBe(1)
      expect(sample(text, `${p}users`)).toBe(1)
      expect(sample(text, `${p}channels`)).toBe(1)
      expect(sample(text, `${p}subscriptions`)).toBe(1)
      expect(sample(text, `${p}history_rows`)).toBe(3)
      expect(sample(text, `${p}messages_in_total`, '{type="subscribe"}')).toBe(2)
      expect(sample(text, `${p}messages_in_total`, '{type="submit"}')).toBe(3)
      expect(sample(text, `${p}messages_in_total`, '{type="invalid"}')).toBe(1)
      expect(sample(text, `${p}messages_out_total`, '{type="op"}')).toBe(3)
      expect(sample(text, `${p}errors_total`, '{code="400"}')).toBe(1)
      expect(sample(text, `${p}disconnects_total`, '{reason="client_close"}')).toBe(1)
      expect(sample(text, `${p}replays_total`, '{recovered="false"}')).toBe(1)
      expect(sample(text, `${p}submit_ack_seconds_count`)).toBe(3)
      expect(sample(text, `${p}publish_to_fanout_seconds_count`)).toBe(3)
      expect(sample(text, `${p}store_commit_seconds_count`)).toBe(3)
      expect(sample(text, `${p}process_resident_memory_bytes`)).toBeGreaterThan(0)
      // Counters keep counting across scrapes.
      await a.request({ type: 'ping' })
      expect(
        sample(
          await (await fetch(`${server.url}/metrics`)).text(),
          `${p}messages_in_total`,
          '{type="ping"}',
        ),
      ).toBe(2)
      // No label carries a channel or a user.
      expect(text).not.toContain('record_m')
      expect(text).not.toContain('"ma"')
      await a.close()
    } finally {
      await server.close()
    }
  })

  test('/metrics and /admin are guarded like the server API; health is public', async () => {
    const server = await startServerOnTestStore({ ADMIN_TOKEN: 'ops-token' })
    try {
      expect((await fetch(`${server.url}/metrics`)).status).toBe(401)
      expect(
        (await fetch(`${server.url}/metrics`, { headers: { Authorization: 'Bearer ops-token' } }))
          .status,
      ).toBe(200)
      expect((await fetch(`${server.url}/admin`)).status).toBe(401)
      expect((await fetch(`${server.url}/admin?token=ops-token`)).status).toBe(200)
      expect(
        (
          await fetch(`${server.url}/admin/data`, {
            headers: { Authorization: 'Bearer ops-token' },
          })
        ).status,
      ).toBe(200)
      expect(await (await fetch(`${server.url}/healthz`)).json()).toEqual({ status: 'ok' })
      expect(await (await fetch(`${server.url}/readyz`)).json()).toEqual({ status: 'ready' })
    } finally {
      await server.close()
    }
  })
})

describe('health', () => {
  // Failed writes and a lost file make it 503: test/store-health.test.ts.
  test('/readyz: nothing else can take the store from the server, which stays ready and answers at once', async () => {
    const dir = tempDir()
    const dbPath = join(dir.path, 'r.db')
    const server = startServer({ DB_PATH: dbPath })
    const other = new Database(dbPath)
    try {
      // The server holds the file exclusively for its whole life (one process per DB_PATH).
      expect(() => other.exec('BEGIN EXCLUSIVE')).toThrow('database is locked')
      expect(() => other.query('SELECT COUNT(*) FROM meta').get()).toThrow('database is locked')
      const started = Date.now()
      const response = await fetch(`${server.url}/readyz`)
      expect(Date.now() - started).toBeLessThan(3000) // not BUSY_TIMEOUT (5 s): the probe never waits on a lock
      expect(response.status).toBe(200)
      expect((await fetch(`${server.url}/healthz`)).status).toBe(200)
    } finally {
      other.close()
      await server.close()
      dir.remove()
    }
  })
})

describe('logs', () => {
  test('JSON lines: connect and disconnect with user and reason at debug, refusals at warn, no tokens', async () => {
    const secret = 'log-test-secret-long-enough-for-hs256'
    const { SignJWT } = await import('jose')
    const { createSecretKey } = await import('node:crypto')
    const token = await new SignJWT({ channels: ['ok'] })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('logan')
      .setExpirationTime('1h')
      .sign(createSecretKey(Buffer.from(secret)))
    const server = await spawnServer({
      DB_PATH: ':memory:',
      AUTH_SECRET: secret,
      LOG_LEVEL: 'debug',
    })
    const client = await TestClient.connect(server, { token })
    expect((await client.request({ type: 'subscribe', collection: 'forbidden' })).error?.code).toBe(
      403,
    )
    client.send({ type: 'disconnect' })
    await client.closed
    const refused = await fetch(`${server.url}/api/ws/socket?token=${token}x`, {
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
      },
    })
    expect(refused.status).toBe(401)
    await eventually(() =>
      expect(server.lines.some((l) => l.includes('"msg":"disconnected"'))).toBe(true),
    )
    server.proc.kill('SIGTERM')
    await server.exited
    const lines = server.lines
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>)
    const connected = lines.find((l) => l.msg === 'connected')
    expect(connected).toMatchObject({ level: 20, user_id: 'logan' })
    expect(lines.find((l) => l.msg === 'disconnected')).toMatchObject({
      level: 20,
      user_id: 'logan',
      reason: 'client',
    })
    expect(lines.find((l) => l.msg === 'connection refused')).toMatchObject({
      level: 40,
      code: 401,
    })
    expect(server.lines.join('\n')).not.toContain(token.split('.')[2] as string)
    expect(server.lines.join('\n')).not.toContain(secret)
  })

  test('LOG_FORMAT=pretty prints for people', async () => {
    const proc = Bun.spawn(['bun', 'src/main.ts'], {
      cwd: join(import.meta.dir, '..'),
      env: {
        ...process.env,
        SOCKET_PORT: '0',
        HOST: '127.0.0.1',
        DB_PATH: ':memory:',
        LOG_FORMAT: 'pretty',
      },
      stdout: 'pipe',
    })
    const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader()
    let text = ''
    while (!text.includes('listening')) {
      const { value, done } = await reader.read()
      if (done) break
      text += new TextDecoder().decode(value)
    }
    proc.kill('SIGTERM')
    await proc.exited
    expect(text).toContain('INFO')
    expect(text).toContain('listening')
    expect(text.trim().startsWith('{')).toBe(false)
  })
})

describe('bun run start', () => {
  test("runs the bundled server from the caller's directory, stops on SIGTERM and removes its bundle and a killed start's", async () => {
    const work = mkdtempSync(join(tmpdir(), 'teable-realtime-start-test-'))
    const bundles = join(work, 'tmp')
    mkdirSync(bundles)
    try {
      // What a SIGKILLed start leaves: a bundle named with a pid that no longer runs.
      const gone = Bun.spawn(['true'])
      await gone.exited
      mkdirSync(join(bundles, `teable-realtime-start-${gone.pid}-dead`))
      const server = await spawnServer(
        // TMPDIR: where the start script puts its bundle, so the test can see it made and removed.
        { TMPDIR: bundles },
        { argv: ['bun', join(import.meta.dir, '..', 'scripts', 'start.ts')], cwd: work },
      )
      try {
        const made = readdirSync(bundles)
        expect(made).toHaveLength(1)
        expect(made[0]).toStartWith(`teable-realtime-start-${server.proc.pid}-`)
        // No DB_PATH: ./data/realtime.db of the directory it was started from.
        expect(statSync(join(work, 'data', 'realtime.db')).size).toBeGreaterThan(0)
        const client = await TestClient.connect(server)
        await client.ok({ type: 'subscribe', collection: 'record_start' })
        await postJson(server, '/api/ws/publish/record', {
          table_id: 'start',
          record_id: 'r1',
          operation: [{ p: ['f'], oi: 1 }],
        })
        expect((await client.next((m) => m.type === 'op')).data.op).toEqual([{ p: ['f'], oi: 1 }])
        await client.close()
        expect((await fetch(`${server.url}/swagger/assets/swagger-ui-bundle.js`)).status).toBe(200)
      } finally {
        server.proc.kill('SIGTERM')
        expect(await server.exited).toBe(0)
      }
      expect(server.lines.some((line) => line.includes('"msg":"stopped"'))).toBe(true)
      expect(readdirSync(bundles)).toEqual([])
    } finally {
      rmSync(work, { recursive: true, force: true })
    }
  })
})

describe('single binary', () => {
  test('builds, starts in an empty directory, creates its database and serves sockets, swagger and metrics', async () => {
    const work = mkdtempSync(join(tmpdir(), 'teable-realtime-binary-'))
    const binary = join(work, 'teable-realtime')
    try {
      const build = Bun.spawnSync(
        ['bun', 'build', '--compile', '--minify', 'src/main.ts', '--outfile', binary],
        {
          cwd: join(import.meta.dir, '..'),
        },
      )
      expect(build.exitCode).toBe(0)
      expect(statSync(binary).size).toBeGreaterThan(1_000_000)
      const empty = mkdtempSync(join(work, 'run-'))
      // No DB_PATH: it creates ./data/realtime.db in the empty directory.
      const server = await spawnServer({}, { argv: [binary], cwd: empty })
      const { proc } = server
      try {
        expect(statSync(join(empty, 'data', 'realtime.db')).size).toBeGreaterThan(0)
        const client = await TestClient.connect(server)
        await client.ok({ type: 'subscribe', collection: 'record_bin' })
        const published = await postJson(server, '/api/ws/publish/record', {
          table_id: 'bin',
          record_id: 'r1',
          operation: [{ p: ['f'], oi: 1 }],
        })
        expect(published.body).toEqual({ v: 0, offset: 1 })
        expect((await client.next((m) => m.type === 'op')).data.op).toEqual([{ p: ['f'], oi: 1 }])
        await client.close()
        const swagger = await fetch(`${server.url}/swagger`)
        expect(swagger.status).toBe(200)
        expect((await fetch(`${server.url}/swagger/assets/swagger-ui-bundle.js`)).status).toBe(200)
        const metrics = await (await fetch(`${server.url}/metrics`)).text()
        expect(metrics).toContain('teable_realtime_messages_out_total{type="op"} 1')
      } finally {
        proc.kill('SIGTERM')
        expect(await server.exited).toBe(0)
      }
    } finally {
      rmSync(work, { recursive: true, force: true })
    }
  })
})
