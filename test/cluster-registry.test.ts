import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import Redis from 'ioredis'
import {
  DEFAULT_TIMINGS,
  type NodeCounters,
  Registry,
  type RegistryTimings,
} from '../src/cluster/registry.ts'
import { ConfigError } from '../src/config.ts'
import { createLogger } from '../src/observability/logger.ts'
import { eventually, within } from './helpers.ts'
import { freshRedisPrefix, REDIS_URL, requireServices } from './support/services.ts'

await requireServices()

const logger = createLogger({ logLevel: 'silent', logFormat: 'json' })

/** Short timings for the lease and takeover tests (the lost bound is tested with the real ones). */
const QUICK: RegistryTimings = { heartbeatMs: 200, lostAfterMs: 1000, leaseMs: 1200, renewMs: 300 }

interface Cleanup {
  by: string
  nodeId: string
  endSessions: boolean
  at: number
}

/**
 * A registry on its own Redis connection, with hooks that record what the
 * registry asks of them, and an inbox subscription as a server has.
 */
class Node {
  readonly redis = new Redis(REDIS_URL)
  readonly subscriber = new Redis(REDIS_URL)
  readonly counters: NodeCounters = {
    connections: 0,
    users: 0,
    channels: 0,
    subscriptions: 0,
    messagesIn: {},
    messagesOut: {},
    errors: {},
  }
  readonly declared: Array<'lost' | 'taken'> = []
  resyncs = 0
  readonly registry: Registry

  constructor(
    readonly nodeId: string,
    private readonly prefix: string,
    cleanups: Cleanup[],
    timings: RegistryTimings = DEFAULT_TIMINGS,
  ) {
    // Dropped on purpose in some tests.
    this.redis.on('error', () => {})
    this.subscriber.on('error', () => {})
    this.registry = new Registry(
      this.redis,
      nodeId,
      prefix,
      {
        counters: () => this.counters,
        cleanup: async (lost, endSessions) => {
          cleanups.push({ by: nodeId, nodeId: lost, endSessions, at: performance.now() })
        },
        declaredLost: (reason) => this.declared.push(reason),
        resync: async () => {
          this.resyncs++
        },
        listening: async (id) => {
          const [, subscribers] = (await this.redis.pubsub('NUMSUB', this.inbox(id))) as [
            string,
            number,
          ]
          return subscribers > 0
        },
      },
      logger,
      timings,
    )
  }

  inbox(nodeId: string): string {
    return `${this.prefix}inbox:${nodeId}`
  }

  async start(): Promise<this> {
    await this.registry.start()
    await this.subscriber.subscribe(this.inbox(this.nodeId))
    return this
  }

  /** Silent as a killed process: the connections go, the timers keep failing. */
  kill(): void {
    this.redis.disconnect()
    this.subscriber.disconnect()
  }

  async close(): Promise<void> {
    await this.registry.stop()
    this.kill()
  }
}

let redis: Redis
let prefix: ReturnType<typeof freshRedisPrefix>
const nodes: Node[] = []
const started = (node: Node) => {
  nodes.push(node)
  return node.start()
}

beforeAll(() => {
  prefix = freshRedisPrefix()
  redis = new Redis(REDIS_URL)
})
afterAll(async () => {
  await Promise.all(nodes.map((node) => node.close()))
  await prefix.clean()
  redis.disconnect()
})

/** A fresh key prefix per test, so tests see no node of another. */
const scope = () => `${prefix.prefix}${Math.random().toString(36).slice(2, 8)}:`

describe('registry', () => {
  test('every node is listed with the counters of its last heartbeat', async () => {
    const at = scope()
    const cleanups: Cleanup[] = []
    const [a, b] = await Promise.all([
      started(new Node('a', at, cleanups)),
      started(new Node('b', at, cleanups)),
    ])
    const first = await a.registry.live()
    expect(first.nodes.map((n) => n.nodeId).sort()).toEqual(['a', 'b'])

    b.counters.connections = 7
    b.counters.messagesOut = { op: 3 }
    const seen = (await b.registry.live()).nodes.find((n) => n.nodeId === 'b')?.lastSeen ?? 0
    // Written by b's next heartbeat, read by a.
    await eventually(async () => {
      const info = (await a.registry.live()).nodes.find((n) => n.nodeId === 'b')
      expect(info).toMatchObject({ connections: 7, messagesOut: { op: 3 } })
      expect(info?.lastSeen).toBeGreaterThan(seen)
    }, 3 * DEFAULT_TIMINGS.heartbeatMs)

    // A graceful stop leaves at once.
    await b.close()
    expect((await a.registry.live()).nodes.map((n) => n.nodeId)).toEqual(['a'])
    expect(await redis.exists(`${at}node:b`)).toBe(0)
    // What it still had in Redis goes with it, but its sessions are its own to end.
    expect(cleanups).toEqual([{ by: 'b', nodeId: 'b', endSessions: false, at: expect.any(Number) }])
  })

  test('a silent node is declared lost within 10 s by exactly one survivor, which cleans up', async () => {
    const at = scope()
    const cleanups: Cleanup[] = []
    const [a, b, c] = await Promise.all([
      started(new Node('a', at, cleanups)),
      started(new Node('b', at, cleanups)),
      started(new Node('c', at, cleanups)),
    ])
    c.registry.noteUser('carol', 2)
    a.registry.noteUser('carol', 1)
    await eventually(async () => expect(await redis.hget(`${at}users`, 'carol')).toBe('3'))
    const lastBeat = Number(await redis.zscore(`${at}nodes`, 'c'))
    const killedAt = performance.now()
    c.kill()

    await within(
      eventually(() => expect(cleanups).toHaveLength(1), 15_000),
      15_000,
      'cleanup of c',
    )
    const [cleanup] = cleanups as [Cleanup]
    expect(cleanup).toMatchObject({ nodeId: 'c', endSessions: true })
    expect(['a', 'b']).toContain(cleanup.by)
    const elapsed = cleanup.at - killedAt
    // Silent for lostAfter since its last heartbeat (which was up to one heartbeat before the kill),
    // found by a sweep (every heartbeat/2).
    const { heartbeatMs, lostAfterMs } = DEFAULT_TIMINGS
    expect(elapsed).toBeGreaterThanOrEqual(lostAfterMs - heartbeatMs)
    expect(elapsed).toBeLessThanOrEqual(lostAfterMs + heartbeatMs / 2 + 500)
    const [time] = await redis.time()
    expect(Number(time) * 1000 - lastBeat).toBeGreaterThanOrEqual(lostAfterMs - 1000)

    // Its registration, user counts and claim are gone; its tombstone stays.
    await eventually(async () => expect(await redis.zcard(`${at}lost`)).toBe(0))
    expect(await redis.zscore(`${at}nodes`, 'c')).toBeNull()
    expect(await redis.exists(`${at}node:c`, `${at}node-users:c`, `${at}claim:c`)).toBe(0)
    expect(await redis.hget(`${at}users`, 'carol')).toBe('1')
    expect(await redis.get(`${at}gone:c`)).not.toBeNull()
    expect((await a.registry.live()).nodes.map((n) => n.nodeId).sort()).toEqual(['a', 'b'])
    // A few more sweeps claim nothing more.
    await Bun.sleep(2 * heartbeatMs)
    expect(cleanups).toHaveLength(1)

    // c was only cut off: back, it learns it was declared lost, drops its connections and rejoins.
    await c.redis.connect()
    await eventually(() => expect(c.declared).toEqual(['lost']), 3 * heartbeatMs)
    await eventually(() => expect(c.registry.status).toBe('live'), 3 * heartbeatMs)
    expect(c.resyncs).toBe(1)
    expect((await b.registry.live()).nodes.map((n) => n.nodeId).sort()).toEqual(['a', 'b', 'c'])
  }, 30_000)

  test('Redis forgetting a node (a flush, a restart) makes it register again without a loss', async () => {
    const at = scope()
    const cleanups: Cleanup[] = []
    const a = await started(new Node('a', at, cleanups, QUICK))
    // At once, as a flush does: a heartbeat between two commands would see half of it.
    await redis.multi().zrem(`${at}nodes`, 'a').del(`${at}node:a`).exec()
    await eventually(async () => expect(await redis.zscore(`${at}nodes`, 'a')).not.toBeNull())
    // Registered first, then its state re-published.
    await eventually(() => expect(a.resyncs).toBe(1))
    expect(a.declared).toEqual([])
    expect(a.registry.status).toBe('live')
  })

  test('the leader lease moves to a survivor when its holder stops renewing', async () => {
    const at = scope()
    const cleanups: Cleanup[] = []
    const a = await started(new Node('a', at, cleanups, QUICK))
    const [b, c] = await Promise.all([
      started(new Node('b', at, cleanups, QUICK)),
      started(new Node('c', at, cleanups, QUICK)),
    ])
    expect([a, b, c].map((n) => n.registry.leader)).toEqual([true, false, false])
    expect(await redis.get(`${at}leader`)).toBe('a')

    const killedAt = performance.now()
    a.kill()
    const next = await within(
      eventually(() => {
        const leaders = [b, c].filter((n) => n.registry.leader)
        expect(leaders).toHaveLength(1)
        return leaders[0] as Node
      }, 5000),
      6000,
      'a new leader',
    )
    // Not before the lease ran out in Redis, and within one renewal after.
    const took = performance.now() - killedAt
    expect(took).toBeGreaterThanOrEqual(QUICK.leaseMs - QUICK.renewMs)
    expect(took).toBeLessThanOrEqual(QUICK.leaseMs + QUICK.renewMs + 300)
    // The old holder no longer believes it leads once its lease ran out.
    await eventually(() => expect(a.registry.leader).toBe(false), QUICK.leaseMs)

    // A graceful stop hands the lease over at the next renewal of another node.
    const stoppedAt = performance.now()
    await next.close()
    const last = next === b ? c : b
    await eventually(() => expect(last.registry.leader).toBe(true), 3 * QUICK.renewMs)
    expect(performance.now() - stoppedAt).toBeLessThan(QUICK.leaseMs)
  })

  test('per-user counts add up over nodes, idempotently, and follow replacements', async () => {
    const at = scope()
    const cleanups: Cleanup[] = []
    const [a, b] = await Promise.all([
      started(new Node('a', at, cleanups, QUICK)),
      started(new Node('b', at, cleanups, QUICK)),
    ])
    a.registry.noteUser('u1', 2)
    a.registry.noteUser('u2', 1)
    b.registry.noteUser('u1', 1)
    await eventually(async () =>
      expect(await a.registry.userConnections('u1')).toEqual({ total: 3, here: 2 }),
    )
    expect((await a.registry.holders('u1')).sort()).toEqual(['a', 'b'])
    expect(await a.registry.holders('u2')).toEqual(['a'])
    expect((await a.registry.live()).users).toBe(2)

    // The same absolute count again changes nothing (a replayed write).
    a.registry.noteUser('u1', 2)
    a.registry.noteUser('u1', 1)
    await eventually(async () =>
      expect(await b.registry.userConnections('u1')).toEqual({ total: 2, here: 1 }),
    )
    await a.registry.replaceUsers([['u3', 4]])
    expect(await redis.hgetall(`${at}users`)).toEqual({ u1: '1', u3: '4' })
    await b.registry.replaceUsers([])
    expect(await redis.hgetall(`${at}users`)).toEqual({ u3: '4' })
    expect(await b.registry.holders('u1')).toEqual([])
  })

  test('a NODE_ID in use by a live process is refused; one whose process died is taken over', async () => {
    const at = scope()
    const cleanups: Cleanup[] = []
    const live = await started(new Node('same', at, cleanups, QUICK))
    const twin = new Node('same', at, cleanups, QUICK)
    const refused = await twin.start().then(
      () => undefined,
      (error: unknown) => error,
    )
    twin.kill()
    expect(refused).toBeInstanceOf(ConfigError)
    expect((refused as ConfigError).variable).toBe('NODE_ID')
    expect((refused as Error).message).toContain('"same" is in use by a live process')
    expect(live.declared).toEqual([])

    // The process dies and is restarted at once under its NODE_ID.
    live.registry.noteUser('dana', 1)
    await eventually(async () => expect(await redis.hget(`${at}users`, 'dana')).toBe('1'))
    live.kill()
    const restartedAt = performance.now()
    const restarted = await started(new Node('same', at, cleanups, QUICK))
    // Its connections went with it: one missed heartbeat is enough.
    expect(performance.now() - restartedAt).toBeLessThan(QUICK.heartbeatMs + 500 + 200)
    expect(cleanups).toEqual([
      { by: 'same', nodeId: 'same', endSessions: true, at: expect.any(Number) },
    ])
    expect(await redis.hget(`${at}users`, 'dana')).toBeNull()
    expect(restarted.registry.status).toBe('live')

    // Should the old one come back after all, it finds its NODE_ID taken and writes nothing.
    await live.redis.connect()
    await eventually(() => expect(live.declared).toEqual(['taken']), 3000)
    expect(live.registry.writable).toBe(false)
    expect(restarted.registry.status).toBe('live')
  }, 20_000)
})
