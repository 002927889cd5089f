import { afterAll, beforeAll, expect, test } from 'bun:test'
import { TestClient, uniqueName } from './helpers.ts'
import { type Cluster, startCluster } from './support/cluster.ts'
import { requireServices } from './support/services.ts'

await requireServices()
let cluster: Cluster
beforeAll(async () => {
  cluster = await startCluster({
    nodes: 1,
    env: { CONNECT_RATE_PER_IP: '100000', MESSAGE_RATE: '100000' },
  })
}, 30_000)
afterAll(() => cluster?.stop())

// In SQLite (and at f594cf6) messages of one socket are handled in order:
// subscribe then unsubscribe leaves the client unsubscribed. In cluster mode a
// document subscribe waits for LivePositions (async); an unsubscribe sent right
// after is handled first (nothing to leave), then the subscribe goes live.
test('subscribe then unsubscribe (pipelined) leaves the client unsubscribed', async () => {
  const n0 = cluster.nodes[0] as Cluster['nodes'][number]
  const collection = uniqueName('record')
  const writer = await TestClient.connect(n0)
  await writer.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
  const reader = await TestClient.connect(n0)
  reader.send({ type: 'subscribe', id: 's', collection, document: 'd' })
  reader.send({ type: 'unsubscribe', id: 'u', collection, document: 'd' })
  const s = await reader.next((m) => m.id === 's')
  const u = await reader.next((m) => m.id === 'u')
  const order = reader.received.filter((m) => m.id === 's' || m.id === 'u').map((m) => m.id)
  await writer.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], oi: 1 }] })
  await Bun.sleep(300)
  await reader.settle()
  const live = reader.all((m) => m.type === 'op')
  expect({ order, s: s.type, u: u.type, liveOpsAfterUnsubscribe: live.length }).toEqual({
    order: ['s', 'u'],
    s: 'subscribe',
    u: 'unsubscribe',
    liveOpsAfterUnsubscribe: 0,
  })
}, 60_000)
