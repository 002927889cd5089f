import type { Bus } from '../cluster/bus.ts'
import type { Logger } from '../observability/logger.ts'
import type { Store } from '../store/store.ts'
import type { StreamEntry } from '../streams/entry.ts'
import type { Committed, LocalDelivery, NodeBroker } from './broker.ts'
import { Sequencer, type SequencerStats, type Settle } from './sequencer.ts'

export interface RedisBrokerOptions {
  /** How long an offset may be missing, while a later one is known, before it is read from the store (ms). */
  gapWait?: number
  /** How often every followed collection's head is checked in the store, to catch a lost last message (ms). */
  pollInterval?: number
  /** How long a collection stays followed after its last local subscriber left (ms). */
  linger?: number
  /** Entries per store read. */
  pageSize?: number
}

const DEFAULTS: Required<RedisBrokerOptions> = {
  gapWait: 50,
  pollInterval: 1000,
  linger: 5000,
  pageSize: 500,
}

export interface RedisBrokerStats extends SequencerStats {
  /** Entries received from other processes over Redis. */
  received: number
  /** PUBLISHes that failed (Redis away): other processes read those entries from the store. */
  publishFailures: number
}

/** One PUBLISH: the entries one commit of `node` appended to a collection. */
interface WireMessage {
  node: string
  items: Array<{ entry: StreamEntry; exclude?: readonly string[] }>
}

interface Follow {
  /** Local followers (NodeBroker.follow calls not yet unfollowed). */
  refs: number
  readonly sequencer: Sequencer
  readonly handler: (message: string) => void
  /** While starting: the promise every `follow` call gets. */
  ready: Promise<void> | undefined
  linger: ReturnType<typeof setTimeout> | undefined
}

const channelOf = (collection: string) => `ch:${collection}`

/**
 * The cluster's NodeBroker. Each commit is published once per collection on
 * `ch:{collection}`; every process following that collection feeds what it
 * receives, and its own commits, through the collection's Sequencer, which
 * delivers in offset order and reads from the store whatever Redis lost.
 * A collection's head is also checked in the store every `pollInterval`
 * and after each Redis reconnection, since a lost last message leaves no
 * gap behind it to notice.
 */
export class RedisBroker implements NodeBroker {
  private readonly follows = new Map<string, Follow>()
  private readonly options: Required<RedisBrokerOptions>
  private readonly counters: RedisBrokerStats = {
    received: 0,
    delivered: 0,
    duplicates: 0,
    early: 0,
    gapFills: 0,
    filled: 0,
    skipped: 0,
    publishFailures: 0,
  }
  private readonly pollTimer: ReturnType<typeof setInterval>
  private polling = false
  /** A reconnection asked for a poll while one was running. */
  private pollAgain = false
  /** An outage was logged and its end was not yet. */
  private publishFailing = false
  private storeFailing = false
  private closed = false

  constructor(
    private readonly bus: Bus,
    private readonly store: Pick<Store, 'head' | 'readRange'>,
    private readonly deliver: LocalDelivery,
    private readonly logger: Logger,
    options: RedisBrokerOptions = {},
  ) {
    this.options = { ...DEFAULTS, ...options }
    this.pollTimer = setInterval(() => void this.poll(), this.options.pollInterval)
    this.pollTimer.unref()
    bus.onReconnect(() => {
      // Whatever was published while the subscription was down is lost.
      if (this.polling) this.pollAgain = true
      else void this.poll()
    })
  }

  /**
   * A follow that rejects (Redis or the store unreachable) counts for
   * nothing: its caller must not unfollow it.
   */
  follow(collection: string): Promise<void> | undefined {
    const existing = this.follows.get(collection)
    if (existing) {
      existing.refs++
      clearTimeout(existing.linger)
      existing.linger = undefined
      return existing.ready
    }
    if (this.closed) return Promise.reject(new Error('the broker is closed'))
    const follow: Follow = {
      refs: 1,
      sequencer: new Sequencer(collection, {
        deliver: this.deliver,
        read: (after, until, limit) => this.store.readRange(collection, after, until, limit),
        readOutcome: (error) => this.storeOutcome(error),
        logger: this.logger,
        stats: this.counters,
        gapWait: this.options.gapWait,
        pageSize: this.options.pageSize,
      }),
      handler: (message) => this.onMessage(follow, message),
      ready: undefined,
      linger: undefined,
    }
    this.follows.set(collection, follow)
    follow.ready = this.start(collection, follow)
    return follow.ready
  }

  unfollow(collection: string): void {
    const follow = this.follows.get(collection)
    if (!follow || follow.refs === 0) return
    follow.refs--
    if (follow.refs > 0) return
    // A subscriber coming back within `linger` finds everything in place.
    follow.linger = setTimeout(() => this.release(collection, follow), this.options.linger)
    follow.linger.unref()
  }

  delivered(collection: string): number | undefined {
    return this.follows.get(collection)?.sequencer.delivered
  }

  reached(collection: string, offset: number): Promise<void> {
    const follow = this.follows.get(collection)
    if (!follow) return Promise.reject(new Error(`collection ${collection} is not followed here`))
    return follow.sequencer.reached(offset)
  }

  committed(items: readonly Committed[], settle: Settle): void {
    const byCollection = new Map<string, Committed[]>()
    for (const item of items) {
      const group = byCollection.get(item.entry.collection)
      if (group) group.push(item)
      else byCollection.set(item.entry.collection, [item])
    }
    for (const [collection, group] of byCollection) this.publish(collection, group)
    for (const item of items) {
      const follow = this.follows.get(item.entry.collection)
      if (follow) {
        follow.sequencer.receive(item, settle)
        continue
      }
      try {
        settle(item, 0)
      } catch (error) {
        this.logger.error({ err: error }, 'settling a commit failed')
      }
    }
  }

  /** Counters since start. */
  stats(): RedisBrokerStats {
    return { ...this.counters }
  }

  async close(): Promise<void> {
    this.closed = true
    clearInterval(this.pollTimer)
    for (const [collection, follow] of [...this.follows]) this.release(collection, follow)
  }

  /** Subscribes, then reads the head: nothing committed after the head can be missed. */
  private async start(collection: string, follow: Follow): Promise<void> {
    try {
      await this.bus.subscribe(channelOf(collection), follow.handler)
      const head = await this.store.head(collection)
      // Let go (or closed) meanwhile: nobody waits for it any more.
      if (this.follows.get(collection) !== follow) return
      follow.sequencer.start(head)
      follow.ready = undefined
    } catch (error) {
      if (this.follows.get(collection) === follow) this.release(collection, follow)
      throw error
    }
  }

  private release(collection: string, follow: Follow): void {
    if (this.follows.get(collection) === follow) this.follows.delete(collection)
    clearTimeout(follow.linger)
    this.bus.unsubscribe(channelOf(collection), follow.handler)
    follow.sequencer.close()
  }

  private publish(collection: string, items: readonly Committed[]): void {
    let message: string
    try {
      const wire: WireMessage = {
        node: this.bus.nodeId,
        items: items.map(({ entry, exclude }) => (exclude ? { entry, exclude } : { entry })),
      }
      message = JSON.stringify(wire)
    } catch (error) {
      // The other processes read it from the store.
      this.logger.error(
        { err: error, collection },
        'a committed entry could not be encoded for Redis',
      )
      return
    }
    this.bus.publish(channelOf(collection), message).then(
      () => {
        if (!this.publishFailing) return
        this.publishFailing = false
        this.logger.info('publishing commits to Redis works again')
      },
      (error: unknown) => {
        this.counters.publishFailures++
        if (this.publishFailing) return
        this.publishFailing = true
        this.logger.warn(
          { err: error, collection },
          'publishing commits to Redis failed; other processes read them from the store',
        )
      },
    )
  }

  private onMessage(follow: Follow, raw: string): void {
    const message = parseWire(raw, follow.sequencer.collection)
    if (!message) {
      this.logger.warn({ collection: follow.sequencer.collection }, 'malformed message on the bus')
      return
    }
    // This process's own commits went to its sequencer when they committed.
    if (message.node === this.bus.nodeId) return
    for (const { entry, exclude } of message.items) {
      this.counters.received++
      follow.sequencer.receive({ entry, exclude })
    }
  }

  /** Reads every followed collection's head and hands it to its sequencer. */
  private async poll(): Promise<void> {
    if (this.polling) return
    this.polling = true
    try {
      do {
        this.pollAgain = false
        for (const [collection, follow] of [...this.follows]) {
          if (this.closed) return
          if (follow.sequencer.delivered === undefined) continue
          let head: number
          try {
            head = await this.store.head(collection)
          } catch (error) {
            // Tried again at the next tick.
            this.storeOutcome(error)
            return
          }
          this.storeOutcome(undefined)
          if (this.follows.get(collection) === follow) follow.sequencer.expect(head)
        }
      } while (this.pollAgain)
    } finally {
      this.polling = false
    }
  }

  private storeOutcome(error: unknown): void {
    if (error === undefined) {
      if (!this.storeFailing) return
      this.storeFailing = false
      this.logger.info('reading the store for the broker works again')
      return
    }
    if (this.storeFailing) return
    this.storeFailing = true
    this.logger.warn({ err: error }, 'reading the store for the broker failed; retrying every poll')
  }
}

/** The message if it has the shape `publish` gives it, for this collection. */
function parseWire(raw: string, collection: string): WireMessage | undefined {
  let value: unknown
  try {
    value = JSON.parse(raw)
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null) return undefined
  const { node, items } = value as { node?: unknown; items?: unknown }
  if (typeof node !== 'string' || !Array.isArray(items)) return undefined
  for (const item of items as unknown[]) {
    if (typeof item !== 'object' || item === null) return undefined
    const { entry, exclude } = item as { entry?: unknown; exclude?: unknown }
    if (typeof entry !== 'object' || entry === null) return undefined
    const { collection: of, offset } = entry as { collection?: unknown; offset?: unknown }
    if (of !== collection || !Number.isSafeInteger(offset) || (offset as number) < 1)
      return undefined
    if (
      exclude !== undefined &&
      !(Array.isArray(exclude) && exclude.every((id) => typeof id === 'string'))
    )
      return undefined
  }
  return value as WireMessage
}
