import { describe, expect, test } from 'bun:test'
import { createSecretKey } from 'node:crypto'
import { join } from 'node:path'
import { SignJWT } from 'jose'
import pino from 'pino'
import { LogLimiter } from '../src/observability/log-limiter.ts'
import {
  eventually,
  getJson,
  spawnServer,
  startServer,
  TestClient,
  tempDir,
  upgradeRequest,
} from './helpers.ts'

interface LogLine {
  msg: string
  level: number
  repeated?: number
  [field: string]: unknown
}

/** A real pino logger writing into an array. */
function memoryLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = []
  const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) })
  return { logger, lines }
}

const parse = (lines: string[]): LogLine[] =>
  lines.filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as LogLine)

describe('log limiting', () => {
  test('the first line of a key is written at once, repeats become one summary per interval', () => {
    const { logger, lines } = memoryLogger()
    const limiter = new LogLimiter(logger, 60_000)
    for (let i = 0; i < 500; i++) limiter.warn('429:10.0.0.1', { remote_address: '10.0.0.1' }, 'x')
    limiter.warn('429:10.0.0.2', { remote_address: '10.0.0.2' }, 'x')
    expect(lines.map((l) => [l.msg, l.remote_address])).toEqual([
      ['x', '10.0.0.1'],
      ['x', '10.0.0.2'],
    ])
    limiter.flush()
    expect(lines.slice(2)).toMatchObject([
      { msg: 'x (repeated)', remote_address: '10.0.0.1', repeated: 499, level: 40 },
    ])
    // Still repeating: the next interval is one summary, no first line.
    for (let i = 0; i < 3; i++) limiter.warn('429:10.0.0.1', { remote_address: '10.0.0.1' }, 'x')
    limiter.flush()
    expect(lines.slice(3)).toMatchObject([{ msg: 'x (repeated)', repeated: 3 }])
    // Quiet for an interval: forgotten, the next occurrence is written at once.
    limiter.flush()
    limiter.flush()
    limiter.warn('429:10.0.0.1', { remote_address: '10.0.0.1' }, 'x')
    expect(lines.slice(4)).toMatchObject([{ msg: 'x', remote_address: '10.0.0.1' }])
    limiter.stop()
    expect(lines).toHaveLength(5)
  })

  test('past maxKeys, new sources share one entry; interval 0 writes everything', () => {
    const { logger, lines } = memoryLogger()
    const limiter = new LogLimiter(logger, 60_000, 10)
    for (let i = 0; i < 1000; i++) limiter.warn(`k${i}`, { i }, 'x')
    expect(lines).toHaveLength(11)
    expect(lines[10]).toMatchObject({ i: 10 })
    limiter.stop()
    expect(lines.slice(11)).toMatchObject([
      { msg: 'x (repeated)', other_sources: true, repeated: 989 },
    ])

    const off = memoryLogger()
    const unlimited = new LogLimiter(off.logger, 0)
    for (let i = 0; i < 5; i++) unlimited.warn('k', {}, 'x')
    expect(off.lines).toHaveLength(5)
  })

  test('the summary is written when the interval ends', async () => {
    const { logger, lines } = memoryLogger()
    const limiter = new LogLimiter(logger, 50)
    for (let i = 0; i < 10; i++) limiter.warn('k', {}, 'x')
    await eventually(() => expect(lines[1]).toMatchObject({ msg: 'x (repeated)', repeated: 9 }))
    limiter.stop()
  })

  test('1,000 refused upgrades and 300 forbidden subscribes log a few lines with the counts', async () => {
    const secret = 'growth-test-secret-long-enough-for-hs256'
    // One interval for the whole test, however slow the machine: the counts are exact.
    const server = await spawnServer({
      DB_PATH: ':memory:',
      AUTH_SECRET: secret,
      LOG_REPEAT_INTERVAL: '600',
    })
    for (let batch = 0; batch < 20; batch++)
      await Promise.all(
        Array.from({ length: 50 }, async () => {
          const refused = await upgradeRequest(server, '?user_id=mallory')
          expect(refused.status).toBe(401)
          await refused.body?.cancel()
        }),
      )
    const token = await new SignJWT({ channels: ['allowed'], publish: [] })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('mallory')
      .setExpirationTime('1h')
      .sign(createSecretKey(Buffer.from(secret)))
    const client = await TestClient.connect(server, { token })
    const replies = await Promise.all(
      Array.from({ length: 300 }, () =>
        client.request({ type: 'subscribe', collection: 'secret' }),
      ),
    )
    expect(replies.every((reply) => reply.error?.code === 403)).toBe(true)
    await client.close()
    server.proc.kill('SIGTERM')
    await server.exited

    const lines = parse(server.lines)
    const refused = lines.filter((l) => l.msg.startsWith('connection refused'))
    expect(refused).toMatchObject([
      { msg: 'connection refused', code: 401, remote_address: '127.0.0.1' },
      { msg: 'connection refused (repeated)', code: 401, repeated: 999 },
    ])
    const forbidden = lines.filter((l) => l.msg.startsWith('refused'))
    expect(forbidden).toMatchObject([
      { msg: 'refused', code: 403, user_id: 'mallory', type: 'subscribe' },
      { msg: 'refused (repeated)', code: 403, repeated: 299 },
    ])
  })
})

describe('sessions table', () => {
  test('churn keeps at most SESSION_MAX_ROWS rows: the oldest ended go first, live ones stay', async () => {
    const dir = tempDir()
    const server = startServer({ DB_PATH: join(dir.path, 'sessions.db'), SESSION_MAX_ROWS: '100' })
    try {
      const keeper = await TestClient.connect(server, { user_id: 'keeper' })
      const rounds: string[][] = []
      for (let round = 0; round < 20; round++) {
        const batch = await Promise.all(
          Array.from({ length: 20 }, () => TestClient.connect(server, { user_id: 'churner' })),
        )
        rounds.push(batch.map((client) => client.connectionId))
        await Promise.all(batch.map((client) => client.close()))
        // Ends are stored about once a second: wait for this round's.
        await eventually(async () => {
          const { body } = await getJson(server, '/api/ws/sessions?user_id=churner&limit=1000')
          expect(body.sessions.filter((s: { live: boolean }) => s.live)).toHaveLength(0)
        })
      }
      // The oldest session of all, still live, was never pruned.
      const kept = await getJson(server, '/api/ws/sessions?user_id=keeper')
      expect(kept.body.sessions).toMatchObject([{ live: true }])
      const churned = await getJson(server, '/api/ws/sessions?user_id=churner&limit=1000')
      expect(churned.body.sessions).toHaveLength(99)
      // keeper + 99 churned sessions make the cap; the ones that ended first went.
      const ids = new Set(
        churned.body.sessions.map((s: { connection_id: string }) => s.connection_id),
      )
      expect(rounds.at(-1)?.every((id) => ids.has(id))).toBe(true)
      expect(rounds[0]?.some((id) => ids.has(id))).toBe(false)
      await keeper.close()
    } finally {
      await server.close()
      dir.remove()
    }
  })
})
