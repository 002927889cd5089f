import { afterAll, beforeAll, expect, test } from 'bun:test'
import { TestClient, uniqueName } from './helpers.ts'
import { type Cluster, startCluster } from './support/cluster.ts'
import { requireServices } from './support/services.ts'

await requireServices()
let cluster: Cluster
beforeAll(async () => {
  cluster = await startCluster({
    nodes: 1,
    env: {
      CONNECT_RATE_PER_IP: '100000',
      MESSAGE_RATE: '100000',
      MAX_SUBSCRIPTIONS_PER_CONNECTION: '3',
    },
  })
}, 30_000)
afterAll(() => cluster?.stop())
const node = () => cluster.nodes[0] as Cluster['nodes'][number]

// Pending (asynchronous) subscribes are not counted against the limit.
test('MAX_SUBSCRIPTIONS_PER_CONNECTION holds for pipelined document subscribes', async () => {
  const collection = uniqueName('record')
  const c = await TestClient.connect(node())
  for (let i = 0; i < 6; i++) c.send({ type: 'subscribe', id: i, collection, document: `d${i}` })
  const replies = await Promise.all(Array.from({ length: 6 }, (_, i) => c.next((m) => m.id === i)))
  expect(replies.filter((r) => r.type === 'subscribe').length).toBeLessThanOrEqual(3)
}, 30_000)

// A resume (since v) followed at once by a submit: the submit's ack must come
// after the replayed ops it was transformed against (PROTOCOL: an OT client
// sees every op before its ack). In cluster mode the replay starts only after
// asynchronous reads, so holdAck finds no replay and the ack goes first.
test('ack of a submit pipelined after a resume comes after the replayed ops', async () => {
  const bad: string[] = []
  for (let round = 0; round < 20 && bad.length === 0; round++) {
    const collection = uniqueName('record')
    const w = await TestClient.connect(node())
    await w.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
    for (let i = 0; i < 3; i++)
      await w.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['n'], oi: i + 1 }] })
    const c = await TestClient.connect(node())
    c.send({ type: 'subscribe', id: 's', collection, document: 'd', since: { v: 1 } })
    c.send({ type: 'submit', id: 'p', collection, document: 'd', v: 1, op: [{ p: ['m'], oi: 1 }] })
    await c.next((m) => m.id === 's')
    await c.next((m) => m.id === 'p')
    const seq = c.received
      .filter((m) => m.type === 'op' || m.id === 'p' || m.id === 's')
      .map((m) => (m.type === 'op' ? `op${m.data.v}` : m.id))
    const ackAt = seq.indexOf('p')
    const lastOp = seq.lastIndexOf('op3')
    if (lastOp === -1 || ackAt < lastOp) bad.push(seq.join(','))
    await c.close()
    await w.close()
  }
  expect(bad).toEqual([])
}, 60_000)
