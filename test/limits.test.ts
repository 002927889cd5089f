import { describe, expect, test } from 'bun:test'
import {
  connectMany,
  eventually,
  getJson,
  postJson,
  silentSocket,
  TestClient,
  uniqueName,
  upgradeRequest,
  withServer,
} from './helpers.ts'

describe('connection limits', () => {
  test('MAX_CONNECTIONS refuses the next upgrade with 429 JSON', () =>
    withServer({ MAX_CONNECTIONS: '3' }, async (server) => {
      const clients = await connectMany(server, 3)
      const refused = await upgradeRequest(server, '?user_id=late')
      expect(refused.status).toBe(429)
      expect((await refused.json()).error).toMatchObject({ code: 429 })
      await clients[0]?.close()
      await eventually(async () =>
        expect((await upgradeRequest(server, '?user_id=later')).status).toBe(101),
      )
      await Promise.all(clients.map((c) => c.close()))
    }))

  test('MAX_CONNECTIONS_PER_USER limits one user, not the others', () =>
    withServer({ MAX_CONNECTIONS_PER_USER: '2' }, async (server) => {
      const tabs = [
        await TestClient.connect(server, { user_id: 'gus' }),
        await TestClient.connect(server, { user_id: 'gus' }),
      ]
      const third = await upgradeRequest(server, '?user_id=gus')
      expect(third.status).toBe(429)
      expect((await third.json()).error.message).toContain('MAX_CONNECTIONS_PER_USER')
      const other = await TestClient.connect(server, { user_id: 'hal' })
      await Promise.all([...tabs, other].map((c) => c.close()))
    }))

  test('connection attempts per address per second are limited (twice the rate in a burst)', () =>
    withServer({ CONNECT_RATE_PER_IP: '2' }, async (server) => {
      const statuses = []
      for (let i = 0; i < 6; i++)
        statuses.push((await upgradeRequest(server, `?user_id=u${i}`)).status)
      expect(statuses.slice(0, 4)).toEqual([101, 101, 101, 101])
      expect(statuses.slice(4)).toEqual([429, 429])
    }))

  test('MAX_SUBSCRIPTIONS_PER_CONNECTION is a 429 on the next subscribe', () =>
    withServer({ MAX_SUBSCRIPTIONS_PER_CONNECTION: '3' }, async (server) => {
      const client = await TestClient.connect(server)
      for (const c of ['a', 'b', 'c']) await client.ok({ type: 'subscribe', collection: c })
      await client.ok({ type: 'subscribe', collection: 'a' }) // already followed: not a new one
      const fourth = await client.request({ type: 'subscribe', collection: 'd' })
      expect(fourth.error?.code).toBe(429)
      await client.ok({ type: 'unsubscribe', collection: 'a' })
      await client.ok({ type: 'subscribe', collection: 'd' })
      await client.close()
    }))
})

describe('message limits', () => {
  test('over MESSAGE_RATE messages get 429 (each with its id); sustained flooding closes with 1008', () =>
    withServer({ MESSAGE_RATE: '10' }, async (server) => {
      const client = await TestClient.connect(server)
      for (let i = 0; i < 30; i++) client.send({ type: 'ping', id: i })
      const replies = await client.collect(30, (m) => typeof m.id === 'number')
      expect(replies.filter((m) => m.type === 'pong').length).toBeGreaterThanOrEqual(20)
      const limited = replies.filter((m) => m.type === 'error')
      expect(limited.length).toBeGreaterThan(0)
      expect(limited.every((m) => m.error?.code === 429)).toBe(true)
      expect(new Set(replies.map((m) => m.id)).size).toBe(30)

      for (let i = 0; i < 100; i++) client.send({ type: 'ping' })
      expect(await client.closed).toBe(1008)
      expect(client.all((m) => m.type === 'disconnect')[0]?.data).toEqual({
        code: 1008,
        reason: 'rate_limited',
      })
    }))

  test('JSON nested past MAX_JSON_DEPTH is refused before parsing; below it is fine', () =>
    withServer({ MAX_JSON_DEPTH: '16' }, async (server) => {
      const client = await TestClient.connect(server)
      const nest = (n: number) => `${'['.repeat(n)}1${']'.repeat(n)}`
      client.send(`{"type":"ping","id":"deep","x":${nest(40)}}`)
      const deep = await client.next((m) => m.type === 'error')
      expect(deep.error?.message).toContain('nested deeper than 16')
      // Brackets inside strings do not count.
      const fine = await client.request({ type: 'ping', x: nest(10), y: '[[[[[[[[[[[[[[[[[[[[[[' })
      expect(fine.type).toBe('pong')
      // A million brackets: refused at once, the connection lives on.
      client.send(`{"type":"ping","x":${'['.repeat(60_000)}`)
      expect((await client.next((m) => m.type === 'error')).error?.code).toBe(400)
      expect((await client.request({ type: 'ping' })).type).toBe('pong')
      await client.close()
    }))

  test('an op over MAX_OP_COMPONENTS is 413 and stores nothing', () =>
    withServer({ MAX_OP_COMPONENTS: '5' }, async (server) => {
      const collection = uniqueName('record')
      const client = await TestClient.connect(server)
      const op = Array.from({ length: 6 }, (_, i) => ({ p: [`f${i}`], oi: i }))
      const reply = await client.request({ type: 'submit', collection, document: 'd', op })
      expect(reply.error?.code).toBe(413)
      expect(reply.error?.details).toMatchObject({ field: 'op', limit: 5 })
      expect(
        (await client.ok({ type: 'submit', collection, document: 'd', op: op.slice(0, 5) })).data.v,
      ).toBe(0)
      await client.close()
    }))
})

describe('isolation', () => {
  test('a client that does not read is cut at MAX_SEND_BUFFER; a flooder is limited; 50 others get every message in order', () =>
    withServer({ MAX_SEND_BUFFER: '65536', MESSAGE_RATE: '50' }, async (server) => {
      const channel = uniqueName('record')
      const others = await connectMany(server, 50, 'reader')
      await Promise.all(others.map((c) => c.ok({ type: 'subscribe', collection: channel })))

      // Subscribes, then never reads a byte again.
      const stuck = await silentSocket(server, 'user_id=stuck')
      stuck.sendText(JSON.stringify({ type: 'subscribe', collection: channel }))
      await eventually(async () => {
        const { body } = await getJson(server, `/api/ws/presence?channel=${channel}`)
        expect(body.connections).toBe(51)
      })
      stuck.pause()

      const flooder = await TestClient.connect(server, { user_id: 'flooder' })
      const flood = setInterval(() => {
        if (flooder.closeCode === undefined)
          for (let i = 0; i < 20; i++) flooder.send({ type: 'ping' })
      }, 5)

      // 200 × 30 KB: more than the kernel's socket buffers hold for the stuck client.
      const payload = 'x'.repeat(30_000)
      for (let i = 0; i < 200; i++) {
        const { status } = await postJson(server, '/api/ws/broadcast/channel', {
          channel,
          message: { i, payload },
        })
        expect(status).toBe(200)
      }
      clearInterval(flood)

      for (const client of others) {
        const messages = await client.collect(200, (m) => m.type === 'message')
        expect(messages.map((m) => m.data.message.i)).toEqual(
          Array.from({ length: 200 }, (_, i) => i),
        )
      }
      // The one that did not read was disconnected as a slow consumer.
      await eventually(async () => {
        const { body } = await getJson(server, '/api/ws/sessions?user_id=stuck')
        expect(body.sessions[0]).toMatchObject({ live: false, end_reason: 'slow_consumer' })
      })
      // The flooder got 429s, then was closed for ignoring them.
      expect(flooder.all((m) => m.error?.code === 429).length).toBeGreaterThan(0)
      expect(await flooder.closed).toBe(1008)
      await Promise.all(others.map((c) => c.close()))
    }))
})
