import { afterAll, afterEach, describe, expect, test } from 'bun:test'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import Redis from 'ioredis'
import { loadConfig } from '../src/config.ts'
import { createLogger } from '../src/observability/logger.ts'
import { type RealtimeServer, startServer } from '../src/server.ts'
import {
  eventually,
  getJson,
  postJson,
  TEST_LIMITS,
  TestClient,
  tempDir,
  uniqueName,
} from './helpers.ts'
import { freshRedisPrefix, requireServices } from './support/services.ts'

await requireServices()

const redisKeys = freshRedisPrefix()
const redis = new Redis(redisKeys.url)
afterAll(async () => {
  redis.disconnect()
  await redisKeys.clean()
})

interface IntakeServer {
  server: RealtimeServer
  url: string
  wsUrl: string
  stream: string
  dbPath: string
  close(): Promise<void>
}

const open: IntakeServer[] = []
afterEach(async () => {
  for (const server of open.splice(0)) await server.close()
})

/** One SQLite process consuming a fresh stream under the test's Redis prefix. */
async function intakeServer(env: Record<string, string> = {}): Promise<IntakeServer> {
  const dir = tempDir()
  const stream = `${redisKeys.prefix}${uniqueName('intake')}`
  const dbPath = join(dir.path, 'realtime.db')
  const config = loadConfig({
    SOCKET_PORT: '0',
    HOST: '127.0.0.1',
    DB_PATH: dbPath,
    LOG_LEVEL: 'silent',
    REDIS_URL: redisKeys.url,
    REDIS_PREFIX: redisKeys.prefix,
    INTAKE_STREAM: stream,
    INTAKE_RETRY_AFTER: '0.2',
    ...TEST_LIMITS,
    ...env,
  })
  const server = await startServer(config, createLogger(config))
  const handle = {
    server,
    url: server.url,
    wsUrl: `ws://127.0.0.1:${server.port}/api/ws/socket`,
    stream,
    dbPath,
    async close() {
      await server.stop()
      dir.remove()
    },
  }
  open.push(handle)
  return handle
}

const add = (stream: string, route: string, body: unknown) =>
  redis.xadd(
    stream,
    '*',
    'route',
    route,
    'body',
    typeof body === 'string' ? body : JSON.stringify(body),
  ) as Promise<string>

interface Status {
  length: number
  pending: number
  dead: number
  lag: number
}
interface Dead {
  id: string
  source_id: string
  route: string
  body: string
  error: { code: number; message: string }
  attempts: number
}

const status = async (s: IntakeServer) => (await getJson(s, '/api/ws/intake')).body as Status
const deadLetters = async (s: IntakeServer) =>
  ((await getJson(s, '/api/ws/intake/dead')).body as { entries: Dead[] }).entries

/** Waits until every entry is delivered and acknowledged. */
const drained = (s: IntakeServer) =>
  eventually(async () => {
    const now = await status(s)
    expect(now.lag).toBe(0)
    expect(now.pending).toBe(0)
    return now
  }, 10_000)

async function history(s: IntakeServer, channel: string) {
  const { body } = await getJson(s, `/api/ws/history?channel=${channel}&limit=1000`)
  return (body as { messages: Array<{ type: string; data: Record<string, unknown> }> }).messages
}

describe('intake queue on one SQLite process', () => {
  test('entries apply and fan out exactly like their REST twins', async () => {
    const s = await intakeServer()
    const table = uniqueName('tbl')
    const collection = `record_${table}`
    const client = await TestClient.connect(s, { user_id: 'ivy' })
    await client.ok({ type: 'subscribe', collection })

    const create = [{ p: ['fields'], oi: { n: 0 } }]
    await postJson(s, '/api/ws/publish/record', {
      table_id: table,
      record_id: 'rec1',
      operation: create,
    })
    await add(s.stream, 'publish/record', {
      table_id: table,
      record_id: 'rec1',
      operation: [{ p: ['fields', 'n'], na: 5 }],
    })
    await add(s.stream, 'broadcast/channel', { channel: collection, message: { kind: 'reload' } })
    await add(s.stream, 'broadcast/user', { user_id: 'ivy', message: { notice: 'hi' } })
    await drained(s)

    const op = await client.next((m) => m.type === 'op' && m.data.v === 1)
    expect(op.data.op).toEqual([{ p: ['fields', 'n'], na: 5 }])
    const reload = await client.next(
      (m) => m.type === 'message' && (m.data.message as { kind?: string })?.kind === 'reload',
    )
    expect(reload.data.offset).toBe(3)
    await client.next(
      (m) => m.type === 'message' && (m.data.message as { notice?: string })?.notice === 'hi',
    )
    const stored = await history(s, collection)
    expect(stored.map((m) => m.type)).toEqual(['op', 'op', 'message'])
    expect(stored[1]?.data.source).toBe('server')
  })

  test('the same entry delivered again (group rewound) has no second effect', async () => {
    const s = await intakeServer()
    const table = uniqueName('tbl')
    for (let i = 0; i < 20; i++)
      await add(s.stream, 'publish/document', {
        collection: `record_${table}`,
        document: 'doc',
        operation: [{ p: ['n'], oi: i }],
      })
    await drained(s)
    expect(await history(s, `record_${table}`)).toHaveLength(20)
    // Every entry is delivered again, as after a crash between commit and XACK.
    await redis.xgroup('SETID', s.stream, 'teable-realtime', '0')
    await drained(s)
    const ops = await history(s, `record_${table}`)
    expect(ops).toHaveLength(20)
    expect(ops.map((m) => (m.data.op as Array<{ oi: number }>)[0]?.oi)).toEqual(
      Array.from({ length: 20 }, (_, i) => i),
    )
  })

  test('poison entries are dead-lettered at once with the REST error; redriven after a fix, applied', async () => {
    const s = await intakeServer()
    const table = uniqueName('tbl')
    const missingPath = {
      collection: `record_${table}`,
      document: 'doc',
      operation: [{ p: ['a', 'b'], oi: 1 }],
    }
    const rest = await postJson(s, '/api/ws/publish/document', {
      ...missingPath,
      document: 'other',
    })
    const badBody = { collection: `record_${table}`, document: 'doc', operation: 'nope' }
    const restBad = await postJson(s, '/api/ws/publish/document', badBody)
    // A snapshot without `a`: the op cannot apply.
    const client = await TestClient.connect(s)
    await client.ok({
      type: 'submit',
      collection: `record_${table}`,
      document: 'doc',
      create: { data: { x: 1 } },
    })
    const unknownRoute = await add(s.stream, 'publish/nothing', {})
    const invalid = await add(s.stream, 'publish/document', badBody)
    const inapplicable = await add(s.stream, 'publish/document', missingPath)
    await drained(s)
    const dead = await deadLetters(s)
    expect(dead.map((d) => d.source_id)).toEqual([unknownRoute, invalid, inapplicable])
    expect(dead[0]?.error).toEqual({ code: 404, message: 'no such route' })
    const { code, message } = (restBad.body as { error: Dead['error'] }).error
    expect(dead[1]?.error).toEqual({ code, message })
    expect(dead[1]?.error.code).toBe(400)
    expect(dead[2]?.error.code).toBe(400)
    expect(dead[2]?.attempts).toBe(1)
    expect(rest.status).toBe(200) // 'other' had no snapshot: an external document takes any op

    // Make the path exist, then redrive: applied.
    await postJson(s, '/api/ws/publish/document', {
      collection: `record_${table}`,
      document: 'doc',
      operation: [{ p: ['a'], oi: {} }],
    })
    const retried = await postJson(s, `/api/ws/intake/dead/${dead[2]?.id}/retry`, {})
    expect(retried.status).toBe(200)
    await drained(s)
    const docOps = (await history(s, `record_${table}.doc`)).filter((m) => m.type === 'op')
    expect(docOps.at(-1)?.data.op).toEqual([{ p: ['a', 'b'], oi: 1 }])
    expect((await deadLetters(s)).map((d) => d.source_id)).toEqual([unknownRoute, invalid])

    const removed = await fetch(`${s.url}/api/ws/intake/dead/${dead[0]?.id}`, { method: 'DELETE' })
    expect(removed.status).toBe(200)
    const again = await fetch(`${s.url}/api/ws/intake/dead/${dead[0]?.id}`, { method: 'DELETE' })
    expect(again.status).toBe(404)
    const unknown = await postJson(s, '/api/ws/intake/dead/1-0/retry', {})
    expect(unknown.status).toBe(404)
    expect((await status(s)).dead).toBe(1)
  })

  test('store unavailable: entries stay pending and are retried until it returns, in order', async () => {
    const s = await intakeServer({ INTAKE_MAX_ATTEMPTS: '1000' })
    const table = uniqueName('tbl')
    const files = [s.dbPath, `${s.dbPath}-wal`]
    await postJson(s, '/api/ws/publish/document', {
      collection: `record_${table}`,
      document: 'doc',
      operation: [{ p: ['n'], oi: 0 }],
    })
    spawnSync('chattr', ['+i', ...files])
    try {
      for (let i = 1; i <= 5; i++)
        await add(s.stream, 'publish/document', {
          collection: `record_${table}`,
          document: 'doc',
          operation: [{ p: ['n'], na: i }],
        })
      await eventually(async () => {
        const text = await (await fetch(`${s.url}/metrics`)).text()
        expect(text).toMatch(/teable_realtime_intake_retried_total [1-9]/)
      }, 5000)
      expect((await status(s)).pending).toBeGreaterThan(0)
    } finally {
      spawnSync('chattr', ['-i', ...files])
    }
    await drained(s)
    const ops = await history(s, `record_${table}.doc`)
    expect(ops.map((m) => (m.data.op as Array<{ na?: number }>)[0]?.na)).toEqual([
      undefined,
      1,
      2,
      3,
      4,
      5,
    ])
    expect((await status(s)).dead).toBe(0)
  })

  test('store unavailable past INTAKE_MAX_ATTEMPTS: dead-lettered with 503, redriven once it is back', async () => {
    const s = await intakeServer({ INTAKE_MAX_ATTEMPTS: '2' })
    const table = uniqueName('tbl')
    const files = [s.dbPath, `${s.dbPath}-wal`]
    await postJson(s, '/api/ws/publish/document', {
      collection: `record_${table}`,
      document: 'doc',
      operation: [{ p: ['n'], oi: 0 }],
    })
    spawnSync('chattr', ['+i', ...files])
    let dead: Dead[]
    try {
      await add(s.stream, 'publish/document', {
        collection: `record_${table}`,
        document: 'doc',
        operation: [{ p: ['n'], na: 1 }],
      })
      dead = await eventually(async () => {
        const entries = await deadLetters(s)
        expect(entries).toHaveLength(1)
        return entries
      }, 5000)
    } finally {
      spawnSync('chattr', ['-i', ...files])
    }
    expect(dead[0]?.error.code).toBe(503)
    expect(dead[0]?.attempts).toBe(2)
    await postJson(s, `/api/ws/intake/dead/${dead[0]?.id}/retry`, {})
    await drained(s)
    const ops = await history(s, `record_${table}.doc`)
    expect(ops.at(-1)?.data.op).toEqual([{ p: ['n'], na: 1 }])
  })

  test('the routes are in the OpenAPI document; counters and lag in /metrics', async () => {
    const s = await intakeServer()
    const spec = (await (await fetch(`${s.url}/swagger/json`)).json()) as {
      paths: Record<string, unknown>
    }
    expect(Object.keys(spec.paths).filter((p) => p.includes('intake'))).toEqual([
      '/api/ws/intake',
      '/api/ws/intake/dead',
      '/api/ws/intake/dead/{id}/retry',
      '/api/ws/intake/dead/{id}',
    ])
    await add(s.stream, 'broadcast/user', { user_id: 'nobody', message: 1 })
    await drained(s)
    const text = await (await fetch(`${s.url}/metrics`)).text()
    expect(text).toContain('teable_realtime_intake_processed_total 1')
    expect(text).toContain('teable_realtime_intake_lag 0')
  })
})
