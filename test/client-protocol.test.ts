import { afterAll, beforeAll, expect, test } from 'bun:test'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { ServerMessage, serverMessageSchemas } from '../src/protocol/server-messages.ts'
import {
  type ServerMessage as Frame,
  postJson,
  startServerOnTestStore,
  TestClient,
  type TestServer,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore({
    PRESENCE_MAX_MEMBERS: '3',
    PRESENCE_MODES: 'count_=count',
  })
})
afterAll(() => server.close())

const check = TypeCompiler.Compile(ServerMessage)
/** Which schema a frame matches (the union's members by name). */
const matching = (frame: Frame) =>
  Object.entries(serverMessageSchemas)
    .filter(([, schema]) => TypeCompiler.Compile(schema).Check(frame))
    .map(([name]) => name)

test('every frame the server sends matches the server → client schemas', async () => {
  const [a, b, c, d] = await Promise.all(
    ['pa', 'pb', 'pc', 'pd'].map((user) => TestClient.connect(server, { user_id: user })),
  )
  if (!a || !b || !c || !d) throw new Error('clients')
  await a.ok({ type: 'connect', data: { client: 'schema-test' } })
  await a.ok({ type: 'subscribe', collection: 'record_s' })
  await a.ok({ type: 'subscribe', collection: 'record_s', document: 'd1' })
  await b.ok({ type: 'subscribe', collection: 'record_s' })
  await a.ok({ type: 'submit', collection: 'record_s', document: 'd1', create: { data: { n: 0 } } })
  await a.ok({
    type: 'submit',
    collection: 'record_s',
    document: 'd1',
    v: 1,
    op: [{ p: ['n'], na: 1 }],
    src: 'x',
    seq: 1,
  })
  await a.ok({ type: 'query', collection: 'record_s', document: 'd1' })
  await a.ok({ type: 'query', collection: 'record_s' })
  await a.ok({ type: 'presence', collection: 'record_s', data: { cell: 'A1' } })
  await b.request({ type: 'query', collection: 'record_s', document: 'missing' })
  await postJson(server, '/api/ws/broadcast/channel', { channel: 'record_s.d1', message: { k: 1 } })
  await postJson(server, '/api/ws/broadcast/user', { user_id: 'pb', message: 'hello' })
  await a.ok({ type: 'submit', collection: 'record_s', document: 'd1', del: true })
  await a.ok({
    type: 'subscribe',
    collection: 'record_s',
    since: { epoch: a.all((m) => m.type === 'subscribe')[0]?.data.epoch, offset: 0 },
  })
  await b.ok({ type: 'subscribe', collection: 'count_s' })
  await c.ok({ type: 'subscribe', collection: 'count_s' })
  await c.ok({ type: 'subscribe', collection: 'record_s' })
  await d.ok({ type: 'subscribe', collection: 'record_s' }) // past the cap of 3: mode events
  await a.ok({ type: 'unsubscribe', collection: 'record_s' })
  await a.ok({ type: 'ping', timestamp: 5 })
  await d.ok({ type: 'ping' })
  await b.close()
  await a.settle()
  await a.request({ type: 'disconnect' })
  await Promise.all([c.settle(), d.settle()])

  const frames = [a, b, c, d].flatMap((client) => client.received)
  const invalid = frames.filter((frame) => !check.Check(frame))
  expect(invalid.map((frame) => [frame, check.Errors(frame).First()?.path])).toEqual([])
  const kinds = new Set(
    frames.map((frame) =>
      frame.type === 'presence' && frame.data?.event ? `presence:${frame.data.event}` : frame.type,
    ),
  )
  for (const kind of [
    'connected',
    'subscribe',
    'unsubscribe',
    'query',
    'submit',
    'presence',
    'pong',
    'disconnect',
    'error',
    'op',
    'message',
    'presence:join',
    'presence:update',
    'presence:count',
    'presence:mode',
  ])
    expect(kinds).toContain(kind)
  // Each frame is one kind of frame (a presence reply is not a presence event).
  for (const frame of frames) expect(matching(frame).length).toBeGreaterThanOrEqual(1)
  await Promise.all([c.close(), d.close()])
})
