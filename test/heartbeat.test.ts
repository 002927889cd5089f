import { afterAll, beforeAll, expect, test } from 'bun:test'
import {
  eventually,
  getJson,
  silentSocket,
  startServerOnTestStore,
  TestClient,
  type TestServer,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore({ HEARTBEAT_INTERVAL: '0.1', CONNECTION_TIMEOUT: '0.4' })
})
afterAll(() => server.close())

test('a connection silent past CONNECTION_TIMEOUT is told why, closed and cleaned up', async () => {
  const silent = await silentSocket(server, 'user_id=sleeper')
  const subscriber = await TestClient.connect(server, { user_id: 'awake' })
  await subscriber.ok({ type: 'subscribe', collection: 'record_hb' })
  const started = Date.now()
  await silent.ended
  const elapsed = Date.now() - started
  expect(elapsed).toBeGreaterThanOrEqual(300)
  const messages = silent.messages()
  expect(messages.at(-1)?.type).toBe('disconnect')
  expect(messages.at(-1)?.data).toEqual({ code: 4408, reason: 'timeout' })
  expect(silent.closeCode()).toBe(4408)
  await eventually(async () => {
    const { body } = await getJson(server, '/api/ws/stats')
    expect(body.connections).toBe(1)
    expect(body.users).toBe(1)
  })
  await subscriber.close()
})

test('a connection that answers pings stays open without sending anything', async () => {
  // Bun's WebSocket client answers ping frames with pongs, as browsers do.
  const client = await TestClient.connect(server)
  const silentUntil = Date.now() + 1200 // three times the timeout
  while (Date.now() < silentUntil) await Bun.sleep(100)
  expect(client.closeCode).toBeUndefined()
  expect((await client.request({ type: 'ping' })).type).toBe('pong')
  await client.close()
})

test('application messages count as activity for a client that never pongs', async () => {
  const chatty = await silentSocket(server, 'user_id=chatty')
  let closed = false
  chatty.ended.then(() => {
    closed = true
  })
  // Three timeouts' worth of application pings, and not a single pong.
  for (let i = 0; i < 12; i++) {
    chatty.sendText('{"type":"ping"}')
    await Bun.sleep(100)
  }
  expect(closed).toBe(false)
  expect(chatty.messages().filter((m) => m.type === 'pong').length).toBe(12)
  await chatty.ended // once it stops talking, it times out
  expect(chatty.closeCode()).toBe(4408)
})
