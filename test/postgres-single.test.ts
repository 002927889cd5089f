import { afterAll, beforeAll, expect, test } from 'bun:test'
import { loadConfig } from '../src/config.ts'
import { createLogger } from '../src/observability/logger.ts'
import { type RealtimeServer, startServer } from '../src/server.ts'
import { TEST_LIMITS, TestClient, uniqueName } from './helpers.ts'
import { freshDatabase, requireServices } from './support/services.ts'

// Run by `bun run test` when PostgreSQL answers (it names this file otherwise).
await requireServices()

// PostgreSQL without Redis (one process): a document subscribe answered while a
// batch is between running its jobs and COMMIT reads the batch's uncommitted,
// in-place-mutated cache (DocumentStore.read with shared=false): the reply's v
// already counts an op that is then delivered live to the subscriber.
let db: Awaited<ReturnType<typeof freshDatabase>>
let server: RealtimeServer
let wsUrl: string
beforeAll(async () => {
  db = await freshDatabase()
  const config = loadConfig({
    SOCKET_PORT: '0',
    HOST: '127.0.0.1',
    DATABASE_URL: db.url,
    LOG_LEVEL: 'silent',
    ...TEST_LIMITS,
  })
  server = await startServer(config, createLogger(config))
  wsUrl = `ws://127.0.0.1:${server.port}/api/ws/socket`
}, 30_000)
afterAll(async () => {
  await server?.stop()
  await db?.drop()
})

test('document subscribe reply v is never ahead of the live ops that follow (PG, no Redis)', async () => {
  const collection = uniqueName('record')
  const writer = await TestClient.connect({ wsUrl })
  await writer.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
  let stop = false
  const writing = (async () => {
    for (let i = 0; !stop; i++)
      await writer.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], oi: i + 1 }] })
  })()
  const bad: string[] = []
  for (let round = 0; round < 150 && bad.length === 0; round++) {
    const reader = await TestClient.connect({ wsUrl })
    const reply = await reader.ok({ type: 'subscribe', collection, document: 'd' })
    const v = reply.data.v as number
    const op = await reader.next((m) => m.type === 'op')
    if (op.data.v !== v) bad.push(`subscribe replied v ${v}, first live op is at v ${op.data.v}`)
    await reader.close()
  }
  stop = true
  await writing
  expect(bad).toEqual([])
}, 60_000)
