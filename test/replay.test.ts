import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import {
  postJson,
  startServerOnTestStore,
  TestClient,
  type TestServer,
  uniqueName,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore()
})
afterAll(() => server.close())

const publishRecord = (collection: string, document: string, value: unknown) =>
  postJson(server, '/api/ws/publish/document', {
    collection,
    document,
    operation: [{ p: ['value'], oi: value }],
  })

describe('collection resume', () => {
  test('a returning client gets every missed offset exactly once, in order, while 5 others keep publishing', async () => {
    const collection = uniqueName('record')
    const client = await TestClient.connect(server, { user_id: 'returning' })
    const first = await client.ok({ type: 'subscribe', collection })
    const { epoch, offset: seen } = first.data
    expect(seen).toBe(0)
    await client.close()

    // 500 ops by others while it is away.
    const publishers = await Promise.all(
      [1, 2, 3, 4, 5].map((i) => TestClient.connect(server, { user_id: `p${i}` })),
    )
    await Promise.all(
      publishers.map(async (publisher, p) => {
        for (let i = 0; i < 100; i++)
          await publisher.ok({
            type: 'submit',
            collection,
            document: `doc${p}`,
            op: [{ p: ['n'], oi: i }],
          })
      }),
    )

    // It comes back while the five keep going.
    let publishing = true
    let acked = 0
    let onAck: () => void = () => {}
    const acks = (n: number) =>
      new Promise<void>((resolve) => {
        const target = acked + n
        onAck = () => acked >= target && resolve()
      })
    const load = publishers.map(async (publisher, p) => {
      while (publishing) {
        await publisher.ok({
          type: 'submit',
          collection,
          document: `doc${p}`,
          op: [{ p: ['n'], oi: acked }],
        })
        acked++
        onAck()
      }
    })
    // Let some of the concurrent load be acked before the resubscribe.
    await acks(25)
    const back = await TestClient.connect(server, { user_id: 'returning' })
    const reply = await back.ok({ type: 'subscribe', collection, since: { epoch, offset: seen } })
    expect(reply.data.recovered).toBe(true)
    expect(reply.data.epoch).toBe(epoch)
    expect(reply.data.offset).toBeGreaterThanOrEqual(500)
    // Keep publishing a little after the reply, then stop.
    await acks(25)
    publishing = false
    await Promise.all(load)
    const head = 500 + acked
    expect(head).toBeGreaterThan(reply.data.offset)

    const ops = await back.collect(head, (m) => m.type === 'op')
    expect(ops.map((m) => m.data.offset)).toEqual(Array.from({ length: head }, (_, i) => i + 1))
    // Replayed ones came before the reply, live ones after it.
    const replyIndex = back.received.findIndex((m) => m.type === 'subscribe')
    const replayed = back.received.slice(0, replyIndex).filter((m) => m.type === 'op')
    expect(replayed.at(-1)?.data.offset).toBe(reply.data.offset)
    await back.settle()
    expect(back.all((m) => m.type === 'op')).toHaveLength(head)
    await back.close()
    await Promise.all(publishers.map((p) => p.close()))
  })

  test('replayed frames are the frames that were sent live, channel broadcasts included', async () => {
    const collection = uniqueName('record')
    const live = await TestClient.connect(server)
    await live.ok({ type: 'subscribe', collection })
    await publishRecord(collection, 'r1', 'a')
    await postJson(server, '/api/ws/broadcast/channel', {
      channel: collection,
      message: { reload: true },
    })
    await postJson(server, '/api/ws/broadcast/channel', {
      channel: `${collection}.r1`,
      message: 'doc-note',
    })
    const liveFrames = await live.collect(3, (m) => m.type === 'op' || m.type === 'message')

    const late = await TestClient.connect(server)
    const reply = await late.ok({
      type: 'subscribe',
      collection,
      since: { epoch: liveFrames[0]?.data.epoch, offset: 0 },
    })
    expect(reply.data).toMatchObject({ recovered: true, offset: 3 })
    const replayed = late.received.filter((m) => m.type === 'op' || m.type === 'message')
    expect(replayed).toEqual(liveFrames)
    await Promise.all([live.close(), late.close()])
  })

  test('a different epoch or an offset past the head is not recovered and replays nothing', async () => {
    const collection = uniqueName('record')
    await publishRecord(collection, 'r', 1)
    const client = await TestClient.connect(server)
    const wrongEpoch = await client.ok({
      type: 'subscribe',
      collection,
      since: { epoch: 'other', offset: 0 },
    })
    expect(wrongEpoch.data).toMatchObject({ recovered: false, offset: 1 })
    await client.ok({ type: 'unsubscribe', collection })
    const future = await client.ok({
      type: 'subscribe',
      collection,
      since: { epoch: wrongEpoch.data.epoch, offset: 99 },
    })
    expect(future.data.recovered).toBe(false)
    expect(client.all((m) => m.type === 'op')).toHaveLength(0)
    // Subscribed all the same: live messages arrive.
    await publishRecord(collection, 'r', 2)
    expect((await client.next((m) => m.type === 'op')).data.offset).toBe(2)
    await client.close()
  })

  test('a collection resumes with {epoch, offset}, a document with {v}', async () => {
    const client = await TestClient.connect(server)
    const onCollection = await client.request({
      type: 'subscribe',
      collection: 'c1',
      since: { v: 0 },
    })
    expect(onCollection.error?.code).toBe(400)
    const onDocument = await client.request({
      type: 'subscribe',
      collection: 'c1',
      document: 'd',
      since: { epoch: 'e', offset: 0 },
    })
    expect(onDocument.error?.code).toBe(400)
    await client.close()
  })
})

describe('document resume', () => {
  test('replays the ops after v and the document messages after the op that made v', async () => {
    const collection = uniqueName('record')
    const writer = await TestClient.connect(server)
    await writer.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
    for (let i = 1; i <= 4; i++)
      await writer.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], na: 1 }] })
    await publishRecord(collection, 'other', 1) // another document: not replayed
    await postJson(server, '/api/ws/broadcast/channel', {
      channel: `${collection}.d`,
      message: 'note',
    })

    const reader = await TestClient.connect(server)
    const reply = await reader.ok({ type: 'subscribe', collection, document: 'd', since: { v: 3 } })
    expect(reply.data).toMatchObject({
      channel: `${collection}.d`,
      v: 5,
      recovered: true,
      offset: 7,
    })
    const replayed = reader.received.filter((m) => m.type === 'op' || m.type === 'message')
    expect(replayed.map((m) => (m.type === 'op' ? `v${m.data.v}` : m.data.message))).toEqual([
      'v3',
      'v4',
      'note',
    ])

    const current = await TestClient.connect(server)
    const upToDate = await current.ok({
      type: 'subscribe',
      collection,
      document: 'd',
      since: { v: 5 },
    })
    expect(upToDate.data).toMatchObject({ v: 5, recovered: true })
    expect(current.all((m) => m.type === 'op')).toHaveLength(0)

    const ahead = await current.ok({
      type: 'subscribe',
      collection,
      document: 'e',
      since: { v: 9 },
    })
    expect(ahead.data).toMatchObject({ v: 0, recovered: false })
    await Promise.all([writer.close(), reader.close(), current.close()])
  })
})

describe('retention', () => {
  test('prunes past HISTORY_MAX_PER_COLLECTION; resuming from a pruned offset is not recovered', async () => {
    const small = await startServerOnTestStore({
      HISTORY_MAX_PER_COLLECTION: '10',
      HISTORY_PRUNE_INTERVAL: '3600',
    })
    try {
      const collection = uniqueName('record')
      const writer = await TestClient.connect(small)
      await writer.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
      for (let i = 0; i < 24; i++)
        await writer.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], na: 1 }] })
      const { epoch } = (await writer.ok({ type: 'subscribe', collection })).data
      expect(await small.retention.pass()).toBe(15)

      const history = await fetch(`${small.url}/api/ws/history?channel=${collection}`).then((r) =>
        r.json(),
      )
      expect(history.messages.map((m: { data: { offset: number } }) => m.data.offset)).toEqual(
        Array.from({ length: 10 }, (_, i) => i + 16),
      )
      // The snapshot is kept; offsets keep counting from the head.
      expect((await writer.ok({ type: 'query', collection, document: 'd' })).data).toEqual({
        v: 25,
        data: { n: 24 },
      })
      expect(
        (await writer.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], na: 1 }] }))
          .data,
      ).toEqual({
        v: 25,
        offset: 26,
      })

      const pruned = await TestClient.connect(small)
      const lost = await pruned.ok({ type: 'subscribe', collection, since: { epoch, offset: 3 } })
      expect(lost.data.recovered).toBe(false)
      expect(pruned.all((m) => m.type === 'op')).toHaveLength(0)
      const lostDoc = await pruned.ok({
        type: 'subscribe',
        collection,
        document: 'd',
        since: { v: 3 },
      })
      expect(lostDoc.data.recovered).toBe(false)

      const recent = await TestClient.connect(small)
      const kept = await recent.ok({ type: 'subscribe', collection, since: { epoch, offset: 15 } })
      expect(kept.data.recovered).toBe(true)
      expect(recent.all((m) => m.type === 'op').map((m) => m.data.offset)).toEqual(
        Array.from({ length: 11 }, (_, i) => i + 16),
      )

      // A stale op that needs pruned history to transform is 409.
      const tooOld = await writer.request({
        type: 'submit',
        collection,
        document: 'd',
        v: 2,
        op: [{ p: ['n'], na: 1 }],
      })
      expect(tooOld.error?.code).toBe(409)
      expect(tooOld.error?.details?.v).toBe(26)
      await Promise.all([writer.close(), pruned.close(), recent.close()])
    } finally {
      await small.close()
    }
  })

  test('prunes entries older than HISTORY_TTL', async () => {
    const short = await startServerOnTestStore({
      HISTORY_TTL: '0.2',
      HISTORY_PRUNE_INTERVAL: '3600',
    })
    try {
      const collection = uniqueName('record')
      for (let i = 0; i < 5; i++)
        await postJson(short, '/api/ws/broadcast/channel', { channel: collection, message: i })
      expect(await short.retention.pass()).toBe(0)
      await Bun.sleep(250) // the entries' age is what this test is about
      await postJson(short, '/api/ws/broadcast/channel', { channel: collection, message: 'fresh' })
      expect(await short.retention.pass()).toBe(5)
      const history = await fetch(`${short.url}/api/ws/history?channel=${collection}`).then((r) =>
        r.json(),
      )
      expect(history.messages.map((m: { data: { message: unknown } }) => m.data.message)).toEqual([
        'fresh',
      ])
      expect(history.head).toBe(6)
    } finally {
      await short.close()
    }
  })

  test('the background pass runs on its own', async () => {
    const auto = await startServerOnTestStore({
      HISTORY_MAX_PER_COLLECTION: '2',
      HISTORY_PRUNE_INTERVAL: '0.05',
    })
    try {
      const collection = uniqueName('record')
      for (let i = 0; i < 6; i++)
        await postJson(auto, '/api/ws/broadcast/channel', { channel: collection, message: i })
      const { eventually } = await import('./helpers.ts')
      await eventually(async () => {
        const history = await fetch(`${auto.url}/api/ws/history?channel=${collection}`).then((r) =>
          r.json(),
        )
        expect(history.messages.map((m: { data: { message: unknown } }) => m.data.message)).toEqual(
          [4, 5],
        )
      })
    } finally {
      await auto.close()
    }
  })
})
