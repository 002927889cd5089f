import { ErrorCode } from '../protocol/errors.ts'
import type { Json0Component, Json0Op } from '../protocol/messages.ts'
import type { DocumentSnapshot, SubmitResult } from '../protocol/server-messages.ts'
import type { RealtimeClient } from './client.ts'
import { type Deferred, deferred } from './deferred.ts'
import { Emitter } from './emitter.ts'
import { RealtimeError, RequestError } from './errors.ts'
import { applyInPlace, applyToCopy, compose, normalize, transformX } from './ot.ts'
import type { OpEvent, Subscription } from './subscription.ts'

export interface DocOpEvent {
  /** The op as applied to `data` here (a remote op transformed past local ones). */
  op: Json0Op
  /** `local`: submitted here (already applied, optimistically); `remote`: from the server. */
  source: 'local' | 'remote'
}

export interface DocEvents<T = unknown> {
  /** A snapshot was loaded from the server (first load, or a reload after a reset). */
  load: { v: number; data: T | null }
  op: DocOpEvent
  create: { data: T; source: 'local' | 'remote' }
  del: { source: 'local' | 'remote' }
  /**
   * Local changes not yet acked were dropped (their promises rejected), and:
   * - `history_unavailable`, `diverged` (a gap in the versions, or an op
   *   that does not apply), `refused` with a change's refusal as `error`:
   *   the local state was replaced by the server's (`load` came first);
   * - `refused` with `loaded` false: the channel itself was refused (403,
   *   or revoked by a refreshed token): the document is no longer followed.
   */
  reset: { reason: 'history_unavailable' | 'refused' | 'diverged'; error?: RealtimeError }
  /** Every local change has been acked. */
  nothingPending: undefined
}

/** A local change waiting for its ack: one in flight, the rest pending (composed). */
interface LocalChange {
  op?: Json0Op
  create?: { data: unknown }
  del?: true
  /** Given when first sent; a resend after a reconnect keeps it, so the server applies it once. */
  seq?: number
  /** The connection it was last sent on. */
  sentOn?: number
  callbacks: Array<Deferred<void>>
}

/**
 * Submit errors worth retrying later with the same src/seq (which keeps a
 * change the server did apply from applying twice).
 */
const TRANSIENT: ReadonlySet<number> = new Set([
  ErrorCode.RateLimited,
  ErrorCode.Internal,
  ErrorCode.Unavailable,
])

/** How long versions may stay out of order on a live channel before the Doc reloads (a gap). */
const GAP_GRACE_MS = 2000

/**
 * A json0 document kept in step with the server, ShareDB's way: local ops
 * apply at once to `data`; one op is in flight, later ones wait (composed
 * into one) until it is acked; server ops are transformed against the local
 * ones; after a reconnect the in-flight op is sent again with the same
 * src/seq, which the server applies once. Every client ends with the
 * server's snapshot.
 */
export class Doc<T = unknown> extends Emitter<DocEvents<T>> {
  /** The local snapshot (with local changes applied); null when the server has none. */
  data: T | null = null
  /** The server version this snapshot is based on (local changes not counted). */
  v = 0
  /** Whether a snapshot has been loaded from the server. */
  loaded = false
  private inflight: LocalChange | undefined
  private pending: LocalChange[] = []
  /** While a snapshot is being fetched, changes arriving are in it already. */
  private fetching = false
  /** The resume running on the current connection, if any. */
  private resuming: { connection: number; promise: Promise<void> } | undefined
  /** Changes that arrived ahead of their turn (a replay overlapping live messages). */
  private early = new Map<number, OpEvent>()
  private subscription: Subscription | undefined
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  /** An ack ahead of this.v (ops before it not received yet): taken when v reaches it. */
  private heldAck: { change: LocalChange; result: SubmitResult } | undefined
  private gapTimer: ReturnType<typeof setTimeout> | undefined
  /** subscribe() calls waiting for the snapshot. */
  private loadWaiters: Array<Deferred<void>> = []
  /** A reset whose reload has not happened yet (the connection dropped meanwhile). */
  private resetPending: DocEvents['reset'] | undefined

  /** @internal */
  constructor(
    private readonly client: RealtimeClient,
    readonly collection: string,
    readonly id: string,
  ) {
    super()
  }

  /** Whether local changes are waiting for their ack. */
  get hasPending(): boolean {
    return this.inflight !== undefined || this.pending.length > 0
  }

  /** Resolves once every local change has been acked. */
  whenNothingPending(): Promise<void> {
    return this.hasPending ? this.once('nothingPending') : Promise.resolve()
  }

  /** The document's channel subscription (presence of the document lives there). */
  get channel(): Subscription | undefined {
    return this.subscription
  }

  /**
   * Loads the snapshot and follows the document (resumed after every
   * reconnect). Resolves when it is loaded and live; rejects when the
   * server refuses the channel (403 …).
   */
  async subscribe(): Promise<void> {
    if (!this.subscription || this.subscription.ended) {
      if (!this.client.adoptDoc(this))
        throw new RealtimeError(
          'invalid_op',
          `${this.collection}.${this.id} is followed by another Doc: use client.doc() for it`,
        )
      this.subscription = this.client.documentChannel(this)
      if (this.client.isOpen) void this.resume()
    }
    await this.subscription.ready
    if (!this.loaded) {
      const waiter = deferred<void>()
      this.loadWaiters.push(waiter)
      await waiter.promise
    }
  }

  /**
   * Stops following, once the local changes are acked (they need the
   * subscription to be sent). The channel is left unless something else
   * holds it (`client.subscribe`, `client.presence`); the client forgets
   * this Doc (`client.doc` gives a new one; `subscribe()` again works on
   * this one as long as `client.doc` has not made another).
   */
  async unsubscribe(): Promise<void> {
    await this.whenNothingPending()
    const subscription = this.subscription
    this.subscription = undefined
    // Detached first, while its version is known: a holder of the channel goes on from there.
    subscription?.detachDoc(this)
    this.forgetState()
    this.client.forgetDoc(this)
    if (!subscription) return
    await subscription.unsubscribe()
  }

  /** Out of step from now on: changes and waits for versions are dropped. */
  private forgetState(): void {
    this.loaded = false
    this.early.clear()
    this.heldAck = undefined
    clearTimeout(this.gapTimer)
    this.gapTimer = undefined
  }

  /** Creates the document with this snapshot (409 if the server has one). */
  create(data: T): Promise<void> {
    const unloaded = this.notLoaded()
    if (unloaded) return Promise.reject(unloaded)
    if (this.data !== null) return Promise.reject(conflict('the document already exists here'))
    const created = structuredClone(data)
    this.data = created
    this.emit('create', { data: created, source: 'local' })
    return this.queue({ create: { data: structuredClone(data) }, callbacks: [] })
  }

  /** Deletes the document's snapshot. */
  del(): Promise<void> {
    const unloaded = this.notLoaded()
    if (unloaded) return Promise.reject(unloaded)
    this.data = null
    this.emit('del', { source: 'local' })
    return this.queue({ del: true, callbacks: [] })
  }

  /**
   * Applies a json0 op here at once and sends it. Resolves when the server
   * acked it; rejects (and the document is reset to the server's) when it
   * was refused. An op that cannot apply here is refused before it is sent;
   * so is any change while the Doc is not loaded (before `subscribe()`,
   * during a reset's reload, after `unsubscribe()`): a rejected promise,
   * never a throw.
   */
  submit(op: readonly Json0Component[]): Promise<void> {
    const unloaded = this.notLoaded()
    if (unloaded) return Promise.reject(unloaded)
    const normalized = normalize(op)
    if (normalized.length === 0) return Promise.resolve()
    if (this.data !== null) {
      try {
        this.data = applyToCopy(this.data, normalized) as T
      } catch (error) {
        return Promise.reject(
          new RealtimeError('invalid_op', `the op cannot apply: ${(error as Error).message}`),
        )
      }
    }
    this.emit('op', { op: normalized, source: 'local' })
    // Pending changes were never sent (flush moves one to inflight before it gets a seq).
    const last = this.pending[this.pending.length - 1]
    const composed = last?.op ? compose(last.op, normalized) : undefined
    if (last && composed) {
      // json0's compose: an oi/od on one path merges, na's add up, text0 edits merge.
      last.op = composed
      const callback = deferred<void>()
      last.callbacks.push(callback)
      return callback.promise
    }
    return this.queue({ op: normalized, callbacks: [] })
  }

  private queue(change: LocalChange): Promise<void> {
    const callback = deferred<void>()
    change.callbacks.push(callback)
    this.pending.push(change)
    this.flush()
    return callback.promise
  }

  private notLoaded(): RealtimeError | undefined {
    if (this.loaded) return undefined
    return new RealtimeError(
      'invalid_op',
      `${this.collection}.${this.id} is not loaded (subscribe() it, or wait for its reload)`,
    )
  }

  /** Drops every local change (their promises rejected with `error`). */
  private dropLocal(error: RealtimeError): boolean {
    const dropped = [this.inflight, ...this.pending].filter((c): c is LocalChange => !!c)
    this.inflight = undefined
    this.pending = []
    this.heldAck = undefined
    clearTimeout(this.retryTimer)
    for (const change of dropped) for (const callback of change.callbacks) callback.reject(error)
    return dropped.length > 0
  }

  /** @internal The client closed: local changes will never be acked. */
  abandon(error: RealtimeError): void {
    this.subscription = undefined
    this.forgetState()
    for (const waiter of this.loadWaiters.splice(0)) waiter.reject(error)
    if (this.dropLocal(error)) this.emit('nothingPending', undefined)
  }

  /** @internal The channel was refused for good (403, revoked): no longer followed. */
  failed(error: RealtimeError): void {
    this.subscription = undefined
    this.forgetState()
    this.resetPending = undefined
    this.client.forgetDoc(this)
    for (const waiter of this.loadWaiters.splice(0)) waiter.reject(error)
    const dropped = this.dropLocal(error)
    this.emit('reset', { reason: 'refused', error })
    if (dropped) this.emit('nothingPending', undefined)
  }

  /** @internal The version to resume from, or undefined to load first. */
  sinceV(): number | undefined {
    return this.loaded && !this.fetching ? this.v : undefined
  }

  /**
   * @internal Brings the document back on a (new) connection: a first load
   * queries the snapshot, then subscribes from its version, so nothing is
   * missed between the two.
   */
  resume(): Promise<void> {
    // One at a time per connection: a subscribe() from a `connected` listener and the
    // client's own resync must not load the snapshot twice (the second load would wipe
    // a change made after the first).
    const connection = this.client.connectionNumber
    if (this.resuming?.connection === connection) return this.resuming.promise
    const promise = this.resumeOnce()
    this.resuming = { connection, promise }
    const done = () => {
      if (this.resuming?.promise === promise) this.resuming = undefined
    }
    promise.then(done, done)
    return promise
  }

  private async resumeOnce(): Promise<void> {
    const subscription = this.subscription
    if (!subscription) return
    if (!this.loaded && !(await this.fetch())) return
    await subscription.resume()
  }

  /**
   * Queries the snapshot. Changes that arrive before the reply are in it,
   * changes after it are newer. Passing refusals (429, 500, 503) are
   * retried with backoff; a final one fails the channel. Returns false if
   * it did not load (the connection dropped, or refused).
   */
  private async fetch(): Promise<boolean> {
    const connection = this.client.connectionNumber
    let snapshot: DocumentSnapshot | undefined
    for (let attempt = 0; !snapshot; attempt++) {
      this.fetching = true
      try {
        snapshot = (await this.client.call(
          'query',
          { collection: this.collection, document: this.id },
          { timeout: 0 },
        )) as DocumentSnapshot
      } catch (error) {
        this.fetching = false
        if (!(error instanceof RequestError)) return false // the connection dropped
        // A document the server never saw: no snapshot and no version yet.
        if (error.code === ErrorCode.NotFound) snapshot = { v: 0, data: null }
        else if (TRANSIENT.has(error.code)) {
          await new Promise((resolve) => setTimeout(resolve, this.client.retryDelay(attempt)))
          if (connection !== this.client.connectionNumber || !this.client.isOpen) return false
          if (!this.subscription) return false
        } else {
          this.subscription?.fail(error)
          return false
        }
      }
    }
    this.fetching = false
    this.early.clear()
    this.heldAck = undefined
    this.v = snapshot.v
    this.data = snapshot.data as T | null
    this.loaded = true
    this.emit('load', { v: this.v, data: this.data })
    for (const waiter of this.loadWaiters.splice(0)) waiter.resolve()
    const reset = this.resetPending
    this.resetPending = undefined
    if (reset) this.emit('reset', reset)
    return true
  }

  /**
   * @internal The document channel's subscribe reply. With `lost`, ops were
   * missed for good: the snapshot is fetched again and local changes are
   * dropped. Then the change in flight is (re)sent.
   */
  async subscribed(lost: boolean): Promise<void> {
    if (lost || this.early.size > 0) {
      // A replay that ends with changes still waiting for an earlier one has a gap.
      await this.hardReset(lost ? 'history_unavailable' : 'diverged')
      return
    }
    this.flush()
    this.watchGap()
  }

  /** Drops local changes, reloads the server's snapshot and tells the app. */
  private async hardReset(
    reason: 'history_unavailable' | 'refused' | 'diverged',
    error?: RealtimeError,
  ): Promise<void> {
    // Until the snapshot is back, `data` still holds the dropped changes: not a base for anything.
    this.forgetState()
    const why =
      error ?? new RealtimeError('reset', `${this.collection}.${this.id} was reset (${reason})`)
    const dropped = this.dropLocal(why)
    // Emitted once the snapshot is back (after a reconnect, if the connection drops meanwhile).
    this.resetPending = error ? { reason, error } : { reason }
    if (dropped) this.emit('nothingPending', undefined)
    if (this.client.isOpen && this.subscription) await this.fetch()
  }

  /**
   * @internal A change from the server (live, or replayed after a
   * reconnect). Returns whether it was new here.
   */
  receive(event: OpEvent): boolean {
    if (this.fetching || !this.loaded) return false
    const v = event.data.v
    if (v < this.v) return false
    if (v > this.v) {
      this.early.set(v, event)
      this.watchGap()
      return false
    }
    this.apply(event)
    this.drainEarly()
    return true
  }

  /** Applies the changes (and an ack) that arrived ahead of their turn, now that it came. */
  private drainEarly(): void {
    while (this.loaded) {
      for (const v of [...this.early.keys()]) if (v < this.v) this.early.delete(v)
      const held = this.heldAck
      if (held && held.result.v <= this.v) {
        this.heldAck = undefined
        this.acknowledged(held.change, held.result) // drains on
        return
      }
      const next = this.early.get(this.v)
      if (!next) break
      this.early.delete(this.v)
      this.apply(next)
    }
    this.watchGap()
  }

  /**
   * Versions out of order on a live channel (a change, or an ack, ahead of
   * `v`) are normal for a moment (overlapping channels); if the missing ones
   * have not come within a grace period, one was lost: reload.
   */
  private watchGap(): void {
    if (this.early.size === 0 && !this.heldAck) {
      clearTimeout(this.gapTimer)
      this.gapTimer = undefined
      return
    }
    if (this.gapTimer || !this.subscription?.isLive) return
    this.gapTimer = setTimeout(() => {
      this.gapTimer = undefined
      if ((this.early.size > 0 || this.heldAck) && this.subscription?.isLive)
        void this.hardReset('diverged')
    }, GAP_GRACE_MS)
  }

  private apply(event: OpEvent): void {
    const data = event.data
    const inflight = this.inflight
    // This client's own change, replayed after a reconnect: it was applied, so this is its ack.
    if (data.src === this.client.src && inflight && data.seq === inflight.seq) {
      this.acknowledged(inflight, { v: data.v, offset: data.offset })
      return
    }
    this.v = data.v + 1
    if ('op' in data) {
      let op = data.op as Json0Op
      for (const change of [inflight, ...this.pending]) {
        if (!change?.op) continue
        ;[change.op, op] = transformX(change.op, op)
      }
      if (this.data !== null && !this.hasLocalDel()) {
        try {
          this.data = applyInPlace(this.data, op) as T
        } catch {
          void this.hardReset('diverged')
          return
        }
      }
      this.emit('op', { op, source: 'remote' })
    } else if ('create' in data) {
      const created = structuredClone(data.create.data) as T
      this.data = created
      if (this.hasPending) {
        void this.hardReset('refused', conflict('the document was created by someone else'))
        return
      }
      this.emit('create', { data: created, source: 'remote' })
    } else {
      this.data = null
      if (this.hasPending) {
        void this.hardReset('refused', notFound('the document was deleted'))
        return
      }
      this.emit('del', { source: 'remote' })
    }
  }

  private hasLocalDel(): boolean {
    return [this.inflight, ...this.pending].some((change) => change?.del)
  }

  /** Sends the change in flight (again, on a new connection) or the next pending one. */
  private flush(): void {
    if (!this.subscription?.isLive || this.fetching || !this.loaded) return
    while (!this.inflight) {
      const next = this.pending.shift()
      if (!next) return
      if (next.op?.length === 0) {
        // Composed into nothing (typed, then deleted): done, with nothing to send.
        for (const callback of next.callbacks) callback.resolve()
        if (!this.hasPending) this.emit('nothingPending', undefined)
        continue
      }
      this.inflight = next
    }
    const change = this.inflight
    if (change.sentOn === this.client.connectionNumber) return
    if (change.op?.length === 0) {
      // Transformed into nothing by a concurrent op since it was sent (and not in the
      // resume's replay, which would have acked it by src/seq): nothing left to send.
      this.inflight = undefined
      for (const callback of change.callbacks) callback.resolve()
      if (!this.hasPending) this.emit('nothingPending', undefined)
      this.flush()
      return
    }
    change.seq ??= this.client.nextSeq()
    change.sentOn = this.client.connectionNumber
    const fields = {
      collection: this.collection,
      document: this.id,
      v: this.v,
      src: this.client.src,
      seq: change.seq,
      ...(change.op
        ? { op: change.op }
        : change.create
          ? { create: change.create }
          : { del: true as const }),
    }
    this.client.call('submit', fields, { timeout: 0 }).then(
      (result) => this.acknowledged(change, result),
      (error: unknown) => this.refused(change, error),
    )
  }

  private acknowledged(change: LocalChange, result: SubmitResult): void {
    // Acked already (its replay came first), or dropped by a reset.
    if (this.inflight !== change) return
    if (result.v > this.v) {
      // Ops before it are still on their way (a replay, an overlapping channel): wait for them.
      this.heldAck = { change, result }
      this.watchGap()
      return
    }
    this.client.ownChange(this.collection, result.offset)
    if (result.v < this.v) {
      void this.hardReset('diverged')
      return
    }
    this.v = result.v + 1
    this.inflight = undefined
    for (const callback of change.callbacks) callback.resolve()
    this.drainEarly()
    this.flush()
    if (!this.hasPending) this.emit('nothingPending', undefined)
  }

  private refused(change: LocalChange, error: unknown): void {
    if (this.inflight !== change) return
    // The connection dropped: sent again, with the same seq, after the resume.
    if (!(error instanceof RealtimeError) || !error.refused) return
    if (error instanceof RequestError && TRANSIENT.has(error.code)) {
      // The same change, later: the same seq keeps it from applying twice if it was applied.
      change.sentOn = undefined
      this.retryTimer = setTimeout(() => this.flush(), this.client.retryDelay(0))
      return
    }
    // Refused by the server, or here (413: a frame over maxMessageSize): never sent again.
    void this.hardReset('refused', error)
  }
}

const conflict = (message: string) => new RealtimeError(ErrorCode.Conflict, message)
const notFound = (message: string) => new RealtimeError(ErrorCode.NotFound, message)
