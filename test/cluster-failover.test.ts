import { describe, expect, test } from 'bun:test'
import { type Doc, RealtimeClient, type Subscription } from '../src/client/index.ts'
import {
  eventually,
  getJson,
  postJson,
  type ServerMessage,
  TestClient,
  uniqueName,
  within,
} from './helpers.ts'
import { withCleanup } from './support/cleanup.ts'
import { type ClusterNode, startCluster } from './support/cluster.ts'
import { fullHistory, replaySnapshot } from './support/history.ts'
import { startRedisServer } from './support/redis-server.ts'
import { startRelay } from './support/relay.ts'
import { freshDatabase, POSTGRES_ADMIN_URL, requireServices } from './support/services.ts'

await requireServices()

interface Counter {
  n: number
  log: string[]
}
const INITIAL: Counter = { n: 0, log: [] }
/** The op every writer sends: always applies, so every refusal here is the store's. */
const bump = (tag: string) => [
  { p: ['n'], na: 1 },
  { p: ['log', 0], li: tag },
]
const range = (from: number, to: number) =>
  Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)

/** An acked write: where the server said it stored it. */
interface Ack {
  tag: string
  offset: number
  /** A document op's; a channel broadcast has none. */
  document?: string
  v?: number
}

/** A count that only grows, and promises of its reaching a mark. */
class Mark {
  value = 0
  private waiters: Array<{ target: number; resolve: () => void }> = []

  set(value: number): void {
    this.value = value
    this.waiters = this.waiters.filter((waiter) => {
      if (waiter.target > value) return true
      waiter.resolve()
      return false
    })
  }

  /** Resolves once the value is at least `target`; fails after `ms`, saying where it stopped. */
  reach(target: number, ms: number, what: string): Promise<void> {
    if (this.value >= target) return Promise.resolve()
    let timer: ReturnType<typeof setTimeout> | undefined
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ target, resolve })
      timer = setTimeout(
        () => reject(new Error(`${what}: at ${this.value} of ${target} after ${ms} ms`)),
        ms,
      )
    }).finally(() => clearTimeout(timer))
  }
}

/** The offsets of a socket's change and broadcast frames of `collection`, in arrival order. */
const streamOffsets = (frames: readonly ServerMessage[], collection: string) =>
  frames
    .filter((f) => (f.type === 'op' || f.type === 'message') && f.collection === collection)
    .map((f) => f.data.offset as number)

/** A WebSocket class that keeps every frame its sockets receive, across the client's reconnects. */
function recordingSocket(frames: ServerMessage[]): typeof WebSocket {
  return class RecordingSocket extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols)
      this.addEventListener('message', (event) => {
        frames.push(JSON.parse(String(event.data)) as ServerMessage)
      })
    }
  }
}

/** An SDK client behind nginx following a collection, or some documents of it. */
interface Watcher {
  name: string
  client: RealtimeClient
  /** Every frame off the wire, over all its connections. */
  frames: ServerMessage[]
  /** Offsets of the collection handed to the app, in order. */
  offsets: number[]
  /** The last of them. */
  mark: Mark
  /** Followed documents, each with its version as a Mark. */
  docs: Map<string, { doc: Doc<Counter>; v: Mark }>
  /** Its channels' subscriptions. */
  channels: Subscription[]
  resets: number
}

/** The channels of `watchers` not live on their current connection, for a failure's message. */
const notLive = (watchers: readonly Watcher[]) =>
  watchers.flatMap((w) =>
    w.channels.filter((s) => !s.isLive).map((s) => `${w.name} ${s.channel} (${s.state})`),
  )

/** The node a watcher's current (last) connection is on. */
const nodeOf = (watcher: Watcher): string =>
  watcher.frames.findLast((f) => f.type === 'connected')?.data.node_id

/** Follows `collection`, or the `documents` of it when there are any. */
async function watch(
  url: string,
  collection: string,
  name: string,
  documents: string[],
): Promise<Watcher> {
  const frames: ServerMessage[] = []
  const client = new RealtimeClient({ url, userId: name, WebSocket: recordingSocket(frames) })
  const watcher: Watcher = {
    name,
    client,
    frames,
    offsets: [],
    mark: new Mark(),
    docs: new Map(),
    channels: [],
    resets: 0,
  }
  if (documents.length === 0) {
    const feed = client.subscribe(collection)
    const take = (offset: number) => {
      watcher.offsets.push(offset)
      watcher.mark.set(offset)
    }
    feed.on('op', (event) => take(event.data.offset))
    feed.on('message', (event) => take(event.offset))
    feed.on('reset', () => watcher.resets++)
    watcher.channels.push(feed)
    await feed.ready
  }
  for (const document of documents) {
    const doc = client.doc<Counter>(collection, document)
    const v = new Mark()
    watcher.docs.set(document, { doc, v })
    const moved = () => v.set(doc.v)
    doc.on('op', moved)
    doc.on('create', moved)
    doc.on('reset', () => watcher.resets++)
    await doc.subscribe()
    if (doc.channel) watcher.channels.push(doc.channel)
  }
  return watcher
}

/**
 * Writers that keep going until stopped: socket submits and REST publishes
 * (every tenth a channel broadcast), each waiting for its reply. A writer
 * whose node goes away ends (what it had in flight was not acked).
 */
class Load {
  readonly acks: Ack[] = []
  /** Replies that were neither an ack nor a lost connection. */
  readonly refusals: string[] = []
  readonly count = new Mark()
  /** Writers whose connection or node went away, by name. */
  readonly lost = new Set<string>()
  private stopping = false
  private readonly runs: Array<Promise<void>> = []

  constructor(
    private readonly collection: string,
    private readonly headers: Record<string, string>,
  ) {}

  private ack(ack: Ack): void {
    this.acks.push(ack)
    this.count.set(this.acks.length)
  }

  /** Submits over one socket, `window` at a time, alternating between `documents`. */
  socket(client: TestClient, name: string, documents: string[], window: number): void {
    for (let lane = 0; lane < window; lane++)
      this.runs.push(
        (async () => {
          for (let i = 0; !this.stopping; i++) {
            const tag = `${name}.${lane}.${i}`
            const document = documents[i % documents.length] as string
            let reply: ServerMessage
            try {
              reply = await client.request({
                type: 'submit',
                collection: this.collection,
                document,
                op: bump(tag),
              })
            } catch (error) {
              // Only a closed socket ends a writer; a reply that never came fails the test.
              if (client.closeCode === undefined) throw error
              this.lost.add(name)
              return
            }
            if (reply.type === 'submit')
              this.ack({ tag, document, v: reply.data.v, offset: reply.data.offset })
            else this.refusals.push(`${tag}: ${JSON.stringify(reply.error)}`)
          }
        })(),
      )
  }

  /** REST publishes to one node, one at a time. */
  rest(node: { url: string }, name: string, documents: string[]): void {
    this.runs.push(
      (async () => {
        for (let i = 0; !this.stopping; i++) {
          const tag = `${name}.${i}`
          const document = documents[i % documents.length] as string
          const broadcast = i % 10 === 9
          let reply: { status: number; body: { offset?: number; v?: number } }
          try {
            reply = broadcast
              ? await postJson(
                  node,
                  '/api/ws/broadcast/channel',
                  { channel: `${this.collection}.${document}`, message: tag },
                  this.headers,
                )
              : await postJson(
                  node,
                  '/api/ws/publish/document',
                  { collection: this.collection, document, operation: bump(tag) },
                  this.headers,
                )
          } catch {
            this.lost.add(name)
            return
          }
          if (reply.status !== 200 || reply.body.offset === undefined)
            this.refusals.push(`${tag}: ${reply.status} ${JSON.stringify(reply.body)}`)
          else if (broadcast) this.ack({ tag, offset: reply.body.offset })
          else this.ack({ tag, document, v: reply.body.v as number, offset: reply.body.offset })
        }
      })(),
    )
  }

  /** Stops every writer and waits for their last replies. */
  async stop(): Promise<void> {
    this.stopping = true
    await within(Promise.all(this.runs), 10_000, 'writers stopping')
  }
}

/** Every acked write is in the history as acked; offsets run 1..head without a gap. */
function expectStored(history: { head: number; messages: ServerMessage[] }, acks: Ack[]): void {
  expect(history.messages.map((m) => m.data.offset)).toEqual(range(1, history.head))
  const byOffset = new Map(history.messages.map((m) => [m.data.offset as number, m]))
  for (const ack of acks) {
    const stored = byOffset.get(ack.offset)
    if (ack.document === undefined) {
      expect(stored?.type).toBe('message')
      expect(stored?.data.message).toBe(ack.tag)
    } else {
      expect(stored?.document).toBe(ack.document)
      expect(stored?.data.v).toBe(ack.v)
      expect(stored?.data.op?.[1]?.li).toBe(ack.tag)
    }
  }
}

/** Every node's snapshot of `document` is the history replayed, at the version the history gives. */
async function expectConverged(
  nodes: readonly ClusterNode[],
  collection: string,
  document: string,
  messages: ServerMessage[],
  headers: Record<string, string>,
): Promise<{ v: number; data: unknown }> {
  const expected = {
    v: messages.filter((m) => m.type === 'op' && m.document === document).length,
    data: replaySnapshot(messages, document),
  }
  for (const node of nodes) {
    const snapshot = await getJson(node, `/api/ws/documents/${collection}/${document}`, headers)
    expect(snapshot.status).toBe(200)
    expect(snapshot.body).toEqual(expected)
  }
  return expected
}

/** Resolves once every node logged a line containing `text` since its line `from[i]`. */
function logged(
  nodes: readonly ClusterNode[],
  text: string,
  from: readonly number[],
): Promise<void> {
  // A child's stdout has no event per line here: look again until it is there.
  return eventually(() => {
    for (const [i, node] of nodes.entries())
      if (!node.lines.slice(from[i]).some((line) => line.includes(text)))
        throw new Error(`${node.id} did not log "${text}"`)
  }, 10_000)
}

describe('failover', () => {
  test(
    'a node SIGKILLed under load: nothing acked lost, its clients resume elsewhere through nginx, missing nothing',
    () =>
      withCleanup(async (defer) => {
        const cluster = await startCluster({ nodes: 3, nginx: true })
        defer(() => cluster.stop())
        const nginx = cluster.nginx as NonNullable<typeof cluster.nginx>
        const admin = cluster.adminHeaders
        const collection = uniqueName('record')
        // One at a time: nginx's round robin spreads them over the three nodes. Every
        // fourth follows two documents: one written all along, one quiet after the start.
        const watchers: Watcher[] = []
        for (let i = 0; i < 12; i++) {
          const watcher = await watch(
            nginx.url,
            collection,
            `w${i}`,
            i % 4 === 3 ? ['shared', 'quiet'] : [],
          )
          defer(() => watcher.client.close())
          watchers.push(watcher)
        }
        expect(new Set(watchers.map(nodeOf))).toEqual(new Set(cluster.nodes.map((node) => node.id)))
        const victim = cluster.nodes.find((node) => {
          const on = watchers.filter((w) => nodeOf(w) === node.id)
          return on.some((w) => w.docs.size > 0) && on.some((w) => w.docs.size === 0)
        })
        if (!victim)
          throw new Error(`no node holds both kinds of watcher: ${watchers.map(nodeOf).join(' ')}`)
        const survivors = cluster.nodes.filter((node) => node !== victim)
        const orphans = watchers.filter((w) => nodeOf(w) === victim.id)
        const stayers = watchers.filter((w) => !orphans.includes(w))

        const setup = await TestClient.connect(cluster.nodes[0] as ClusterNode)
        const documents = [
          'shared',
          'quiet',
          ...cluster.nodes.flatMap((node) => [`s-${node.id}`, `r-${node.id}`]),
        ]
        for (const document of documents)
          await setup.ok({ type: 'submit', collection, document, create: { data: INITIAL } })
        for (let i = 0; i < 5; i++)
          await setup.ok({ type: 'submit', collection, document: 'quiet', op: bump(`setup.${i}`) })
        await setup.close()

        const load = new Load(collection, admin)
        for (const node of cluster.nodes) {
          const writer = await TestClient.connect(node, { user_id: `writer-${node.id}` })
          defer(() => writer.close())
          load.socket(writer, `socket-${node.id}`, ['shared', `s-${node.id}`], 3)
          load.rest(node, `rest-${node.id}`, ['shared', `r-${node.id}`])
        }
        await load.count.reach(150, 15_000, 'acks before the kill')

        const resumed = orphans.map((w) => w.client.once('resynced').then(() => performance.now()))
        const killedAt = performance.now()
        victim.kill('SIGKILL')
        expect(await victim.exited).not.toBe(0)
        const times = await within(Promise.all(resumed), 20_000, 'the orphans resuming').catch(
          (error: Error) => {
            throw new Error(`${error.message}; not live: ${notLive(orphans).join(', ')}`)
          },
        )
        const failoverMs = Math.max(...times) - killedAt
        console.log(
          `failover: SIGKILL of ${victim.id} -> all ${orphans.length} of its clients resumed through nginx in ${failoverMs.toFixed(0)} ms`,
        )
        // Live again: more writes on the survivors after every orphan resumed.
        await load.count.reach(load.count.value + 150, 15_000, 'acks after the resume')
        await load.stop()

        expect(load.refusals).toEqual([])
        // Only the victim's writers lost their node; each writer had acks.
        expect([...load.lost].sort()).toEqual([`rest-${victim.id}`, `socket-${victim.id}`])
        for (const node of cluster.nodes)
          for (const kind of ['rest', 'socket'])
            expect(load.acks.some((ack) => ack.tag.startsWith(`${kind}-${node.id}.`))).toBe(true)

        const history = await fullHistory(survivors[0] as ClusterNode, collection, admin)
        // The creates, every ack, and whatever the victim committed without acking.
        expect(history.head).toBeGreaterThanOrEqual(documents.length + load.acks.length)
        expectStored(history, load.acks)

        const snapshots = new Map<string, { v: number; data: unknown }>()
        for (const document of documents)
          snapshots.set(
            document,
            await expectConverged(survivors, collection, document, history.messages, admin),
          )

        for (const watcher of orphans) expect(nodeOf(watcher)).not.toBe(victim.id)
        for (const watcher of stayers) expect(watcher.client.connectionNumber).toBe(1)
        for (const watcher of watchers) {
          expect(watcher.resets).toBe(0)
          for (const [document, { doc, v }] of watcher.docs) {
            const expected = snapshots.get(document) as { v: number; data: unknown }
            await v.reach(expected.v, 10_000, `${watcher.name} following ${document}`)
            expect(doc.v).toBe(expected.v)
            expect(doc.data).toEqual(expected.data as Counter)
            // On the wire too: each version once, in order, over both connections.
            const versions = watcher.frames
              .filter((f) => f.type === 'op' && f.document === document)
              .map((f) => f.data.v)
            expect(versions).toEqual(range(0, expected.v - 1))
          }
          if (watcher.docs.size === 0) {
            await watcher.mark.reach(
              history.head,
              10_000,
              `${watcher.name} following ${collection}`,
            )
            expect(watcher.offsets).toEqual(range(1, history.head))
            expect(streamOffsets(watcher.frames, collection)).toEqual(range(1, history.head))
          }
        }
      }),
    60_000,
  )

  test(
    'Redis killed and started again: acks go on, subscribers get every entry once, in order, on the same socket; one moving to a node behind resumes',
    () =>
      withCleanup(async (defer) => {
        const redis = await startRedisServer()
        defer(() => redis.stop())
        const cluster = await startCluster({ nodes: 2, env: { REDIS_URL: redis.url } })
        defer(() => cluster.stop())
        const clients: TestClient[] = []
        defer(() => Promise.all(clients.map((client) => client.close())))
        const [a, b] = cluster.nodes as [ClusterNode, ClusterNode]
        const admin = cluster.adminHeaders
        const collection = uniqueName('record')
        const subscribers: TestClient[] = []
        for (let i = 0; i < 3; i++) {
          const subscriber = await TestClient.connect(a, { user_id: `sub${i}` })
          await subscriber.ok({ type: 'subscribe', collection })
          subscribers.push(subscriber)
        }
        const docSubscriber = await TestClient.connect(a, { user_id: 'doc-sub' })
        await docSubscriber.ok({ type: 'subscribe', collection, document: 'd1' })
        const submitter = await TestClient.connect(b, { user_id: 'submitter' })
        clients.push(...subscribers, docSubscriber, submitter)
        // On b, which delivers its own commits at once: it moves to a during the outage.
        const mover = await TestClient.connect(b, { user_id: 'mover' })
        defer(() => mover.close())
        const { epoch } = (await mover.ok({ type: 'subscribe', collection })).data
        const moved: TestClient[] = []
        for (const document of ['d1', 'd2'])
          await submitter.ok({ type: 'submit', collection, document, create: { data: INITIAL } })

        const acks: Ack[] = []
        /** One write on b, acked within 5 s: a REST publish, a socket submit or a channel broadcast. */
        const write = async (tag: string) => {
          const kind = acks.length % 5
          const document = kind % 2 === 0 ? 'd1' : 'd2'
          if (kind === 4) {
            const reply = await postJson(
              b,
              '/api/ws/broadcast/channel',
              { channel: `${collection}.${document}`, message: tag },
              admin,
            )
            expect(reply.status).toBe(200)
            acks.push({ tag, offset: reply.body.offset })
          } else if (kind % 2 === 0) {
            const reply = await postJson(
              b,
              '/api/ws/publish/document',
              { collection, document, operation: bump(tag) },
              admin,
            )
            expect(reply.status).toBe(200)
            acks.push({ tag, document, ...reply.body })
          } else {
            const reply = await submitter.ok({
              type: 'submit',
              collection,
              document,
              op: bump(tag),
            })
            acks.push({ tag, document, ...reply.data })
          }
        }
        const writeMany = async (count: number, prefix: string) => {
          for (let i = 0; i < count; i++)
            await within(write(`${prefix}${i}`), 5000, `${prefix}${i}`)
        }
        /** Resolves once every subscriber has the frame of offset `offset`. */
        const delivered = (offset: number) =>
          Promise.all(
            [
              ...subscribers,
              ...moved,
              ...(acks.at(-1)?.document === 'd1' ? [docSubscriber] : []),
            ].map((s) =>
              s.next(
                (m) => (m.type === 'op' || m.type === 'message') && m.data.offset === offset,
                10_000,
              ),
            ),
          )
        const newest = () => (acks.at(-1) as Ack).offset

        await writeMany(20, 'before')
        await delivered(newest())

        const from = cluster.nodes.map((node) => node.lines.length)
        await redis.stop('SIGKILL')
        // Both nodes know Redis is gone before the outage's writes.
        await logged(cluster.nodes, 'Redis connection lost', from)
        const outageStarted = performance.now()
        await writeMany(30, 'outage')
        const outageAcksMs = performance.now() - outageStarted
        // b lost, say: its client resumes on a, which has not read these from the store yet.
        await mover.next((m) => m.type !== 'subscribe' && m.data?.offset === newest())
        const moverSeen = streamOffsets(mover.received, collection)
        const arrived = await TestClient.connect(a, { user_id: 'mover' })
        clients.push(arrived)
        const resumed = await arrived.ok({
          type: 'subscribe',
          collection,
          since: { epoch, offset: moverSeen.at(-1) },
        })
        await mover.close()
        expect(resumed.data.recovered).toBe(true)
        // CLUSTER.md: delivery holds while Redis drops messages (the store is read instead).
        await delivered(newest())
        const outageDeliveryMs = performance.now() - outageStarted
        // From here on it is a subscriber on a like the others.
        moved.push(arrived)

        await redis.start()
        const backAt = performance.now()
        await writeMany(1, 'back')
        await delivered(newest())
        const seenAgainMs = performance.now() - backAt
        await logged(cluster.nodes, 'Redis connection back', from)
        const reconnectedMs = performance.now() - backAt
        let slowest = 0
        for (let i = 0; i < 20; i++) {
          const started = performance.now()
          await writeMany(1, `after${i}-`)
          await delivered(newest())
          slowest = Math.max(slowest, performance.now() - started)
        }
        console.log(
          `redis down: 30 writes acked in ${outageAcksMs.toFixed(0)} ms, all delivered (from the store) ${outageDeliveryMs.toFixed(0)} ms after the first; ` +
            `redis back: an entry written at once reached every subscriber in ${seenAgainMs.toFixed(0)} ms, both nodes reconnected within ${reconnectedMs.toFixed(0)} ms, ` +
            `then the slowest of 20 writes took ${slowest.toFixed(0)} ms from write to every subscriber`,
        )

        const history = await fullHistory(a, collection, admin)
        expect(history.head).toBe(acks.length + 2)
        expectStored(history, acks)
        for (const subscriber of subscribers) {
          await subscriber.settle()
          expect(streamOffsets(subscriber.received, collection)).toEqual(range(1, history.head))
        }
        await arrived.settle()
        expect([...moverSeen, ...streamOffsets(arrived.received, collection)]).toEqual(
          range(1, history.head),
        )
        await docSubscriber.settle()
        expect(streamOffsets(docSubscriber.received, collection)).toEqual(
          history.messages.filter((m) => m.document === 'd1').map((m) => m.data.offset),
        )
        // The same sockets all along: never closed, never told to go, one `connected` each.
        for (const client of clients) {
          expect(client.closeCode).toBeUndefined()
          expect(client.all((m) => m.type === 'connected' || m.type === 'disconnect')).toHaveLength(
            1,
          )
        }
        await expectConverged(cluster.nodes, collection, 'd1', history.messages, admin)
      }),
    60_000,
  )

  test(
    'PostgreSQL unreachable: writes refused with 503, /readyz names the store, and after it is back nothing refused was stored',
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
        const cluster = await startCluster({ nodes: 2, env: { DATABASE_URL: viaRelay.href } })
        defer(() => cluster.stop())
        const [a, b] = cluster.nodes as [ClusterNode, ClusterNode]
        const admin = cluster.adminHeaders
        const collection = uniqueName('record')
        const submitter = await TestClient.connect(a, { user_id: 'submitter' })
        defer(() => submitter.close())
        await submitter.ok({ type: 'submit', collection, document: 'd', create: { data: INITIAL } })

        const acks: Ack[] = []
        const submit = (tag: string) =>
          submitter.request({ type: 'submit', collection, document: 'd', op: bump(tag) })
        const publish = (tag: string) =>
          postJson(
            b,
            '/api/ws/publish/document',
            { collection, document: 'd', operation: bump(tag) },
            admin,
          )
        const broadcast = (tag: string) =>
          postJson(a, '/api/ws/broadcast/channel', { channel: collection, message: tag }, admin)
        /** One of each kind of write, each acked. */
        const writeAll = async (prefix: string) => {
          const submitted = await submit(`${prefix}-submit`)
          expect(submitted.type).toBe('submit')
          acks.push({ tag: `${prefix}-submit`, document: 'd', ...submitted.data })
          const published = await publish(`${prefix}-publish`)
          expect(published.status).toBe(200)
          acks.push({ tag: `${prefix}-publish`, document: 'd', ...published.body })
          const broadcasted = await broadcast(`${prefix}-broadcast`)
          expect(broadcasted.status).toBe(200)
          acks.push({ tag: `${prefix}-broadcast`, offset: broadcasted.body.offset })
        }
        const readiness = (node: ClusterNode) => getJson(node, '/readyz')

        await writeAll('up')
        for (const node of cluster.nodes) expect((await readiness(node)).status).toBe(200)

        await relay.down()
        const refusedTags: string[] = []
        for (let i = 0; i < 3; i++) {
          const submitted = await within(submit(`down${i}-submit`), 10_000, 'submit while down')
          expect(submitted.type).toBe('error')
          expect(submitted.error?.code).toBe(503)
          const published = await within(publish(`down${i}-publish`), 10_000, 'publish while down')
          expect(published.status).toBe(503)
          const broadcasted = await within(broadcast(`down${i}-broadcast`), 10_000, 'broadcast')
          expect(broadcasted.status).toBe(503)
          refusedTags.push(`down${i}-submit`, `down${i}-publish`, `down${i}-broadcast`)
        }
        // Reads too: 503 (retry), not a 500 that says nothing.
        const queried = await within(
          submitter.request({ type: 'query', collection, document: 'd' }),
          10_000,
          'query while down',
        )
        expect(queried.error?.code).toBe(503)
        const read = await getJson(b, `/api/ws/history?channel=${collection}`, admin)
        expect(read.status).toBe(503)
        for (const node of cluster.nodes) {
          const ready = await readiness(node)
          expect(ready.status).toBe(503)
          expect(ready.body.status).toBe('unavailable')
          expect(ready.body.reason).toContain('PostgreSQL')
        }

        await relay.up()
        // Bun SQL reconnects by itself; nothing tells the test when, so it asks /readyz.
        const backAt = performance.now()
        for (const node of cluster.nodes)
          await eventually(async () => expect((await readiness(node)).status).toBe(200), 15_000)
        console.log(
          `postgres back: both nodes ready ${(performance.now() - backAt).toFixed(0)} ms after the relay accepted again`,
        )
        await writeAll('back')

        const history = await fullHistory(b, collection, admin)
        expect(history.head).toBe(1 + acks.length)
        expectStored(history, acks)
        const stored = JSON.stringify(history.messages)
        for (const tag of refusedTags) expect(stored).not.toContain(`"${tag}"`)
        await expectConverged(cluster.nodes, collection, 'd', history.messages, admin)
        // The socket that was refused is still the same one, and no late ack came for a refusal.
        await submitter.settle()
        expect(submitter.closeCode).toBeUndefined()
        expect(submitter.all((m) => m.type === 'submit')).toHaveLength(1 + 2)
      }),
    60_000,
  )

  test(
    'a client hopping between nodes while its document is written: each resume recovered, every version once',
    () =>
      withCleanup(async (defer) => {
        const cluster = await startCluster({ nodes: 2 })
        defer(() => cluster.stop())
        const [a, b] = cluster.nodes as [ClusterNode, ClusterNode]
        const collection = uniqueName('record')
        const setup = await TestClient.connect(b)
        defer(() => setup.close())
        for (const document of ['d', 'other'])
          await setup.ok({ type: 'submit', collection, document, create: { data: INITIAL } })

        // Writes on b, to the followed document and to another one of the collection.
        let writing = true
        const writers = ['d', 'other'].map(async (document) => {
          for (let i = 0; writing; i++) {
            const reply = await postJson(
              b,
              '/api/ws/publish/document',
              { collection, document, operation: bump(`${document}.${i}`) },
              cluster.adminHeaders,
            )
            expect(reply.status).toBe(200)
          }
        })

        // What a failover does to a client, again and again: a new socket on the other node,
        // resuming from the next version it expects, then the old socket goes.
        const versions: number[] = []
        const unrecovered: string[] = []
        let socket = await TestClient.connect(a)
        const first = await socket.ok({ type: 'subscribe', collection, document: 'd' })
        let taken = 0
        const take = () => {
          const ops = socket.all((m) => m.type === 'op')
          versions.push(...ops.slice(taken).map((m) => m.data.v as number))
          taken = ops.length
        }
        const started = performance.now()
        let hops = 0
        for (; hops < 200 && performance.now() - started < 3000; hops++) {
          take()
          const next = await TestClient.connect(hops % 2 === 0 ? b : a)
          const v = (versions.at(-1) ?? first.data.v - 1) + 1
          const reply = await next.ok({
            type: 'subscribe',
            collection,
            document: 'd',
            since: { v },
          })
          if (reply.data.recovered !== true)
            unrecovered.push(`since v ${v}: ${JSON.stringify(reply.data)}`)
          void socket.close()
          socket = next
          taken = 0
        }
        writing = false
        await within(Promise.all(writers), 10_000, 'writers stopping')
        const final = (await getJson(b, `/api/ws/documents/${collection}/d`, cluster.adminHeaders))
          .body.v as number
        await socket.next((m) => m.type === 'op' && m.data.v === final - 1)
        take()
        await socket.close()
        console.log(
          `hops: ${hops} resumes on alternate nodes while writing, ${unrecovered.length} not recovered`,
        )
        expect(unrecovered).toEqual([])
        expect(versions).toEqual(range(first.data.v, final - 1))
      }),
    60_000,
  )
})
