import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { type as json0 } from 'ot-json0'
import {
  eventually,
  getJson,
  postJson,
  type ServerMessage,
  TestClient,
  uniqueName,
} from './helpers.ts'
import { type Cluster, startCluster } from './support/cluster.ts'
import { requireServices } from './support/services.ts'

// Run by `bun run test` when PostgreSQL and Redis answer (it names this file otherwise).
await requireServices()

/**
 * The guarantees of CLUSTER.md that concern documents and offsets, on three
 * real processes sharing PostgreSQL and Redis: versions, dedupe across
 * processes, gap-free offsets, exclude across processes, and a document
 * subscribe that goes live in the middle of writes from another process.
 */
let cluster: Cluster
beforeAll(async () => {
  cluster = await startCluster({
    nodes: 3,
    env: { CONNECT_RATE_PER_IP: '100000', MESSAGE_RATE: '100000' },
  })
}, 30_000)
afterAll(() => cluster?.stop())

const node = (i: number) => cluster.nodes[i] as Cluster['nodes'][number]
const history = async (channel: string) => {
  const reply = await getJson(
    node(0),
    `/api/ws/history?channel=${channel}&limit=1000`,
    cluster.adminHeaders,
  )
  expect(reply.status).toBe(200)
  return reply.body.messages as ServerMessage[]
}

describe('documents across processes', () => {
  test('submits to one document at one v on three processes: each applied (transformed) once, never two at one v', async () => {
    const collection = uniqueName('record')
    const clients = await Promise.all([0, 1, 2].map((i) => TestClient.connect(node(i))))
    const [first] = clients as [TestClient]
    await first.ok({ type: 'submit', collection, document: 'd', create: { data: { items: [] } } })
    // Every client writes 20 ops, all based on v 1: the later ones must be transformed.
    const replies = await Promise.all(
      clients.flatMap((client, c) =>
        Array.from({ length: 20 }, (_, i) =>
          client.request({
            type: 'submit',
            collection,
            document: 'd',
            v: 1,
            op: [{ p: ['items', 0], li: `${c}-${i}` }],
          }),
        ),
      ),
    )
    expect(replies.map((r) => r.type)).toEqual(replies.map(() => 'submit'))
    const versions = replies.map((r) => r.data.v).sort((a, b) => a - b)
    expect(versions).toEqual(Array.from({ length: 60 }, (_, i) => i + 1))
    // The snapshot every process serves is the history replayed.
    const ops = (await history(`${collection}.d`)).filter((m) => m.type === 'op')
    let data: unknown = null
    for (const op of ops)
      data = op.data.create ? op.data.create.data : json0.apply(data, op.data.op)
    for (const i of [0, 1, 2]) {
      const snapshot = await getJson(
        node(i),
        `/api/ws/documents/${collection}/d`,
        cluster.adminHeaders,
      )
      expect(snapshot.body).toEqual({ v: 61, data })
    }
    expect((data as { items: string[] }).items).toHaveLength(60)
    for (const client of clients) client.socket.close()
  })

  test('a resubmission (same src and seq) on another process is acked with the first result, not applied twice', async () => {
    const collection = uniqueName('record')
    const a = await TestClient.connect(node(0))
    const b = await TestClient.connect(node(1))
    await a.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
    const op = {
      type: 'submit',
      collection,
      document: 'd',
      v: 1,
      src: 'client-x',
      seq: 7,
      op: [{ p: ['n'], na: 5 }],
    }
    const firstAck = await a.ok(op)
    // Other writes in between, then the same submit again through another process.
    await b.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], na: 1 }] })
    const again = await b.ok(op)
    expect(again.data).toEqual(firstAck.data)
    const withoutV = await node(2)
    const c = await TestClient.connect(withoutV)
    const { v: _v, ...noV } = op
    expect((await c.ok(noV)).data).toEqual(firstAck.data)
    const snapshot = await getJson(
      node(2),
      `/api/ws/documents/${collection}/d`,
      cluster.adminHeaders,
    )
    expect(snapshot.body).toEqual({ v: 3, data: { n: 6 } })
    for (const client of [a, b, c]) client.socket.close()
  })

  test('REST publishes to one collection on all three processes get gap-free, unique offsets; a subscriber on each gets them all in order', async () => {
    const table = uniqueName('tbl')
    const collection = `record_${table}`
    const subscribers = await Promise.all([0, 1, 2].map((i) => TestClient.connect(node(i))))
    for (const s of subscribers) await s.ok({ type: 'subscribe', collection })
    const replies = await Promise.all(
      Array.from({ length: 90 }, (_, i) =>
        postJson(
          node(i % 3),
          '/api/ws/publish/record',
          { table_id: table, record_id: `r${i % 9}`, operation: [{ p: ['f'], oi: i }] },
          cluster.adminHeaders,
        ),
      ),
    )
    expect(replies.map((r) => r.status)).toEqual(replies.map(() => 200))
    const offsets = replies.map((r) => r.body.offset).sort((a, b) => a - b)
    expect(offsets).toEqual(Array.from({ length: 90 }, (_, i) => i + 1))
    for (const s of subscribers) {
      const got = await s.collect(90, (m) => m.type === 'op')
      expect(got.map((m) => m.data.offset)).toEqual(offsets)
      s.socket.close()
    }
  })

  test('broadcast/channel exclude names a connection on another process: that one alone is left out', async () => {
    const collection = uniqueName('record')
    const kept = await TestClient.connect(node(0))
    const left = await TestClient.connect(node(1))
    for (const s of [kept, left]) await s.ok({ type: 'subscribe', collection })
    const reply = await postJson(
      node(2),
      '/api/ws/broadcast/channel',
      { channel: collection, message: 'first', exclude: [left.connectionId] },
      cluster.adminHeaders,
    )
    expect(reply.status).toBe(200)
    await postJson(
      node(2),
      '/api/ws/broadcast/channel',
      { channel: collection, message: 'second' },
      cluster.adminHeaders,
    )
    expect((await kept.collect(2, (m) => m.type === 'message')).map((m) => m.data.message)).toEqual(
      ['first', 'second'],
    )
    // The second arrived after the first would have: the excluded one got only the second.
    await left.next((m) => m.type === 'message' && m.data.message === 'second')
    expect(left.all((m) => m.type === 'message').map((m) => m.data.message)).toEqual(['second'])
    for (const s of [kept, left]) s.socket.close()
  })

  test('a document subscribed on one process while another writes it: the reply v and the live ops join without a gap or a double', async () => {
    const collection = uniqueName('record')
    const writer = await TestClient.connect(node(1))
    await writer.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
    let writing = true
    const writes = (async () => {
      while (writing)
        await writer.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], na: 1 }] })
    })()
    const readers: TestClient[] = []
    for (let i = 0; i < 10; i++) {
      const reader = await TestClient.connect(node(i % 2 === 0 ? 0 : 2))
      const reply = await reader.ok({ type: 'subscribe', collection, document: 'd' })
      readers.push(reader)
      reader.received.length = 0 // only what follows the reply
      ;(reader as unknown as { joinedAt: number }).joinedAt = reply.data.v
    }
    writing = false
    await writes
    const last = await writer.ok({
      type: 'submit',
      collection,
      document: 'd',
      op: [{ p: ['n'], na: 1 }],
    })
    for (const reader of readers) {
      const from = (reader as unknown as { joinedAt: number }).joinedAt
      await eventually(
        () => expect(reader.all((m) => m.type === 'op').at(-1)?.data.v).toBe(last.data.v),
        5000,
      )
      const versions = reader.all((m) => m.type === 'op').map((m) => m.data.v)
      expect(versions).toEqual(Array.from({ length: last.data.v - from + 1 }, (_, i) => from + i))
      reader.socket.close()
    }
    writer.socket.close()
  }, 30_000)
})
