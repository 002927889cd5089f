import { afterAll, beforeAll, expect, test } from 'bun:test'
import { treaty } from '@elysiajs/eden'
import type { App } from '../src/index.ts'
import { startServerOnTestStore, TestClient, type TestServer, uniqueName } from './helpers.ts'

let server: TestServer
let api: ReturnType<typeof treaty<App>>
beforeAll(async () => {
  server = await startServerOnTestStore()
  api = treaty<App>(server.url)
})
afterAll(() => server.close())

test('Treaty types and calls the publish, history and documents routes', async () => {
  const table = uniqueName('tbl')
  const created = await api.api.ws.publish.document.post({
    collection: `record_${table}`,
    document: 'rec1',
    operation: [{ p: ['fields'], oi: { fld1: 'a' } }],
  })
  expect(created.error).toBeNull()
  expect(created.data).toEqual({ v: 0, offset: 1 })

  const record = await api.api.ws.publish.record.post({
    table_id: table,
    record_id: 'rec1',
    operation: [{ p: ['fields', 'fld1'], oi: 'b', od: 'a' }],
  })
  const v: number | undefined = record.data?.v
  expect(v).toBe(1)
  const shorthand = [{ p: ['name'], t: 'string', o: 'Grid' }]
  const view = await api.api.ws.publish.view.post({
    table_id: table,
    view_id: 'v',
    operation: shorthand,
  })
  expect(view.data).toEqual({ v: 0, offset: 1 })
  const field = await api.api.ws.publish.field.post({
    table_id: table,
    field_id: 'f',
    operation: shorthand,
  })
  expect(field.data).toEqual({ v: 0, offset: 1 })
  const tableOp = await api.api.ws.publish.table.post({
    base_id: table,
    table_id: 't',
    operation: [{ p: ['name'], oi: 'Tasks' }],
  })
  expect(tableOp.data?.offset).toBe(1)

  const history = await api.api.ws.history.get({ query: { channel: `record_${table}`, since: 0 } })
  expect(history.data?.head).toBe(2)
  expect(history.data?.messages.map((m) => m.type)).toEqual(['op', 'op'])

  const doc = await api.api.ws
    .documents({ collection: `record_${table}` })({ id: 'rec1' })
    .get()
  expect(doc.data).toEqual({ v: 2, data: null })

  // A refusal is typed too: the error body of the route's 409.
  const stale = await api.api.ws.publish.document.post({
    collection: `record_${table}`,
    document: 'rec1',
    operation: [{ p: ['x'], na: 1 }],
    v: 5,
  })
  expect(stale.error?.status).toBe(409)
  if (stale.error?.status === 409) expect(stale.error.value.error.code).toBe(409)
})

test('Treaty types and calls the broadcast, presence and stats routes', async () => {
  const channel = uniqueName('record')
  const client = await TestClient.connect(server, { user_id: 'treaty-user' })
  await client.ok({ type: 'subscribe', collection: channel })
  await client.ok({ type: 'presence', collection: channel, data: { cell: 'A1' } })

  const broadcast = await api.api.ws.broadcast.channel.post({
    channel,
    message: { kind: 'reload' },
  })
  expect(broadcast.data).toEqual({ delivered: 1, offset: 1 })
  const toUser = await api.api.ws.broadcast.user.post({ user_id: 'treaty-user', message: 'hi' })
  expect(toUser.data?.delivered).toBe(1)

  const presence = await api.api.ws.presence.get({ query: { channel } })
  expect(presence.data?.users).toBe(1)
  expect(presence.data?.members?.[0]?.connections[0]?.state).toEqual({ cell: 'A1' })

  const online = await api.api.ws.online.get()
  expect(online.data?.online.some((u) => u.user_id === 'treaty-user')).toBe(true)
  const sessions = await api.api.ws.sessions.get({ query: { user_id: 'treaty-user' } })
  expect(sessions.data?.sessions[0]?.live).toBe(true)

  const stats = await api.api.ws.stats.get()
  const connections: number | undefined = stats.data?.connections
  expect(connections).toBeGreaterThanOrEqual(1)
  expect(stats.data?.messages.in_by_type.subscribe).toBeGreaterThanOrEqual(1)
  await client.close()
})
