import { afterAll, beforeAll, expect, test } from 'bun:test'
import { eventually, getJson, TestClient, uniqueName } from './helpers.ts'
import { type Cluster, startCluster } from './support/cluster.ts'
import { requireServices } from './support/services.ts'

await requireServices()
let cluster: Cluster
beforeAll(async () => {
  cluster = await startCluster({
    nodes: 2,
    env: {
      CONNECT_RATE_PER_IP: '100000',
      MESSAGE_RATE: '100000',
      HISTORY_MAX_PER_COLLECTION: '3',
      HISTORY_PRUNE_INTERVAL: '0.2',
    },
  })
}, 30_000)
afterAll(() => cluster?.stop())

// CommitQueue.load evicts cached documents changed by other processes by reading
// stream_entries in (cachedHead, head]; entries retention already pruned are not
// seen, so a document changed only there stays cached stale: an op is applied
// to the old snapshot at an old v (two ops at one v, the other process's op lost).
test('a document changed on another process whose change was pruned is not used stale', async () => {
  const [n0, n1] = cluster.nodes as [Cluster['nodes'][number], Cluster['nodes'][number]]
  const collection = uniqueName('record')
  const c0 = await TestClient.connect(n0)
  const c1 = await TestClient.connect(n1)
  await c0.ok({ type: 'submit', collection, document: 'd', create: { data: { a: 0, b: 0 } } }) // v1, node0 caches d
  const other = await c1.ok({
    type: 'submit',
    collection,
    document: 'd',
    op: [{ p: ['b'], oi: 1 }],
  })
  expect(other.data.v).toBe(1) // applied at v1 -> v2, on node1
  for (let i = 0; i < 5; i++)
    await c1.ok({ type: 'submit', collection, document: `e${i}`, create: { data: {} } })
  // wait until the change of d at offset 2 is pruned
  await eventually(async () => {
    const r = await getJson(
      n0,
      `/api/ws/history?channel=${collection}&since=0&limit=100`,
      cluster.adminHeaders,
    )
    const offsets = (r.body.messages as Array<{ data: { offset: number } }>).map(
      (m) => m.data.offset,
    )
    if (offsets.includes(2)) throw new Error(`not pruned yet: ${offsets}`)
  }, 10_000)
  const mine = await c0.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['a'], oi: 1 }] })
  const snap = await getJson(n1, `/api/ws/documents/${collection}/d`, cluster.adminHeaders)
  expect({ ackV: mine.data.v, v: snap.body.v, data: snap.body.data }).toEqual({
    ackV: 2,
    v: 3,
    data: { a: 1, b: 1 },
  })
}, 60_000)
