import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { type ChannelPresence, type OpEvent, RealtimeClient } from '../src/client/index.ts'
import {
  getJson,
  postJson,
  startServerOnTestStore,
  type TestServer,
  uniqueName,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore()
})
afterAll(() => server.close())

describe('resuming after a reconnect', () => {
  test('a client offline for 200 missed ops resumes without a gap or a double', async () => {
    const client = new RealtimeClient({ url: server.url, userId: 'away' })
    const collection = uniqueName('record')
    const feed = client.subscribe(collection)
    const doc = client.doc(collection, 'd1')
    await feed.ready
    await doc.subscribe()
    await doc.create({ n: 0, items: [] })
    // In a cluster the broadcast reaches the feed through Redis, after the REST reply.
    const seen = feed.once('message')
    await postJson(server, '/api/ws/broadcast/channel', { channel: collection, message: 'seen' })
    await seen
    const ops: OpEvent[] = []
    const messages: number[] = []
    feed.on('op', (event) => ops.push(event))
    feed.on('message', (event) => messages.push(event.offset))
    let resets = 0
    feed.on('reset', () => resets++)
    doc.on('reset', () => resets++)
    let docOps = 0
    doc.on('op', () => docOps++)
    const before = feed.offset ?? 0
    await doc.whenNothingPending()

    client.disconnect()
    for (let i = 0; i < 200; i++) {
      const reply = await postJson(server, '/api/ws/publish/document', {
        collection,
        document: i % 4 === 3 ? 'd2' : 'd1',
        operation: i % 2 ? [{ p: ['n'], na: 1 }] : [{ p: ['items', 0], li: i }],
      })
      expect(reply.status).toBe(200)
      if (i % 50 === 0)
        await postJson(server, '/api/ws/broadcast/channel', {
          channel: `${collection}.d1`,
          message: i,
        })
    }
    const resynced = client.once('resynced')
    client.connect()
    await resynced

    const offsets = [...ops.map((e) => e.data.offset), ...messages].sort((a, b) => a - b)
    expect(offsets).toEqual(Array.from({ length: 204 }, (_, i) => before + 1 + i))
    expect(new Set(ops.map((e) => e.data.offset)).size).toBe(ops.length)
    expect(resets).toBe(0)
    const server1 = await getJson(server, `/api/ws/documents/${collection}/d1`)
    expect(doc.v).toBe(server1.body.v)
    expect(doc.data).toEqual(server1.body.data)
    expect(docOps).toBe(150) // the three in four that were d1's, each once
    // Live again from where the replay stopped.
    const next = feed.once('op')
    await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'd3',
      operation: [{ p: ['x'], oi: 1 }],
    })
    expect((await next).data.offset).toBe(before + 205)
    client.close()
  })

  test('a change whose ack was lost with the connection is applied once', async () => {
    const client = new RealtimeClient({ url: server.url, userId: 'unlucky' })
    const collection = uniqueName('record')
    const doc = client.doc(collection, 'd')
    await doc.subscribe()
    await doc.create({ list: [] })
    const acked = doc.submit([{ p: ['list', 0], li: 'mine' }])
    client.disconnect() // the submit is on the wire; its ack will not come on this socket
    await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'd',
      operation: [{ p: ['list', 0], li: 'theirs' }],
    })
    client.connect()
    await acked
    const snapshot = await getJson(server, `/api/ws/documents/${collection}/d`)
    expect(snapshot.body.data.list.filter((x: string) => x === 'mine')).toHaveLength(1)
    while (doc.v < snapshot.body.v) await doc.once('op')
    expect(doc.data).toEqual(snapshot.body.data)
    client.close()
  })
})

describe('presence', () => {
  /** Waits until the presence shows what `check` wants. */
  async function until(presence: ChannelPresence, check: () => boolean): Promise<void> {
    while (!check()) await presence.once('change')
  }

  test('members grouped by user, own state restored after a reconnect, leave on close', async () => {
    const channel = uniqueName('record')
    const watcher = new RealtimeClient({ url: server.url, userId: 'watcher' })
    const tab1 = new RealtimeClient({ url: server.url, userId: 'bob' })
    const tab2 = new RealtimeClient({ url: server.url, userId: 'bob' })
    const seen = watcher.presence(channel)
    await watcher.subscribe(channel).ready
    const joins: string[] = []
    seen.on('join', (member) => joins.push(member.connectionId))
    await tab1.presence(channel).set({ cell: 'A1' })
    await tab2.presence(channel).set({ cell: 'B2' })
    await until(seen, () => seen.users()[0]?.connections.length === 2)
    const bob = seen.users()
    expect(bob).toHaveLength(1)
    expect(bob[0]?.userId).toBe('bob')
    expect(bob[0]?.connections.map((c) => c.state)).toContainEqual({ cell: 'A1' })
    expect(seen.counts).toEqual({ connections: 2, users: 1 })

    // tab1 drops and comes back: a new connection, its state set again by itself.
    const first = tab1.connection?.connection_id
    tab1.disconnect()
    await until(seen, () => seen.users()[0]?.connections.length === 1)
    tab1.connect()
    await until(
      seen,
      () =>
        seen
          .users()[0]
          ?.connections.some(
            (c) => c.connectionId !== first && JSON.stringify(c.state) === '{"cell":"A1"}',
          ) === true,
    )
    expect(joins).toHaveLength(3)
    tab1.close()
    tab2.close()
    await until(seen, () => seen.users().length === 0)
    watcher.close()
  })

  test('a channel past PRESENCE_MAX_MEMBERS switches to counts (mode event) and back', async () => {
    const capped = await startServerOnTestStore({ PRESENCE_MAX_MEMBERS: '4' })
    const channel = uniqueName('record')
    const watcher = new RealtimeClient({ url: capped.url, userId: 'w' })
    const seen = watcher.presence(channel)
    await watcher.subscribe(channel).ready
    const others = ['a', 'b', 'c', 'd'].map(
      (user) => new RealtimeClient({ url: capped.url, userId: user }),
    )
    const modes: string[] = []
    seen.on('mode', (event) => modes.push(event.mode))
    for (const other of others) await other.subscribe(channel).ready
    await until(seen, () => seen.mode === 'count')
    expect(seen.counts).toEqual({ connections: 5, users: 5 })
    expect(seen.users()).toEqual([])
    // Down to half the cap: full again, the remaining member sent as a join.
    for (const other of others.slice(1)) other.close()
    await until(seen, () => seen.mode === 'full' && seen.users().length === 1)
    expect(seen.users()[0]?.userId).toBe('a')
    expect(modes).toEqual(['count', 'full'])
    others[0]?.close()
    watcher.close()
    await capped.close()
  })
})
