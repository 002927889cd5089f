import type { Logger } from '../observability/logger.ts'
import type { Maybe } from '../store/store.ts'
import type { StreamEntry } from '../streams/entry.ts'
import type { Committed, LocalDelivery } from './broker.ts'

/** Told once an entry committed here is delivered here (see NodeBroker.committed). */
export type Settle = (item: Committed, recipients: number) => void

/** Counters of a broker's sequencers, for tests and logs. */
export interface SequencerStats {
  /** Entries handed to local delivery. */
  delivered: number
  /** Entries dropped because they were delivered (or held) already. */
  duplicates: number
  /** Entries that arrived before an earlier one and waited for it. */
  early: number
  /** Store reads started because an offset stayed missing for `gapWait`. */
  gapFills: number
  /** Entries delivered from the store rather than from the bus. */
  filled: number
  /** Entries never delivered here because the store no longer held them. */
  skipped: number
}

export interface SequencerDeps {
  deliver: LocalDelivery
  /** The store's entries with after < offset ≤ until, oldest first, at most `limit`. */
  read(after: number, until: number, limit: number): Maybe<StreamEntry[]>
  /** Each store read's outcome (undefined: it worked), for logging once per outage. */
  readOutcome(error: unknown): void
  logger: Logger
  stats: SequencerStats
  /** How long an offset may be missing before it is read from the store (ms). */
  gapWait: number
  /** Entries per store read. */
  pageSize: number
}

interface Pending {
  item: Committed
  /** Set for entries committed by this process. */
  settle: Settle | undefined
  /** performance.now() when it arrived. */
  at: number
}

interface Waiter {
  offset: number
  resolve(): void
  reject(error: Error): void
}

/**
 * Puts one collection's entries back in offset order on this process, each
 * delivered once. Entries arrive from the bus (any order, some never) and
 * from this process's commits; the next one (`delivered + 1`) is delivered
 * at once, later ones are held, earlier ones dropped. An offset missing for
 * `gapWait` while a later one is known (held, or the store's head seen by
 * `expect`) is read from the store, one read in flight at a time.
 *
 * Entries read from the store come without their exclusion list (it is not
 * stored): they are delivered to every local subscriber, the submitter
 * included, unless the entry is also held from the bus. Only a message that
 * never arrived is read, so this is rare.
 */
export class Sequencer {
  /** The last offset delivered; undefined until `start`. */
  private last: number | undefined
  private readonly held = new Map<number, Pending>()
  /** Highest offset known to be committed (the store's head at a poll), and since when. */
  private known = 0
  private knownAt = 0
  private gapTimer: ReturnType<typeof setTimeout> | undefined
  private draining = false
  private filling = false
  /** A store read failed: the next `expect` (a poll) tries again, not the gap timer. */
  private paused = false
  private waiters: Waiter[] = []
  private closed = false

  constructor(
    readonly collection: string,
    private readonly deps: SequencerDeps,
  ) {}

  get delivered(): number | undefined {
    return this.last
  }

  /** Delivery starts after `head`; what was received before and is not after it is dropped. */
  start(head: number): void {
    this.last = head
    for (const [offset, pending] of this.held) {
      if (offset > head) continue
      this.held.delete(offset)
      this.settle(pending.item, pending.settle, 0)
    }
    this.resolveWaiters()
    this.advance()
  }

  /** An entry from the bus, or (with `settle`) one this process committed. */
  receive(item: Committed, settle?: Settle): void {
    if (this.closed) {
      if (settle) this.settle(item, settle, 0)
      return
    }
    const offset = item.entry.offset
    if (this.last !== undefined && offset <= this.last) {
      this.deps.stats.duplicates++
      // Delivered from the store before its commit got here.
      if (settle) this.settle(item, settle, 0)
      return
    }
    const held = this.held.get(offset)
    if (held) {
      this.deps.stats.duplicates++
      // Only this process's own copy carries a settle: keep that one.
      if (settle && !held.settle) this.held.set(offset, { item, settle, at: held.at })
      return
    }
    this.held.set(offset, { item, settle, at: performance.now() })
    this.advance()
    if (this.last !== undefined && this.held.has(offset)) this.deps.stats.early++
  }

  /** The store's head was `head` (a poll): fill up to it if that stays missing for `gapWait`. */
  expect(head: number): void {
    if (this.closed) return
    if (head > this.known) {
      this.known = head
      this.knownAt = performance.now()
    }
    this.paused = false
    this.watchGap()
  }

  /** Resolves once `offset` is delivered; rejects if the collection is let go first. */
  reached(offset: number): Promise<void> {
    if (this.last !== undefined && offset <= this.last) return Promise.resolve()
    if (this.closed) return Promise.reject(this.gone())
    return new Promise((resolve, reject) => this.waiters.push({ offset, resolve, reject }))
  }

  /**
   * Stops: timers cleared, waiters rejected. Entries committed here and still
   * held are settled with no recipients: they are durable, their acks must go.
   */
  close(): void {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.gapTimer)
    const held = [...this.held.values()]
    this.held.clear()
    for (const pending of held) this.settle(pending.item, pending.settle, 0)
    const waiters = this.waiters
    this.waiters = []
    for (const waiter of waiters) waiter.reject(this.gone())
  }

  private gone(): Error {
    return new Error(`collection ${this.collection} is no longer followed here`)
  }

  /** Delivers held entries while the next one is there. */
  private advance(): void {
    // A delivery or settle that commits again lands in `held`: this loop takes it.
    if (this.draining || this.last === undefined) return
    this.draining = true
    const before = this.last
    let last = before
    try {
      for (let next = this.held.get(last + 1); next; next = this.held.get(last + 1)) {
        this.held.delete(last + 1)
        last += 1
        this.last = last
        this.hand(next)
      }
    } finally {
      this.draining = false
    }
    if (last !== before) this.resolveWaiters()
    this.watchGap()
  }

  private resolveWaiters(): void {
    const last = this.last as number
    if (!this.waiters.some((waiter) => waiter.offset <= last)) return
    const waiting = this.waiters
    this.waiters = waiting.filter((waiter) => waiter.offset > last)
    for (const waiter of waiting) if (waiter.offset <= last) waiter.resolve()
  }

  private hand(pending: Pending): void {
    let recipients = 0
    try {
      recipients = this.deps.deliver(pending.item)
    } catch (error) {
      this.deps.logger.error({ err: error, collection: this.collection }, 'delivery failed')
    }
    this.deps.stats.delivered++
    this.settle(pending.item, pending.settle, recipients)
  }

  private settle(item: Committed, settle: Settle | undefined, recipients: number): void {
    if (!settle) return
    try {
      settle(item, recipients)
    } catch (error) {
      this.deps.logger.error(
        { err: error, collection: this.collection },
        'settling a commit failed',
      )
    }
  }

  /**
   * Keeps the gap timer set for when the oldest gap turns `gapWait` old.
   * A gap is as old as the first entry known after it: that one arrived (or
   * the poll saw it) while the gap's own entries, committed earlier, were
   * already missing.
   */
  private watchGap(): void {
    if (this.closed || this.paused || this.filling || this.last === undefined) return
    if (this.held.size === 0 && this.known <= this.last) {
      clearTimeout(this.gapTimer)
      this.gapTimer = undefined
      return
    }
    if (this.gapTimer !== undefined) return
    let oldest = this.known > this.last ? this.knownAt : Number.POSITIVE_INFINITY
    for (const pending of this.held.values()) if (pending.at < oldest) oldest = pending.at
    const wait = Math.max(0, oldest + this.deps.gapWait - performance.now())
    this.gapTimer = setTimeout(() => {
      this.gapTimer = undefined
      this.onGapTimer()
    }, wait)
    this.gapTimer.unref()
  }

  private onGapTimer(): void {
    if (this.closed || this.paused || this.filling || this.last === undefined) return
    // Every offset below an entry that has waited `gapWait` is overdue.
    const since = performance.now() - this.deps.gapWait
    let target = this.known > this.last && this.knownAt <= since ? this.known : this.last
    for (const [offset, pending] of this.held)
      if (pending.at <= since && offset > target) target = offset
    if (target > this.last) {
      this.deps.stats.gapFills++
      void this.fill(target)
    } else this.watchGap()
  }

  /**
   * Reads what is missing up to `target` (the gap that outlived `gapWait`)
   * from the store, page by page. Later gaps get their own `gapWait`: their
   * messages may still be on the way, with their exclusion lists.
   */
  private async fill(target: number): Promise<void> {
    this.filling = true
    try {
      while (!this.closed && (this.last as number) < target) {
        const page = await this.deps.read(this.last as number, target, this.deps.pageSize)
        this.deps.readOutcome(undefined)
        if (this.closed) break
        this.apply(page, target)
      }
    } catch (error) {
      this.deps.readOutcome(error)
      this.paused = true
    } finally {
      this.filling = false
    }
    this.watchGap()
  }

  private apply(page: readonly StreamEntry[], target: number): void {
    const last = this.last as number
    // Where the store has nothing, held entries are still good: skip to the first.
    let firstHeld = target + 1
    for (const offset of this.held.keys()) if (offset < firstHeld) firstHeld = offset
    const resume = Math.min(page[0]?.offset ?? target + 1, firstHeld)
    if (resume > last + 1) {
      // Retention removed entries this process never delivered; waiting would stall the stream.
      this.deps.logger.error(
        { collection: this.collection, from: last + 1, to: resume - 1 },
        'entries were pruned from the store before they were delivered here',
      )
      this.deps.stats.skipped += resume - 1 - last
      this.last = resume - 1
      this.resolveWaiters()
    }
    const now = performance.now()
    for (const entry of page) {
      const offset = entry.offset
      // Delivered from the bus while the read was out, or held with its exclusion list.
      if (offset <= (this.last as number) || this.held.has(offset)) continue
      this.held.set(offset, { item: { entry, exclude: undefined }, settle: undefined, at: now })
      this.deps.stats.filled++
    }
    this.advance()
  }
}
