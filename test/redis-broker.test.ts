import { afterAll, afterEach, beforeAll, describe, expect, test } from 'bun:test'
import type { Socket, TCPSocketListener } from 'bun'
import Redis from 'ioredis'
import pino from 'pino'
import type { Committed, NodeBroker } from '../src/broker/broker.ts'
import { MemoryBroker } from '../src/broker/memory-broker.ts'
import { RedisBroker, type RedisBrokerOptions } from '../src/broker/redis-broker.ts'
import { openRedisBus, type RedisBus } from '../src/cluster/redis-bus.ts'
import { openSqliteStore, type SqliteStore } from '../src/store/sqlite.ts'
import type { Store } from '../src/store/store.ts'
import type { StreamEntry } from '../src/streams/entry.ts'
import { freshRedisPrefix, requireServices } from './support/services.ts'

await requireServices()

const redis = freshRedisPrefix()
/** The test's own connection to Redis: raw publishes, CLIENT KILL, PUBSUB NUMSUB. */
const admin = new Redis(redis.url, { lazyConnect: true })

/** Fails the test instead of hanging on an event that never comes. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/**
 * A TCP relay to Redis that the test can stop (connections cut, new ones
 * refused: Redis is "down") and start again on the same port.
 */
function redisRelay() {
  type Client = { upstream: Socket<undefined> | undefined; early: Uint8Array[] }
  const sockets = new Set<Socket<Client> | Socket<undefined>>()
  let listener: TCPSocketListener<Client> | undefined
  let port = 0
  const start = () => {
    listener = Bun.listen<Client>({
      hostname: '127.0.0.1',
      port,
      socket: {
        open(client) {
          client.data = { upstream: undefined, early: [] }
          sockets.add(client)
          void Bun.connect({
            hostname: '127.0.0.1',
            port: 6379,
            socket: {
              open(upstream) {
                sockets.add(upstream)
                client.data.upstream = upstream
                for (const chunk of client.data.early) upstream.write(chunk)
              },
              data: (_, chunk) => void client.write(chunk),
              close(upstream) {
                sockets.delete(upstream)
                client.end()
              },
              error() {},
            },
          }).catch(() => client.end())
        },
        data(client, chunk) {
          if (client.data.upstream) client.data.upstream.write(chunk)
          else client.data.early.push(new Uint8Array(chunk))
        },
        close(client) {
          sockets.delete(client)
          client.data.upstream?.end()
        },
        error() {},
      },
    })
    port = listener.port
  }
  start()
  return {
    url: () => `redis://127.0.0.1:${port}`,
    stop() {
      listener?.stop(true)
      for (const socket of sockets) socket.terminate()
      sockets.clear()
    },
    start,
  }
}

/** Messages of a bus handler, and a way to await the n-th. */
class Inbox {
  readonly messages: string[] = []
  private waiters: Array<{ n: number; resolve(): void }> = []
  readonly handler = (message: string) => {
    this.messages.push(message)
    for (const waiter of this.waiters.filter((w) => w.n <= this.messages.length)) waiter.resolve()
    this.waiters = this.waiters.filter((w) => w.n > this.messages.length)
  }
  count(n: number): Promise<void> {
    if (this.messages.length >= n) return Promise.resolve()
    return within(
      new Promise<void>((resolve) => this.waiters.push({ n, resolve })),
      2000,
      `message ${n}`,
    )
  }
}

let names = 0
const unique = (prefix: string) => `${prefix}_${Date.now().toString(36)}_${++names}`

interface LogLine {
  level: number
  msg: string
}

/** A logger whose lines the test can read. */
function capturedLogger() {
  const lines: LogLine[] = []
  const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) })
  return { logger, lines, count: (msg: string) => lines.filter((l) => l.msg.includes(msg)).length }
}

/** One "process": its own bus and broker, recording what its sockets would be sent. */
interface Node {
  name: string
  bus: RedisBus
  broker: RedisBroker
  log: ReturnType<typeof capturedLogger>
  /** Items delivered here, per collection, in delivery order. */
  got(collection: string): Committed[]
  offsets(collection: string): number[]
  /** Resolves once `offset` (or later) of `collection` was delivered here. */
  receives(collection: string, offset: number): Promise<void>
  /** Commits through this node's broker; settles are recorded in `settled`. */
  commit(collection: string, count: number, exclude?: string[]): Committed[]
  /** `deliveredBefore`: the last offset delivered here when it was settled. */
  settled: Array<{ offset: number; recipients: number; deliveredBefore: number }>
}

const open: Array<{ bus: RedisBus; broker: RedisBroker }> = []
const stores: SqliteStore[] = []

function newStore(): SqliteStore {
  const store = openSqliteStore(':memory:')
  stores.push(store)
  return store
}

const entryAt = (collection: string, offset: number): StreamEntry => ({
  collection,
  offset,
  kind: 'message',
  payload: { n: offset },
  source: 'server',
  createdAt: Date.now(),
})

/** Appends `count` entries after the head, as the commit queue does; no broker is told. */
function write(store: SqliteStore, collection: string, count: number, exclude?: string[]) {
  return store.transaction((tx) => {
    const head = (tx.lockHeads([collection]) as Map<string, number>).get(collection) ?? 0
    const entries = Array.from({ length: count }, (_, i) => entryAt(collection, head + i + 1))
    tx.write({ heads: [{ collection, head: head + count }], entries, documents: [] })
    return entries.map((entry): Committed => ({ entry, exclude }))
  })
}

async function node(
  name: string,
  store: Pick<Store, 'head' | 'readRange'>,
  options: RedisBrokerOptions,
  writeTo: SqliteStore,
  url = redis.url,
): Promise<Node> {
  const log = capturedLogger()
  const bus = await openRedisBus(url, redis.prefix, `${name}-${unique('n')}`, log.logger)
  const delivered = new Map<string, Committed[]>()
  const waiters: Array<{ collection: string; offset: number; resolve(): void }> = []
  const got = (collection: string) => {
    const list = delivered.get(collection) ?? []
    delivered.set(collection, list)
    return list
  }
  const broker = new RedisBroker(
    bus,
    store,
    (item) => {
      got(item.entry.collection).push(item)
      for (const waiter of [...waiters])
        if (waiter.collection === item.entry.collection && waiter.offset <= item.entry.offset) {
          waiters.splice(waiters.indexOf(waiter), 1)
          waiter.resolve()
        }
      return 1
    },
    log.logger,
    options,
  )
  open.push({ bus, broker })
  const settled: Node['settled'] = []
  return {
    name,
    bus,
    broker,
    log,
    got,
    offsets: (collection) => got(collection).map((item) => item.entry.offset),
    receives(collection, offset) {
      const last = got(collection).at(-1)?.entry.offset ?? 0
      if (last >= offset) return Promise.resolve()
      return within(
        new Promise<void>((resolve) => waiters.push({ collection, offset, resolve })),
        5000,
        `${name} receiving ${collection}#${offset}`,
      )
    },
    commit(collection, count, exclude) {
      const items = write(writeTo, collection, count, exclude)
      broker.committed(items, (item, recipients) =>
        settled.push({
          offset: item.entry.offset,
          recipients,
          deliveredBefore: got(collection).at(-1)?.entry.offset ?? 0,
        }),
      )
      return items
    },
    settled,
  }
}

/** Resolves once Redis counts no subscriber of the channel (UNSUBSCRIBE is not awaited by callers). */
const subscriptionEnds = (channel: string) =>
  within(
    (async () => {
      while ((await subscribers(channel)) > 0) await new Promise((r) => setTimeout(r, 5))
    })(),
    2000,
    `${channel} unsubscribed`,
  )

/** Resolves once both connections of the bus are back (call it while Redis is away). */
const upAgain = (bus: RedisBus) =>
  Promise.all([
    new Promise<void>((resolve) => bus.onReconnect(resolve)),
    new Promise<void>((resolve) => bus.commands.once('ready', () => resolve())),
  ])

/** Resolves once `n` PUBLISHes of the node failed (they fail out of sight of the commit). */
const publishFailures = (n: Node, count: number) =>
  within(
    (async () => {
      while (n.broker.stats().publishFailures < count) await new Promise((r) => setTimeout(r, 5))
    })(),
    3000,
    `${count} failed PUBLISHes`,
  )

const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i)

/** A publish as another process would send it (node "elsewhere"). */
const rawPublish = (collection: string, items: Committed[]) =>
  admin.publish(
    `${redis.prefix}ch:${collection}`,
    JSON.stringify({
      node: 'elsewhere',
      items: items.map(({ entry, exclude }) => ({ entry, exclude })),
    }),
  )

/** Redis' client id of a connection named by openRedisBus. */
async function clientId(bus: RedisBus, role: 'commands' | 'subscriber'): Promise<string> {
  const list = (await admin.client('LIST')) as string
  const line = list
    .split('\n')
    .find((l) => l.includes(` name=${redis.prefix}${bus.nodeId}:${role} `))
  const id = line?.match(/\bid=(\d+)/)?.[1]
  if (id === undefined) throw new Error(`no ${role} connection of ${bus.nodeId} in CLIENT LIST`)
  return id
}

/** Redis' count of subscribers of a bus channel (named as given to the bus). */
const subscribers = async (channel: string) =>
  Number(((await admin.pubsub('NUMSUB', redis.prefix + channel)) as [string, number])[1])

afterEach(async () => {
  for (const { broker, bus } of open.splice(0)) {
    await broker.close()
    await bus.close()
  }
  for (const store of stores.splice(0)) store.close()
})

beforeAll(async () => {
  await admin.connect()
})

afterAll(async () => {
  await redis.clean()
  admin.disconnect()
})

describe('Redis bus', () => {
  test('a Redis that cannot be reached at start: an error naming REDIS_URL, without the password', async () => {
    const { logger } = capturedLogger()
    const started = performance.now()
    const error = await openRedisBus('redis://:hunter2@127.0.0.1:1', 'p:', 'n', logger).then(
      () => undefined,
      (failure: Error) => failure,
    )
    expect(error).toBeInstanceOf(Error)
    expect(error?.message).toContain('REDIS_URL')
    expect(error?.message).toContain('127.0.0.1:1')
    expect(error?.message).not.toContain('hunter2')
    expect(performance.now() - started).toBeLessThan(6000)
  })

  test('handlers share a channel; the Redis subscription lives while one does', async () => {
    const { logger } = capturedLogger()
    const bus = await openRedisBus(redis.url, redis.prefix, unique('bus'), logger)
    try {
      expect(bus.up).toBe(true)
      const channel = unique('shared')
      const first = new Inbox()
      const second = new Inbox()
      await bus.subscribe(channel, first.handler)
      await bus.subscribe(channel, second.handler)
      expect(await subscribers(channel)).toBe(1)
      expect(await bus.publish(channel, 'a')).toBe(1)
      await Promise.all([first.count(1), second.count(1)])
      bus.unsubscribe(channel, first.handler)
      expect(await bus.publish(channel, 'b')).toBe(1)
      await second.count(2)
      expect(first.messages).toEqual(['a'])
      expect(second.messages).toEqual(['a', 'b'])
      bus.unsubscribe(channel, second.handler)
      await subscriptionEnds(channel)
      expect(await bus.publish(channel, 'c')).toBe(0)
    } finally {
      await bus.close()
    }
  })

  test('after its subscriber connection is killed, reconnect listeners run once the channels are subscribed again', async () => {
    const { logger, count } = capturedLogger()
    const bus = await openRedisBus(redis.url, redis.prefix, unique('bus'), logger)
    try {
      const channel = unique('again')
      const inbox = new Inbox()
      await bus.subscribe(channel, inbox.handler)
      // Asked from the listener: Redis must count the subscription again by then.
      const listenerSaw = new Promise<number>((resolve) =>
        bus.onReconnect(() => void subscribers(channel).then(resolve)),
      )
      await admin.client('KILL', 'ID', await clientId(bus, 'subscriber'))
      expect(await within(listenerSaw, 5000, 'reconnect listener')).toBe(1)
      expect(bus.up).toBe(true)
      expect(await bus.publish(channel, 'after')).toBe(1)
      await inbox.count(1)
      expect(inbox.messages).toEqual(['after'])
      expect(count('Redis connection lost')).toBe(1)
      expect(count('Redis connection back')).toBe(1)
    } finally {
      await bus.close()
    }
  })

  test('commands written just as Redis closes the connection still settle, and the connection comes back', async () => {
    const { logger } = capturedLogger()
    const bus = await openRedisBus(redis.url, redis.prefix, unique('bus'), logger)
    try {
      const id = await clientId(bus, 'commands')
      const back = new Promise((resolve) => bus.commands.once('ready', resolve))
      await admin.client('KILL', 'ID', id)
      // Under Bun 1.3.14 these writes can swallow the socket's close (no
      // SOCKET_TIMEOUT: they, and every later command, pend for good).
      const sent = Array.from({ length: 5 }, () =>
        bus.publish('zombie', 'x').then(
          () => 'answered',
          () => 'failed',
        ),
      )
      const outcomes = await within(Promise.all(sent), 6000, 'publishes settling')
      expect(outcomes.length).toBe(5)
      await within(back, 6000, 'reconnecting')
      expect(await bus.publish('zombie', 'y')).toBe(0)
    } finally {
      await bus.close()
    }
  }, 15_000)
})

describe('Redis broker', () => {
  const fast: RedisBrokerOptions = { gapWait: 20, pollInterval: 100, linger: 200 }

  test('entries committed on A and B, interleaved, reach C in offset order, each once, with their exclusions', async () => {
    const store = newStore()
    // A long gapWait: every entry must come over Redis here (nothing is lost on localhost).
    const options = { ...fast, gapWait: 2000, pollInterval: 10_000 }
    const [a, b, c] = await Promise.all(
      ['a', 'b', 'c'].map((name) => node(name, store, options, store)),
    )
    const collection = unique('interleaved')
    await Promise.all([a, b, c].map((n) => n?.broker.follow(collection)))
    if (!a || !b || !c) throw new Error('nodes')
    let head = 0
    for (let i = 0; i < 300; i++) {
      const by = i % 3 === 2 ? b : Math.random() < 0.5 ? a : b
      const count = 1 + (i % 3)
      by.commit(collection, count, [`conn-${by.name}-${i}`])
      head += count
      // Let some publishes overtake others across the two connections.
      if (i % 7 === 0) await new Promise((r) => setImmediate(r))
    }
    await Promise.all([a, b, c].map((n) => n.receives(collection, head)))
    for (const n of [a, b, c]) expect(n.offsets(collection)).toEqual(range(1, head))
    for (const item of c.got(collection)) expect(item.exclude?.[0]).toStartWith('conn-')
    // Every local commit settled once, in offset order, after everything before it was delivered.
    for (const n of [a, b]) {
      const offsets = n.settled.map((s) => s.offset)
      expect(offsets).toEqual([...offsets].sort((x, y) => x - y))
      expect(new Set(offsets).size).toBe(offsets.length)
      for (const s of n.settled) expect(s.deliveredBefore).toBe(s.offset)
    }
    expect(a.settled.length + b.settled.length).toBe(head)
    expect(c.broker.stats()).toMatchObject({ filled: 0, delivered: head, received: head })
  })

  test('a dropped message is read from the store within gapWait once a later one arrives', async () => {
    const store = newStore()
    const options = { ...fast, gapWait: 30, pollInterval: 60_000 }
    const a = await node('a', store, options, store)
    const c = await node('c', store, options, store)
    const collection = unique('gap')
    await c.broker.follow(collection)
    write(store, collection, 2) // committed elsewhere, its PUBLISH lost
    const started = performance.now()
    a.commit(collection, 1, ['submitter'])
    await c.receives(collection, 3)
    const elapsed = performance.now() - started
    expect(c.offsets(collection)).toEqual([1, 2, 3])
    // Read from the store: no exclusions known. Over Redis: kept.
    expect(c.got(collection).map((item) => item.exclude)).toEqual([
      undefined,
      undefined,
      ['submitter'],
    ])
    expect(c.broker.stats()).toMatchObject({ gapFills: 1, filled: 2, received: 1 })
    expect(elapsed).toBeGreaterThanOrEqual(25)
    expect(elapsed).toBeLessThan(1000)
  })

  test('a lost last message is read from the store within pollInterval', async () => {
    const store = newStore()
    const c = await node('c', store, { ...fast, gapWait: 10, pollInterval: 100 }, store)
    const collection = unique('tail')
    await c.broker.follow(collection)
    const started = performance.now()
    write(store, collection, 3) // no PUBLISH at all: nothing after it shows the gap
    await c.receives(collection, 3)
    expect(performance.now() - started).toBeLessThan(100 + 10 + 300)
    expect(c.offsets(collection)).toEqual([1, 2, 3])
    expect(c.broker.stats()).toMatchObject({ filled: 3, received: 0 })
  })

  test('a commit through a broker whose Redis is gone is not failed, is logged once, and reaches the others from the store', async () => {
    const store = newStore()
    const a = await node('a', store, fast, store)
    const c = await node('c', store, fast, store)
    const collection = unique('nobus')
    await Promise.all([a.broker.follow(collection), c.broker.follow(collection)])
    await a.bus.close()
    a.commit(collection, 2)
    a.commit(collection, 1)
    // Local delivery and settles do not need Redis.
    expect(a.offsets(collection)).toEqual([1, 2, 3])
    expect(a.settled.map((s) => s.offset)).toEqual([1, 2, 3])
    await c.receives(collection, 3)
    expect(c.offsets(collection)).toEqual([1, 2, 3])
    await publishFailures(a, 2)
    expect(a.log.count('publishing commits to Redis failed')).toBe(1)
  })

  test('messages arriving out of order are delivered in order; duplicates are dropped', async () => {
    const store = newStore()
    // No store reads may step in: everything here comes over Redis.
    const c = await node('c', store, { ...fast, gapWait: 60_000, pollInterval: 60_000 }, store)
    const collection = unique('swapped')
    await c.broker.follow(collection)
    const [one, two, three, four, five] = write(store, collection, 5, ['x']) as Committed[]
    if (!one || !two || !three || !four || !five) throw new Error('entries')
    await rawPublish(collection, [three])
    await rawPublish(collection, [two])
    await rawPublish(collection, [three]) // a duplicate while held
    await rawPublish(collection, [one])
    await c.receives(collection, 3)
    expect(c.offsets(collection)).toEqual([1, 2, 3])
    await rawPublish(collection, [two, three, four]) // overlapping what was delivered
    await rawPublish(collection, [one])
    await rawPublish(collection, [four])
    // One publisher's messages arrive in order: once 5 is here, so were the duplicates.
    await rawPublish(collection, [five])
    await c.receives(collection, 5)
    expect(c.offsets(collection)).toEqual([1, 2, 3, 4, 5])
    expect(c.got(collection).every((item) => item.exclude?.[0] === 'x')).toBe(true)
    expect(c.broker.stats()).toMatchObject({ duplicates: 5, early: 2, filled: 0, delivered: 5 })
  })

  test("a local commit's settle waits for an earlier entry of another process; synchronous when nothing is missing", async () => {
    const store = newStore()
    const a = await node('a', store, { ...fast, gapWait: 60_000, pollInterval: 60_000 }, store)
    const collection = unique('settle')
    await a.broker.follow(collection)
    const [remote] = write(store, collection, 1, ['r']) // another process's, still on its way
    a.commit(collection, 1, ['local'])
    expect(a.settled).toEqual([])
    expect(a.offsets(collection)).toEqual([])
    if (!remote) throw new Error('entry')
    await rawPublish(collection, [remote])
    await a.receives(collection, 2)
    expect(a.offsets(collection)).toEqual([1, 2])
    expect(a.settled).toEqual([{ offset: 2, recipients: 1, deliveredBefore: 2 }])
    a.commit(collection, 2)
    expect(a.settled.map((s) => s.offset)).toEqual([2, 3, 4])
  })

  test('a commit to a collection not followed here is settled at once with no recipients', async () => {
    const store = newStore()
    const a = await node('a', store, fast, store)
    a.commit(unique('unfollowed'), 2)
    expect(a.settled.map((s) => s.recipients)).toEqual([0, 0])
  })

  test('subscriber connections killed while A and B commit: nothing lost or doubled after the reconnection', async () => {
    const store = newStore()
    const options = { ...fast, gapWait: 20, pollInterval: 500 }
    const [a, b, c] = await Promise.all(
      ['a', 'b', 'c'].map((name) => node(name, store, options, store)),
    )
    if (!a || !b || !c) throw new Error('nodes')
    const collection = unique('killed')
    await Promise.all([a, b, c].map((n) => n.broker.follow(collection)))
    let reconnected = 0
    const back = new Promise<void>((resolve) =>
      c.bus.onReconnect(() => {
        reconnected++
        resolve()
      }),
    )
    let head = 0
    let killed = false
    let after = 0
    for (let i = 0; after < 30 && i < 3000; i++) {
      const by = i % 2 === 0 ? a : b
      by.commit(collection, 1 + (i % 2))
      head += 1 + (i % 2)
      if (i === 20) {
        await admin.client('KILL', 'ID', await clientId(c.bus, 'subscriber'))
        await admin.client('KILL', 'ID', await clientId(a.bus, 'commands'))
        killed = true
      }
      if (killed && reconnected > 0) after++
      await new Promise((r) => setTimeout(r, 3))
    }
    await within(back, 5000, 'C reconnecting')
    await Promise.all([a, b, c].map((n) => n.receives(collection, head)))
    for (const n of [a, b, c]) expect(n.offsets(collection)).toEqual(range(1, head))
    expect(a.settled.length + b.settled.length).toBe(head)
    // Published while C's subscription was down: read from the store.
    expect(c.broker.stats().filled).toBeGreaterThan(0)
  })

  test('entries published while a subscriber was away are read once it is back, with no traffic after them', async () => {
    const store = newStore()
    const options = { ...fast, pollInterval: 60_000 }
    const a = await node('a', store, options, store)
    const c = await node('c', store, options, store)
    const collection = unique('away')
    await c.broker.follow(collection)
    a.commit(collection, 1)
    await c.receives(collection, 1)
    const back = new Promise<void>((resolve) => c.bus.onReconnect(resolve))
    // CLIENT KILL has closed it by its reply: these PUBLISHes do not reach C.
    await admin.client('KILL', 'ID', await clientId(c.bus, 'subscriber'))
    a.commit(collection, 2)
    await within(back, 5000, 'C reconnecting')
    await c.receives(collection, 3)
    expect(c.offsets(collection)).toEqual([1, 2, 3])
    expect(c.broker.stats()).toMatchObject({ received: 1, filled: 2 })
  })

  test('Redis down: commands fail fast, commits go on, the store carries the entries; back: the bus carries them again', async () => {
    const relay = redisRelay()
    try {
      const store = newStore()
      const options = { ...fast, pollInterval: 100 }
      const a = await node('a', store, options, store, relay.url())
      const c = await node('c', store, options, store, relay.url())
      const collection = unique('down')
      await Promise.all([a.broker.follow(collection), c.broker.follow(collection)])
      a.commit(collection, 1)
      await c.receives(collection, 1)
      const lost = new Promise<void>((resolve) => c.bus.commands.once('close', () => resolve()))
      relay.stop()
      await within(lost, 2000, 'C noticing')
      expect(c.bus.up).toBe(false)
      const started = performance.now()
      a.commit(collection, 2)
      // The commit is not held up: delivered and settled here at once.
      expect(a.settled.map((s) => s.offset)).toEqual([1, 2, 3])
      await publishFailures(a, 1)
      const failedAfter = performance.now() - started
      // Read by C's poll from the store while Redis is away.
      await c.receives(collection, 3)
      a.commit(collection, 1)
      await publishFailures(a, 2)
      await c.receives(collection, 4)
      const back = Promise.all([a, c].map((n) => upAgain(n.bus)))
      relay.start()
      await within(back, 5000, 'reconnecting')
      expect(a.bus.up && c.bus.up).toBe(true)
      const { received } = c.broker.stats()
      a.commit(collection, 1)
      await c.receives(collection, 5)
      expect(c.broker.stats().received).toBe(received + 1)
      for (const n of [a, c]) expect(n.offsets(collection)).toEqual([1, 2, 3, 4, 5])
      expect(a.log.count('publishing commits to Redis failed')).toBe(1)
      expect(a.log.count('Redis connection lost')).toBe(1)
      expect(c.log.count('Redis connection back')).toBe(1)
      expect(failedAfter).toBeLessThan(1500)
      console.log(`a PUBLISH with Redis down failed after ${failedAfter.toFixed(0)} ms`)
    } finally {
      relay.stop()
    }
  })

  test('follow after entries exist starts at the head; reached resolves as delivery gets there', async () => {
    const store = newStore()
    const a = await node('a', store, fast, store)
    const c = await node('c', store, fast, store)
    const collection = unique('late')
    a.commit(collection, 5)
    expect(c.broker.delivered(collection)).toBeUndefined()
    const following = c.broker.follow(collection)
    const atHead = c.broker.reached(collection, 5)
    expect(c.broker.delivered(collection)).toBeUndefined()
    await following
    expect(c.broker.delivered(collection)).toBe(5)
    await within(atHead, 2000, 'reached 5')
    const six = c.broker.reached(collection, 6)
    a.commit(collection, 1)
    await within(six, 2000, 'reached 6')
    expect(c.offsets(collection)).toEqual([6])
    await expect(c.broker.reached(unique('other'), 1)).rejects.toThrow('not followed')
  })

  test('concurrent follows share one start; unfollow lingers, and a quick return costs nothing', async () => {
    const store = newStore()
    const c = await node('c', store, { ...fast, linger: 150 }, store)
    const collection = unique('linger')
    const first = c.broker.follow(collection)
    const second = c.broker.follow(collection)
    expect(first).toBeInstanceOf(Promise)
    expect(second).toBe(first)
    await first
    expect(await subscribers(`ch:${collection}`)).toBe(1)
    // Already ready: no promise.
    expect(c.broker.follow(collection)).toBeUndefined()
    c.broker.unfollow(collection)
    c.broker.unfollow(collection)
    // One left: no linger started. Observing that nothing happens takes time.
    await new Promise((r) => setTimeout(r, 300))
    expect(c.broker.delivered(collection)).toBe(0)
    c.broker.unfollow(collection)
    // Back within the linger: still subscribed, nothing to wait for.
    expect(c.broker.follow(collection)).toBeUndefined()
    c.broker.unfollow(collection)
    const gone = c.broker.reached(collection, 1)
    const released = performance.now()
    await expect(within(gone, 2000, 'release')).rejects.toThrow('no longer followed')
    expect(performance.now() - released).toBeGreaterThanOrEqual(140)
    expect(c.broker.delivered(collection)).toBeUndefined()
    await subscriptionEnds(`ch:${collection}`)
  })

  test('store reads failing: retried at the next poll, then delivered in order, once', async () => {
    const store = newStore()
    let down = false
    const unavailable = () => new Error('store unavailable (test)')
    const flaky: Pick<Store, 'head' | 'readRange'> = {
      head: (collection) => {
        if (down) throw unavailable()
        return store.head(collection)
      },
      readRange: async (collection, after, until, limit) => {
        if (down) throw unavailable()
        return store.readRange(collection, after, until, limit)
      },
    }
    const c = await node('c', flaky, { ...fast, gapWait: 10, pollInterval: 50 }, store)
    const collection = unique('flaky')
    await c.broker.follow(collection)
    down = true
    const [, , three] = write(store, collection, 3, ['x']) as Committed[]
    if (!three) throw new Error('entry')
    await rawPublish(collection, [three])
    // Gap reads and polls fail for a while; each outage is logged once.
    await within(
      (async () => {
        while (c.log.count('reading the store for the broker failed') === 0)
          await new Promise((r) => setTimeout(r, 5))
      })(),
      2000,
      'a failed read',
    )
    // Several failing polls and gap reads go by: nothing may be delivered meanwhile.
    await new Promise((r) => setTimeout(r, 200))
    expect(c.offsets(collection)).toEqual([])
    down = false
    await c.receives(collection, 3)
    expect(c.offsets(collection)).toEqual([1, 2, 3])
    expect(c.got(collection)[2]?.exclude).toEqual(['x'])
    expect(c.log.count('reading the store for the broker failed')).toBe(1)
    expect(c.log.count('works again')).toBe(1)
  })
})

describe('memory broker', () => {
  test('delivers and settles each commit at once, in order; always ready', async () => {
    const { logger } = capturedLogger()
    const log: string[] = []
    const broker: NodeBroker = new MemoryBroker(
      (item) => {
        log.push(`deliver ${item.entry.offset}`)
        if (item.entry.offset === 2) throw new Error('a socket failed')
        return 3
      },
      () => 7,
      logger,
    )
    expect(broker.follow('c')).toBeUndefined()
    expect(broker.delivered('c')).toBe(7)
    broker.committed(
      [1, 2, 3].map((offset) => ({ entry: entryAt('c', offset), exclude: undefined })),
      (item, recipients) => log.push(`settle ${item.entry.offset} ${recipients}`),
    )
    expect(log).toEqual([
      'deliver 1',
      'settle 1 3',
      'deliver 2',
      'settle 2 0',
      'deliver 3',
      'settle 3 3',
    ])
    await broker.reached('c', 7)
  })
})
