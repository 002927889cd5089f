import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import {
  startServerOnTestStore,
  TestClient,
  type TestServer,
  uniqueName,
  upgradeRequest,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore({ MAX_MESSAGE_SIZE: '4096' })
})
afterAll(() => server.close())

describe('connecting', () => {
  test('sends connected with ids, heartbeat interval and server time', async () => {
    const client = await TestClient.connect(server, { user_id: 'alice', session_id: 'tab-1' })
    const { data, timestamp } = client.connected
    expect(data.user_id).toBe('alice')
    expect(data.session_id).toBe('tab-1')
    expect(data.connection_id).toMatch(/^[0-9a-f-]{36}$/)
    expect(data.heartbeat_interval).toBe(30)
    expect(Date.parse(data.server_time)).toBeGreaterThan(0)
    expect(new Date(timestamp).toISOString()).toBe(timestamp)
    await client.close()
  })

  test('makes a session id when none is given: the connection id', async () => {
    const client = await TestClient.connect(server, { user_id: 'bob' })
    expect(client.connected.data.session_id).toMatch(/^[0-9a-f-]{36}$/)
    expect(client.connected.data.session_id).toBe(client.connected.data.connection_id)
    await client.close()
  })

  test('refuses an upgrade without user_id with HTTP 400 JSON', async () => {
    const response = await upgradeRequest(server, '')
    expect(response.status).toBe(400)
    expect(await response.json()).toEqual({
      error: { code: 400, message: 'user_id is required', details: { field: 'user_id' } },
    })
    const blank = await upgradeRequest(server, '?user_id=%20%20')
    expect(blank.status).toBe(400)
  })
})

describe('replies', () => {
  test('ping gets pong echoing a numeric or ISO timestamp, with or without id', async () => {
    const client = await TestClient.connect(server)
    const numeric = await client.request({ type: 'ping', timestamp: 1_700_000_000_000 })
    expect(numeric.type).toBe('pong')
    expect(numeric.data.timestamp).toBe(1_700_000_000_000)
    expect(Date.parse(numeric.data.server_time)).toBeGreaterThan(0)
    const iso = '2026-01-01T00:00:00.000Z'
    client.send({ type: 'ping', timestamp: iso })
    const pong = await client.next((m) => m.type === 'pong')
    expect(pong.id).toBeUndefined()
    expect(pong.data.timestamp).toBe(iso)
    await client.close()
  })

  test('connect answers with the connected payload; string and number ids echo verbatim', async () => {
    const client = await TestClient.connect(server, { user_id: 'carol' })
    client.send({ type: 'connect', id: 'abc-1', data: { client: 'test/1.0' } })
    const reply = await client.next((m) => m.id === 'abc-1')
    expect(reply.type).toBe('connected')
    expect(reply.data.connection_id).toBe(client.connectionId)
    client.send({ type: 'connect', id: 42.5 })
    expect((await client.next((m) => m.id === 42.5)).type).toBe('connected')
    client.send({ type: 'connect' })
    expect((await client.next((m) => m.type === 'connected')).id).toBeUndefined()
    await client.close()
  })

  test('a successful message without id gets no reply; a failing one gets an error without id', async () => {
    const client = await TestClient.connect(server)
    const collection = uniqueName('record')
    client.send({ type: 'subscribe', collection })
    client.send({ type: 'subscribe', collection: 'bad name!' })
    await client.settle()
    const afterConnect = client.received.slice(1)
    expect(afterConnect.map((m) => m.type)).toEqual(['error', 'pong'])
    expect(afterConnect[0]?.id).toBeUndefined()
    expect(afterConnect[0]?.error?.code).toBe(400)
    await client.close()
  })

  test('every message with an id gets exactly one reply', async () => {
    const client = await TestClient.connect(server)
    const collection = uniqueName('record')
    const messages = [
      { type: 'ping' },
      { type: 'connect' },
      { type: 'subscribe', collection },
      { type: 'subscribe', collection },
      { type: 'unsubscribe', collection },
      { type: 'unsubscribe', collection },
      { type: 'subscribe', collection: 7 },
      { type: 'query', collection, document: 'missing' },
      { type: 'nope' },
      { type: 'submit', collection, document: 'd1', op: [{ p: ['x'], oi: 1 }] },
    ]
    messages.forEach((message, i) => {
      client.send({ ...message, id: `m${i}` })
    })
    // Replies that wait for the store (subscribe, query, submit) come when it answers.
    await Promise.all(messages.map((_, i) => client.next((m) => m.id === `m${i}`)))
    await client.settle()
    for (let i = 0; i < messages.length; i++)
      expect(client.all((m) => m.id === `m${i}`)).toHaveLength(1)
    await client.close()
  })
})

describe('bad frames', () => {
  test('malformed JSON, non-objects, unknown types and wrong field types get 400 and the socket lives on', async () => {
    const client = await TestClient.connect(server)
    client.send('{"type": "ping"')
    const malformed = await client.next((m) => m.type === 'error')
    expect(malformed.error).toEqual({ code: 400, message: 'malformed JSON' })

    client.send('[1,2,3]')
    expect((await client.next((m) => m.type === 'error')).error?.message).toBe(
      'a message must be a JSON object',
    )
    client.send('42')
    expect((await client.next((m) => m.type === 'error')).error?.message).toBe(
      'a message must be a JSON object',
    )

    client.send({ type: 'teleport', id: 'u1' })
    const unknown = await client.next((m) => m.id === 'u1')
    expect(unknown.type).toBe('error')
    expect(unknown.error?.code).toBe(400)
    expect(unknown.error?.details?.field).toBe('type')

    client.send({ id: 'u2', collection: 'x' })
    expect((await client.next((m) => m.id === 'u2')).error?.details?.field).toBe('type')

    client.send({ type: 'subscribe', id: 'w1', collection: 12 })
    const wrongType = await client.next((m) => m.id === 'w1')
    expect(wrongType.error?.code).toBe(400)
    expect(wrongType.error?.details?.field).toBe('collection')

    client.send({ type: 'subscribe', id: 'w2', collection: 'ok', document: 'has space' })
    expect((await client.next((m) => m.id === 'w2')).error?.details?.field).toBe('document')

    client.send({ type: 'submit', id: 'w3', collection: 'ok', document: 'd', v: -1, op: [] })
    expect((await client.next((m) => m.id === 'w3')).error?.details?.field).toBe('v')

    client.send({ type: 'ping', id: 'w4', timestamp: { not: 'a time' } })
    expect((await client.next((m) => m.id === 'w4')).error?.details?.field).toBe('timestamp')

    // No Elysia "validation" frame ever reaches the client.
    expect(client.all((m) => m.type === 'validation')).toHaveLength(0)
    expect((await client.request({ type: 'ping' })).type).toBe('pong')
    await client.close()
  })

  test('binary frames get 400', async () => {
    const client = await TestClient.connect(server)
    client.socket.send(new Uint8Array([1, 2, 3]))
    const error = await client.next((m) => m.type === 'error')
    expect(error.error?.code).toBe(400)
    expect(error.error?.message).toContain('binary')
    expect((await client.request({ type: 'ping' })).type).toBe('pong')
    await client.close()
  })

  test('a frame over MAX_MESSAGE_SIZE closes the socket with 1009; others are unaffected', async () => {
    const bystander = await TestClient.connect(server)
    const client = await TestClient.connect(server)
    client.send({ type: 'ping', padding: 'é'.repeat(2100) }) // 4,200 bytes in UTF-8
    expect(await client.closed).toBe(1009)
    expect(client.all((m) => m.type === 'disconnect')[0]?.data).toEqual({
      code: 1009,
      reason: 'message_too_big',
    })
    expect((await bystander.request({ type: 'ping' })).type).toBe('pong')
    await bystander.close()
  })

  test('a frame just under the limit is accepted', async () => {
    const client = await TestClient.connect(server)
    const reply = await client.request({ type: 'ping', padding: 'x'.repeat(3900) })
    expect(reply.type).toBe('pong')
    await client.close()
  })
})

describe('disconnect', () => {
  test('disconnect is answered, then the server closes with 1000', async () => {
    const client = await TestClient.connect(server)
    client.send({ type: 'disconnect' })
    const reply = await client.next((m) => m.type === 'disconnect')
    expect(reply.data).toEqual({ code: 1000, reason: 'client' })
    expect(await client.closed).toBe(1000)
  })
})
