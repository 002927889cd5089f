import { channelName } from '../protocol/channels.ts'
import type { OpData, SubscribeData } from '../protocol/server-messages.ts'
import type { RealtimeClient } from './client.ts'
import { type Deferred, deferred } from './deferred.ts'
import type { Doc } from './doc.ts'
import { Emitter } from './emitter.ts'
import { RealtimeError, RequestError } from './errors.ts'
import { ChannelPresence } from './presence.ts'

/** A change to a document, as delivered to a channel's listeners. */
export interface OpEvent {
  collection: string
  document: string
  /** `op`, `create` or `del`, with `v`, `offset`, `epoch`, `source` and the submitter's `src`/`seq`. */
  data: OpData
  /** When the change was stored. */
  timestamp: string
}

/** A channel broadcast (REST `broadcast/channel`), numbered in its collection's stream. */
export interface ChannelMessage {
  collection: string
  document?: string
  message: unknown
  offset: number
  epoch: string
  timestamp: string
}

export interface SubscribedEvent {
  epoch: string
  /** The collection's stream head at the reply: everything up to it is past or was replayed. */
  offset: number
  /** With `since` (a resume): whether everything missed was replayed. */
  recovered?: boolean
  /**
   * Whether the subscribe asked for a replay (`since`): a resume after a
   * reconnect, or a collection subscribed with a `since` position. A Doc's
   * first subscribe is a resume too (it loads the snapshot, then subscribes
   * from its version).
   */
  resumed: boolean
}

/**
 * The history could not be replayed (`recovered: false`: pruned, another
 * epoch, or `since` ahead of the server). Messages were missed: re-query
 * (`client.query`) and go on; the subscription itself is live again.
 */
export interface ResetEvent {
  channel: string
  reason: 'history_unavailable' | 'epoch_changed'
  epoch: string
  offset: number
}

export interface SubscriptionEvents {
  subscribed: SubscribedEvent
  op: OpEvent
  message: ChannelMessage
  reset: ResetEvent
  /**
   * The server refused the subscription for good (400, 403, 404; or a
   * refreshed token revoked it): it is over, with no retry. Passing
   * refusals (409 while a replay runs, 429, 500, 503) are retried with
   * backoff and are not events.
   */
  error: RealtimeError
}

/**
 * `pending`: waiting for the subscribe reply (at first, and again after
 * every drop until the resume's reply); `live`: subscribed on the current
 * connection; `failed`: refused for good; `closed`: unsubscribed.
 */
export type SubscriptionState = 'pending' | 'live' | 'failed' | 'closed'

/** Subscribe refusals that retrying cannot fix; the others are retried with backoff. */
const FINAL_REFUSALS: ReadonlySet<number> = new Set([400, 401, 403, 404])

/** Where a collection subscription resumes from. */
export interface CollectionPosition {
  epoch: string
  offset: number
}

/**
 * One channel followed across reconnects. It remembers its position (a
 * collection's `{epoch, offset}`, a document's `{v}`), resubscribes with
 * `since` after a reconnect, and lets each message through once: a resume's
 * replay and live messages from an overlapping channel can both carry it.
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string
  readonly presence: ChannelPresence
  state: SubscriptionState = 'pending'
  /** The stream's epoch, and the last offset taken (collection) or the last reply's head (document). */
  epoch: string | undefined
  offset: number | undefined
  /** Offsets taken out of order while a replay is running (see `take`). */
  private readonly seen = new Set<number>()
  private catchingUp = false
  /** A document channel with no Doc: the next version expected. */
  private nextV: number | undefined
  /** @internal The Doc that owns this document channel's ops and position. */
  doc: Doc | undefined
  private firstReply: Deferred<void> = deferred()
  /** The connection a resume is running on (one at a time per connection). */
  private resumingOn: number | undefined
  /** The connection the last subscribe reply came on: live there. */
  private liveOn: number | undefined
  /** Holders (client.subscribe / client.presence calls, a Doc): unsubscribed when the last lets go. */
  private refs = 0
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private wake: (() => void) | undefined

  constructor(
    private readonly client: RealtimeClient,
    readonly collection: string,
    readonly document: string | undefined,
    since?: CollectionPosition | { v: number },
  ) {
    super()
    this.channel = channelName(collection, document)
    this.presence = new ChannelPresence({
      send: async (state) => {
        const reply = await client.call('presence', this.ref({ data: state }), { timeout: 0 })
        return reply.mode
      },
      live: () => this.isLive,
      isOwn: (connectionId) => client.isOwnConnection(connectionId),
      unsubscribe: () => this.unsubscribe(),
    })
    if (since && 'epoch' in since) {
      this.epoch = since.epoch
      this.offset = since.offset
    } else if (since) this.nextV = since.v
    // Nobody may await it (a fire-and-forget subscribe): a failure is an `error` event too.
    this.firstReply.promise.catch(() => {})
  }

  /** Resolves once subscribed (the first reply); rejects if the server refused. */
  get ready(): Promise<void> {
    return this.firstReply.promise
  }

  /** Whether it is subscribed on the current connection (messages flow, presence can be set). */
  get isLive(): boolean {
    return (
      this.state === 'live' && this.liveOn === this.client.connectionNumber && this.client.isOpen
    )
  }

  /** @internal One more holder (client.subscribe, client.presence, a Doc). */
  retain(): this {
    this.refs++
    return this
  }

  /**
   * Lets go of this holder's reference: the channel (and its presence) is
   * left when the last holder lets go. Each `client.subscribe()` and
   * `client.presence()` call takes one reference, a subscribed Doc one.
   */
  async unsubscribe(): Promise<void> {
    if (this.ended) return
    if (--this.refs > 0) return
    this.close()
    if (this.client.isOpen)
      await this.client.call('unsubscribe', this.ref({}), { timeout: 0 }).catch(() => {})
  }

  /** Whether it ended: closed or refused (state can change across an await). */
  get ended(): boolean {
    return this.state === 'closed' || this.state === 'failed'
  }

  /** @internal The server refused or revoked it: over, with no retry. */
  fail(error: RealtimeError): void {
    if (this.ended) return
    this.state = 'failed'
    this.stopRetry()
    this.presence.reset(error)
    this.client.forget(this)
    this.firstReply.reject(error)
    const doc = this.doc
    this.doc = undefined
    doc?.failed(error)
    this.emit('error', error)
  }

  /** @internal Stops following, without telling the server (it is gone or told separately). */
  close(): void {
    if (this.ended) return
    this.state = 'closed'
    this.stopRetry()
    const error = new RealtimeError('closed', `${this.channel} was closed`)
    this.presence.reset(error)
    this.client.forget(this)
    this.firstReply.reject(error)
  }

  /** @internal A Doc stops using this channel (others may still hold it). */
  detachDoc(doc: Doc): void {
    if (this.doc !== doc) return
    this.doc = undefined
    this.nextV = doc.loaded ? doc.v : undefined
  }

  private stopRetry(): void {
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    this.wake?.()
  }

  /** A pause before a refused subscribe is sent again; cut short by a drop or an end. */
  private pause(attempt: number): Promise<void> {
    return new Promise((resolve) => {
      this.wake = () => {
        this.wake = undefined
        resolve()
      }
      this.retryTimer = setTimeout(() => this.wake?.(), this.client.retryDelay(attempt))
    })
  }

  /** @internal What a (re)subscribe asks for: the position to resume from, if any. */
  private since(): CollectionPosition | { v: number } | undefined {
    if (this.document === undefined)
      return this.epoch !== undefined && this.offset !== undefined
        ? { epoch: this.epoch, offset: this.offset }
        : undefined
    const v = this.doc ? this.doc.sinceV() : this.nextV
    return v === undefined ? undefined : { v }
  }

  /**
   * @internal Sends `subscribe` (with `since` when there is a position) on
   * the current connection and takes the reply. A final refusal (400, 401,
   * 403, 404) ends the subscription; a passing one (409 while a replay
   * runs, 429, 500, 503) is retried with backoff; a lost connection leaves
   * it for the next resume. Nothing to do when it is live on this connection.
   */
  async resume(): Promise<void> {
    const connection = this.client.connectionNumber
    if (this.ended || this.resumingOn === connection || this.isLive) return
    this.resumingOn = connection
    try {
      for (let attempt = 0; ; attempt++) {
        const outcome = await this.subscribeOnce()
        if (outcome !== 'retry') return
        await this.pause(attempt)
        if (this.ended || connection !== this.client.connectionNumber || !this.client.isOpen) return
      }
    } finally {
      if (this.resumingOn === connection) this.resumingOn = undefined
    }
  }

  private async subscribeOnce(): Promise<'done' | 'retry'> {
    const connection = this.client.connectionNumber
    const since = this.since()
    const resumed = since !== undefined
    this.catchingUp = resumed
    // A document resuming by version has no offset yet: every message of the replay is new.
    if (resumed && this.offset === undefined) this.offset = 0
    this.presence.beginSnapshot()
    let reply: SubscribeData
    try {
      reply = await this.client.call('subscribe', this.ref(since === undefined ? {} : { since }), {
        timeout: 0,
      })
    } catch (error) {
      if (!(error instanceof RequestError)) return 'done' // the connection dropped
      if (FINAL_REFUSALS.has(error.code)) {
        this.fail(error)
        return 'done'
      }
      return 'retry'
    }
    if (this.ended || connection !== this.client.connectionNumber) return 'done'
    const epochChanged = this.epoch !== undefined && this.epoch !== reply.epoch
    this.epoch = reply.epoch
    this.offset = reply.offset
    this.seen.clear()
    this.catchingUp = false
    if (this.document !== undefined && !this.doc && (!resumed || reply.recovered === false))
      this.nextV = reply.v
    this.state = 'live'
    this.liveOn = connection
    this.presence.endSnapshot()
    const lost = reply.recovered === false || (epochChanged && this.document === undefined)
    if (lost)
      this.emit('reset', {
        channel: this.channel,
        reason: epochChanged ? 'epoch_changed' : 'history_unavailable',
        epoch: reply.epoch,
        offset: reply.offset,
      })
    const event: SubscribedEvent = { epoch: reply.epoch, offset: reply.offset, resumed }
    if (reply.recovered !== undefined) event.recovered = reply.recovered
    this.firstReply.resolve()
    if (this.doc) await this.doc.subscribed(lost || epochChanged)
    this.emit('subscribed', event)
    // The own state (kept while away, or set before the reply) goes out now.
    this.presence.flush(true)
    return 'done'
  }

  /** @internal The connection dropped: pending until the next resume's reply. */
  disconnected(): void {
    if (this.state === 'live') this.state = 'pending'
    this.stopRetry()
  }

  /**
   * Whether a message at this offset is new here; takes it if so. While a
   * replay runs, live messages of an overlapping channel can arrive ahead
   * of it: those are remembered until the replay reaches them.
   */
  private take(offset: number): boolean {
    if (this.offset === undefined || offset <= this.offset || this.seen.has(offset)) return false
    if (!this.catchingUp) this.offset = offset
    else if (offset === this.offset + 1 && this.document === undefined) {
      this.offset = offset
      while (this.seen.delete(this.offset + 1)) this.offset++
    } else this.seen.add(offset)
    return true
  }

  /** @internal A change of this collection or document. */
  receiveOp(event: OpEvent): void {
    if (this.ended) return
    const own = event.data.src !== undefined && event.data.src === this.client.src
    if (this.document === undefined) {
      // The submitter is never echoed its own op live; a replay carries it: not news either.
      if (this.take(event.data.offset) && !own) this.emit('op', event)
      return
    }
    if (this.doc) {
      if (this.doc.receive(event)) this.emit('op', event)
      return
    }
    if (this.nextV === undefined || event.data.v < this.nextV) return
    this.nextV = event.data.v + 1
    if (!own) this.emit('op', event)
  }

  /** @internal This client's own change was acked at this offset (collections skip it on resume). */
  noteOwn(offset: number): void {
    if (this.document === undefined) this.take(offset)
  }

  /** @internal A channel broadcast. */
  receiveMessage(message: ChannelMessage): void {
    if (this.ended) return
    if (this.take(message.offset)) this.emit('message', message)
  }

  /** The channel's fields for a request. */
  private ref<T extends object>(fields: T): T & { collection: string; document?: string } {
    return this.document === undefined
      ? { ...fields, collection: this.collection }
      : { ...fields, collection: this.collection, document: this.document }
  }
}
