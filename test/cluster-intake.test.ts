import { describe, expect, test } from 'bun:test'
import Redis from 'ioredis'
import { eventually, getJson, type ServerMessage, uniqueName } from './helpers.ts'
import { withCleanup } from './support/cleanup.ts'
import { type Cluster, type ClusterNode, startCluster } from './support/cluster.ts'
import { fullHistory } from './support/history.ts'
import { startRelay } from './support/relay.ts'
import {
  freshDatabase,
  freshRedisPrefix,
  POSTGRES_ADMIN_URL,
  requireServices,
} from './support/services.ts'

await requireServices()

const GROUP = 'teable-realtime'
const DOCUMENTS = 10

/**
 * A cluster consuming a stream of its own. The cluster's key prefix is made
 * inside startCluster, after its environment is fixed, so the stream lives
 * under a prefix of the test's, deleted by its own cleanup.
 */
async function intakeCluster(
  defer: (step: () => unknown) => void,
  env: Record<string, string> = {},
): Promise<{ cluster: Cluster; stream: string; redis: Redis }> {
  const keys = freshRedisPrefix()
  defer(() => keys.clean())
  const stream = `${keys.prefix}intake`
  const cluster = await startCluster({
    nodes: 3,
    env: { INTAKE_STREAM: stream, INTAKE_RETRY_AFTER: '0.2', ...env },
  })
  defer(() => cluster.stop())
  const redis = new Redis(keys.url)
  defer(() => redis.disconnect())
  return { cluster, stream, redis }
}

/** Writes entries `from`…`to`-1 in stream order: entry n appends n to the log of document n % 10. */
async function produce(redis: Redis, stream: string, collection: string, from: number, to: number) {
  const pipeline = redis.pipeline()
  for (let n = from; n < to; n++)
    pipeline.xadd(
      stream,
      '*',
      'route',
      'publish/document',
      'body',
      JSON.stringify({
        collection,
        document: `d${n % DOCUMENTS}`,
        operation: [{ p: ['log', 0], li: n }],
      }),
    )
  const replies = (await pipeline.exec()) ?? []
  for (const [error] of replies) if (error) throw error
}

interface Status {
  length: number
  pending: number
  dead: number
  lag: number
}

const status = async (cluster: Cluster, node: ClusterNode) => {
  const reply = await getJson(node, '/api/ws/intake', cluster.adminHeaders)
  expect(reply.status).toBe(200)
  return reply.body as Status
}

/** Waits until all `count` entries are delivered, acknowledged, and none dead-lettered. */
const drained = (cluster: Cluster, node: ClusterNode, count: number, ms: number) =>
  eventually(async () => {
    const now = await status(cluster, node)
    expect(now).toEqual({ ...now, length: count, lag: 0, pending: 0, dead: 0 })
  }, ms)

/** The process holding the consumer lease. */
async function holder(cluster: Cluster, redis: Redis, stream: string): Promise<ClusterNode> {
  const id = await redis.get(`${stream}:lease:${GROUP}`)
  const node = cluster.nodes.find((n) => n.id === id)
  if (!node) throw new Error(`no process holds the intake lease (${id})`)
  return node
}

/** One of a process's intake counters from /metrics. */
async function counter(
  cluster: Cluster,
  node: ClusterNode,
  name: 'processed' | 'retried',
): Promise<number> {
  const response = await fetch(`${node.url}/metrics`, { headers: cluster.adminHeaders })
  const text = await response.text()
  const line = new RegExp(`^teable_realtime_intake_${name}_total (\\d+)$`, 'm').exec(text)
  if (!line) throw new Error(`no intake_${name}_total in ${node.id}'s metrics`)
  return Number(line[1])
}

/**
 * Every entry 0…count-1 took effect once, each document's in stream order:
 * the op log of each document holds its numbers ascending, each once, at
 * consecutive versions.
 */
async function expectAppliedOnceInOrder(
  cluster: Cluster,
  node: ClusterNode,
  collection: string,
  count: number,
) {
  const { messages } = await fullHistory(node, collection, cluster.adminHeaders)
  const ops = messages.filter((m) => m.type === 'op')
  expect(ops).toHaveLength(count)
  const byDocument = new Map<string, ServerMessage[]>()
  for (const op of ops) {
    const list = byDocument.get(op.document as string) ?? []
    list.push(op)
    byDocument.set(op.document as string, list)
  }
  for (let d = 0; d < DOCUMENTS; d++) {
    const log = byDocument.get(`d${d}`) ?? []
    const expected = Array.from({ length: count }, (_, n) => n).filter((n) => n % DOCUMENTS === d)
    expect(log.map((m) => (m.data.op as Array<{ li: number }>)[0]?.li)).toEqual(expected)
    expect(log.map((m) => m.data.v)).toEqual(expected.map((_, i) => i))
  }
}

describe('intake queue across processes', () => {
  test(
    'three processes: 1,000 entries for 10 documents apply once each, in stream order',
    () =>
      withCleanup(async (defer) => {
        const { cluster, stream, redis } = await intakeCluster(defer)
        const collection = uniqueName('record')
        const count = 1000
        // In chunks, so the consumer reads several batches while entries still arrive.
        for (let from = 0; from < count; from += 100)
          await produce(redis, stream, collection, from, from + 100)
        const [any] = cluster.nodes as [ClusterNode]
        await drained(cluster, any, count, 20_000)
        await expectAppliedOnceInOrder(cluster, cluster.nodes[2] as ClusterNode, collection, count)
        // One consumes, the others stand by.
        const consumer = await holder(cluster, redis, stream)
        for (const node of cluster.nodes)
          expect(await counter(cluster, node, 'processed')).toBe(node === consumer ? count : 0)
      }),
    30_000,
  )

  test(
    'the consuming process SIGKILLed mid-stream: a survivor takes over, nothing lost, nothing applied twice',
    () =>
      withCleanup(async (defer) => {
        const { cluster, stream, redis } = await intakeCluster(defer)
        const collection = uniqueName('record')
        const first = await holder(cluster, redis, stream)

        // Entries keep coming until the consumer is killed, some way in, each chunk once it is
        // at most 400 behind (small reads, so the kill lands while some are being applied).
        let produced = 0
        let killed = false
        const producer = (async () => {
          while (!killed && produced < 3000) {
            await eventually(async () => {
              if (killed) return
              const behind = produced - (await counter(cluster, first, 'processed'))
              expect(behind).toBeLessThanOrEqual(400)
            }, 10_000)
            if (killed) return
            await produce(redis, stream, collection, produced, produced + 100)
            produced += 100
          }
        })()
        await eventually(
          async () => expect(await counter(cluster, first, 'processed')).toBeGreaterThan(300),
          10_000,
        )
        first.kill('SIGKILL')
        killed = true
        await producer
        await first.exited
        const unacknowledged = (
          (await redis.xpending(stream, GROUP)) as [number, string | null, string | null, unknown]
        )[0]
        // More while no process consumes (the lease runs out first).
        await produce(redis, stream, collection, produced, produced + 500)
        const count = produced + 500
        console.log(
          `killed ${first.id} after ${produced} entries written; ${unacknowledged} delivered to it and not acknowledged`,
        )

        const survivors = cluster.nodes.filter((node) => node !== first)
        const [any] = survivors as [ClusterNode]
        await drained(cluster, any, count, 20_000)
        const second = await holder(cluster, redis, stream)
        expect(survivors).toContain(second)
        expect(await counter(cluster, second, 'processed')).toBeGreaterThanOrEqual(500)
        expect(second.lines.some((line) => line.includes('"msg":"intake: consuming"'))).toBe(true)
        await expectAppliedOnceInOrder(cluster, any, collection, count)
      }),
    40_000,
  )

  test(
    'PostgreSQL unreachable: entries stay pending and are retried; once it is back, all applied in order',
    () =>
      withCleanup(async (defer) => {
        const database = await freshDatabase()
        defer(() => database.drop())
        const postgres = new URL(POSTGRES_ADMIN_URL)
        const relay = await startRelay({
          host: postgres.hostname,
          port: Number(postgres.port || 5432),
        })
        defer(() => relay.close())
        const viaRelay = new URL(database.url)
        viaRelay.port = String(relay.port)
        // The cluster's own fresh database goes unused: DATABASE_URL here wins.
        const { cluster, stream, redis } = await intakeCluster(defer, {
          DATABASE_URL: viaRelay.href,
          INTAKE_MAX_ATTEMPTS: '1000',
        })
        const collection = uniqueName('record')
        const [any] = cluster.nodes as [ClusterNode]
        await produce(redis, stream, collection, 0, 100)
        await drained(cluster, any, 100, 10_000)
        const consumer = await holder(cluster, redis, stream)

        await relay.down()
        await produce(redis, stream, collection, 100, 300)
        await eventually(async () => {
          expect(await counter(cluster, consumer, 'retried')).toBeGreaterThan(0)
          const now = await status(cluster, any)
          expect(now.pending).toBeGreaterThan(0)
          expect(now.dead).toBe(0)
        }, 10_000)
        // Still retrying, still nothing lost or dead-lettered: the entries wait for the store.
        const retried = await counter(cluster, consumer, 'retried')
        await eventually(
          async () => expect(await counter(cluster, consumer, 'retried')).toBeGreaterThan(retried),
          5000,
        )
        expect((await status(cluster, any)).dead).toBe(0)

        await relay.up()
        await drained(cluster, any, 300, 20_000)
        await expectAppliedOnceInOrder(cluster, cluster.nodes[1] as ClusterNode, collection, 300)
      }),
    40_000,
  )
})
