import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import {
  connectMany,
  eventually,
  getJson,
  postJson,
  startServerOnTestStore,
  TestClient,
  type TestServer,
  testStore,
  uniqueName,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore()
})
afterAll(() => server.close())

const broadcast = (channel: string, message: unknown, exclude?: string[]) =>
  postJson(server, '/api/ws/broadcast/channel', {
    channel,
    message,
    ...(exclude ? { exclude } : {}),
  })

describe('fan-out', () => {
  test('50 clients on one channel each receive every broadcast once, in order', async () => {
    const channel = uniqueName('record')
    const clients = await connectMany(server, 50)
    await Promise.all(
      clients.map((client) => client.ok({ type: 'subscribe', collection: channel })),
    )
    const results = []
    for (let i = 0; i < 20; i++) results.push(await broadcast(channel, { n: i }))
    for (const [i, result] of results.entries()) {
      expect(result.status).toBe(200)
      expect(result.body.delivered).toBe(50)
      expect(result.body.offset).toBe(i + 1)
    }
    for (const client of clients) {
      await client.settle()
      const messages = client.all((m) => m.type === 'message')
      expect(messages.map((m) => m.data.message.n)).toEqual(Array.from({ length: 20 }, (_, i) => i))
      expect(messages.map((m) => m.data.offset)).toEqual(
        Array.from({ length: 20 }, (_, i) => i + 1),
      )
      expect(messages[0]?.collection).toBe(channel)
    }
    await Promise.all(clients.map((client) => client.close()))
  })

  test('a client on both a collection and one of its documents gets a document message once', async () => {
    const collection = uniqueName('record')
    const both = await TestClient.connect(server)
    const docOnly = await TestClient.connect(server)
    const collOnly = await TestClient.connect(server)
    await both.ok({ type: 'subscribe', collection })
    await both.ok({ type: 'subscribe', collection, document: 'rec1' })
    await docOnly.ok({ type: 'subscribe', collection, document: 'rec1' })
    await collOnly.ok({ type: 'subscribe', collection })

    const docMessage = await broadcast(`${collection}.rec1`, 'to-doc')
    expect(docMessage.body.delivered).toBe(3)
    const otherDoc = await broadcast(`${collection}.rec2`, 'to-other-doc')
    expect(otherDoc.body.delivered).toBe(2) // the two collection followers
    const collMessage = await broadcast(collection, 'to-collection')
    expect(collMessage.body.delivered).toBe(2)

    for (const client of [both, docOnly, collOnly]) await client.settle()
    const payloads = (c: TestClient) =>
      c.all((m) => m.type === 'message').map((m) => m.data.message)
    expect(payloads(both)).toEqual(['to-doc', 'to-other-doc', 'to-collection'])
    expect(payloads(docOnly)).toEqual(['to-doc'])
    expect(payloads(collOnly)).toEqual(['to-doc', 'to-other-doc', 'to-collection'])
    const docFrame = both.all((m) => m.type === 'message')[0]
    expect(docFrame?.collection).toBe(collection)
    expect(docFrame?.document).toBe('rec1')
    await Promise.all([both, docOnly, collOnly].map((c) => c.close()))
  })

  test('unsubscribing one of two overlapping subscriptions keeps the other working', async () => {
    const collection = uniqueName('record')
    const client = await TestClient.connect(server)
    await client.ok({ type: 'subscribe', collection })
    await client.ok({ type: 'subscribe', collection, document: 'rec1' })

    const unsub = await client.ok({ type: 'unsubscribe', collection })
    expect(unsub.data).toEqual({ channel: collection })
    expect((await broadcast(`${collection}.rec1`, 'a')).body.delivered).toBe(1)
    expect((await broadcast(collection, 'b')).body.delivered).toBe(0)

    await client.ok({ type: 'subscribe', collection })
    await client.ok({ type: 'unsubscribe', collection, document: 'rec1' })
    expect((await broadcast(`${collection}.rec1`, 'c')).body.delivered).toBe(1)
    expect((await broadcast(collection, 'd')).body.delivered).toBe(1)

    await client.ok({ type: 'unsubscribe', collection })
    expect((await broadcast(`${collection}.rec1`, 'e')).body.delivered).toBe(0)
    await client.settle()
    expect(client.all((m) => m.type === 'message').map((m) => m.data.message)).toEqual([
      'a',
      'c',
      'd',
    ])
    await client.close()
  })

  test('subscribe and unsubscribe are idempotent', async () => {
    const collection = uniqueName('record')
    const client = await TestClient.connect(server)
    await client.ok({ type: 'subscribe', collection })
    await client.ok({ type: 'subscribe', collection })
    expect((await broadcast(collection, 'x')).body.delivered).toBe(1)
    await client.ok({ type: 'unsubscribe', collection })
    const again = await client.ok({ type: 'unsubscribe', collection })
    expect(again.data.channel).toBe(collection)
    expect((await broadcast(collection, 'y')).body.delivered).toBe(0)
    await client.close()
  })

  test('exclude skips exactly the listed connections', async () => {
    const collection = uniqueName('record')
    const clients = await connectMany(server, 4)
    await Promise.all(clients.map((c) => c.ok({ type: 'subscribe', collection })))
    await clients[3]?.ok({ type: 'subscribe', collection, document: 'rec1' })
    const excluded = [clients[0]?.connectionId, clients[3]?.connectionId] as string[]
    const result = await broadcast(`${collection}.rec1`, 'hello', excluded)
    expect(result.body.delivered).toBe(2)
    // The exclusion was only for that message.
    expect((await broadcast(`${collection}.rec1`, 'again')).body.delivered).toBe(4)
    for (const c of clients) await c.settle()
    const got = clients.map((c) => c.all((m) => m.type === 'message').map((m) => m.data.message))
    expect(got).toEqual([['again'], ['hello', 'again'], ['hello', 'again'], ['again']])
    await Promise.all(clients.map((c) => c.close()))
  })

  test('a user broadcast reaches every live connection of that user and nobody else', async () => {
    const user = uniqueName('user')
    const tabs = await Promise.all(
      [1, 2, 3].map(() => TestClient.connect(server, { user_id: user })),
    )
    const other = await TestClient.connect(server, { user_id: `${user}x` })
    const result = await postJson(server, '/api/ws/broadcast/user', {
      user_id: user,
      message: { hi: 1 },
    })
    expect(result.status).toBe(200)
    // In a cluster the reply also counts the nodes it was handed to (CLUSTER.md).
    expect(result.body).toEqual(
      testStore === 'cluster' ? { delivered: 3, nodes: 1 } : { delivered: 3 },
    )
    for (const tab of tabs) {
      const message = await tab.next((m) => m.type === 'message')
      expect(message.data).toEqual({ message: { hi: 1 } })
      expect(message.collection).toBeUndefined()
    }
    await other.settle()
    expect(other.all((m) => m.type === 'message')).toHaveLength(0)
    await tabs[0]?.close()
    const after = await postJson(server, '/api/ws/broadcast/user', { user_id: user, message: 2 })
    expect(after.body.delivered).toBe(2)
    const nobody = await postJson(server, '/api/ws/broadcast/user', {
      user_id: 'nobody-here',
      message: 1,
    })
    expect(nobody.body.delivered).toBe(0)
    await Promise.all([...tabs, other].map((c) => c.close()))
  })
})

describe('REST validation', () => {
  test('bad broadcast bodies get 400 with details', async () => {
    const noChannel = await postJson(server, '/api/ws/broadcast/channel', { message: 1 })
    expect(noChannel.status).toBe(400)
    expect(noChannel.body.error?.code).toBe(400)
    expect(noChannel.body.error?.details?.field).toBe('channel')

    const badName = await postJson(server, '/api/ws/broadcast/channel', {
      channel: 'has space',
      message: 1,
    })
    expect(badName.status).toBe(400)
    expect(badName.body.error?.details?.field).toBe('channel')

    const noMessage = await postJson(server, '/api/ws/broadcast/channel', { channel: 'ok' })
    expect(noMessage.status).toBe(400)
    expect(noMessage.body.error?.details?.field).toBe('message')

    const badExclude = await postJson(server, '/api/ws/broadcast/channel', {
      channel: 'ok',
      message: 1,
      exclude: 'c1',
    })
    expect(badExclude.status).toBe(400)
    expect(badExclude.body.error?.details?.field).toBe('exclude')

    const malformed = await postJson(server, '/api/ws/broadcast/user', '{"user_id":')
    expect(malformed.status).toBe(400)

    const noUser = await postJson(server, '/api/ws/broadcast/user', { message: 1 })
    expect(noUser.status).toBe(400)
    expect(noUser.body.error?.details?.field).toBe('user_id')

    const unknownRoute = await getJson(server, '/api/ws/nope')
    expect(unknownRoute.status).toBe(404)
    expect(unknownRoute.body.error.code).toBe(404)
  })
})

describe('stats', () => {
  test('are exact after a scripted scenario', async () => {
    const own = await startServerOnTestStore()
    try {
      const a = await TestClient.connect(own, { user_id: 'ua' })
      const b = await TestClient.connect(own, { user_id: 'ub' })
      const b2 = await TestClient.connect(own, { user_id: 'ub' })
      await a.ok({ type: 'subscribe', collection: 'record_t1' })
      await a.ok({ type: 'subscribe', collection: 'record_t1', document: 'r1' })
      await b.ok({ type: 'subscribe', collection: 'record_t1' })
      await b2.ok({ type: 'subscribe', collection: 'view_t1' })
      await a.request({ type: 'ping' })
      a.send('not json')
      await a.next((m) => m.type === 'error')
      await b.request({ type: 'nope' })
      await postJson(own, '/api/ws/broadcast/channel', { channel: 'record_t1.r1', message: 1 })
      await postJson(own, '/api/ws/broadcast/user', { user_id: 'ub', message: 2 })
      await Promise.all([a.settle(), b.settle(), b2.settle()])

      const { status, body } = await getJson(own, '/api/ws/stats')
      expect(status).toBe(200)
      expect(body.connections).toBe(3)
      expect(body.users).toBe(2)
      expect(body.channels).toBe(3) // record_t1, record_t1.r1, view_t1
      expect(body.subscriptions).toBe(4)
      // in: 4 subscribe, 1 + 3 (settle) pings, 1 invalid, 1 nope (counted as invalid: unknown type)
      expect(body.messages.in_by_type).toEqual({ subscribe: 4, ping: 4, invalid: 2 })
      expect(body.messages.in).toBe(10)
      // out: 3 connected, 4 subscribe, 4 pong, 2 error, 2 message (record_t1.r1 → a, b), 2 message (user ub),
      // 2 presence (b joining record_t1: a is told, b is sent a's entry)
      expect(body.messages.out_by_type).toEqual({
        connected: 3,
        subscribe: 4,
        pong: 4,
        error: 2,
        message: 4,
        presence: 2,
      })
      expect(body.messages.out).toBe(19)
      expect(body.errors).toEqual({ total: 2, by_code: { '400': 2 } })
      expect(body.uptime).toBeGreaterThanOrEqual(0)

      await b2.close()
      await a.ok({ type: 'unsubscribe', collection: 'record_t1' })
      await eventually(async () => {
        const later = (await getJson(own, '/api/ws/stats')).body
        expect([later.connections, later.users, later.channels, later.subscriptions]).toEqual([
          2, 2, 2, 2,
        ])
      })
      await Promise.all([a.close(), b.close()])
      await eventually(async () => {
        const empty = (await getJson(own, '/api/ws/stats')).body
        expect([empty.connections, empty.users, empty.channels, empty.subscriptions]).toEqual([
          0, 0, 0, 0,
        ])
      })
    } finally {
      await own.close()
    }
  })
})
