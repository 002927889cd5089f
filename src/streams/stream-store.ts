import type { CommitPlan, Maybe, Store, WriteTransaction } from '../store/store.ts'
import type { StreamEntry } from './entry.ts'

export type NewEntry = Omit<StreamEntry, 'offset'>

const key = (collection: string, offset: number) => `${collection}\u0000${offset}`

/**
 * The op log as the commit queue sees it: the only writer of stream
 * entries. Heads are cached; a batch's entries are held here (`order`)
 * and written once, with the batch, by `plan()`. A job reading a document's
 * chain sees the batch's own entries first, then those the queue read ahead
 * for it (`prefetched`: an asynchronous store cannot be read in the middle
 * of a synchronous job), then, with a synchronous store, the store itself.
 */
export class StreamStore {
  /** Entries held: counted once at start, then kept up to date (for metrics). */
  private rows = 0
  private readonly heads = new Map<string, number>()
  /** Heads as of the last commit (`heads` runs ahead while a batch is being written). */
  private readonly committedHeads = new Map<string, number>()
  private readonly dirtyHeads = new Set<string>()
  /** The batch's entries, in the order appended. */
  private readonly order: StreamEntry[] = []
  /**
   * The batch's entries by key, made from `order` when a job first reads a
   * chain (an op behind its document): a key and a map entry per append cost
   * every submit (bench:submit), and most batches never read one.
   */
  private pending: Map<string, StreamEntry> | undefined
  private readonly prefetched = new Map<string, StreamEntry>()
  /** The running write transaction while the store answers synchronously (SQLite). */
  private syncTx: WriteTransaction | undefined

  constructor(private readonly store: Store) {
    const count = store.countEntries()
    if (typeof count === 'number') this.rows = count
    else count.then((n) => (this.rows += n)).catch(() => {})
  }

  get epoch(): string {
    return this.store.epoch
  }

  get heldRows(): number {
    return this.rows
  }

  /**
   * Last offset committed in the collection as this process knows it (0
   * when none): the commit path's head. Synchronous stores load it here;
   * otherwise the queue set it under the transaction's lock.
   */
  head(collection: string): number {
    let head = this.heads.get(collection)
    if (head === undefined) {
      const loaded = this.store.head(collection)
      if (typeof loaded !== 'number')
        throw new Error(`head of ${collection} read before it was loaded`)
      head = loaded
      this.heads.set(collection, head)
    }
    return head
  }

  /**
   * The head as of the last commit this process knows of, or undefined
   * when it has not loaded it: what a single process has delivered.
   */
  committedHead(collection: string): number | undefined {
    return this.committedHeads.get(collection)
  }

  /** The commit path's cached head, or undefined when this process has not loaded it. */
  cachedHead(collection: string): number | undefined {
    return this.heads.get(collection)
  }

  /** Loads the collection's committed head when it is not known. */
  loadHead(collection: string): Maybe<number> {
    const cached = this.committedHeads.get(collection)
    if (cached !== undefined) return cached
    const loaded = this.store.head(collection)
    if (typeof loaded === 'number') {
      this.committedHeads.set(collection, loaded)
      return loaded
    }
    return loaded.then((head) => {
      // A commit may have moved it meanwhile: the cache, when set, is newer.
      const now = this.committedHeads.get(collection)
      if (now !== undefined) return now
      this.committedHeads.set(collection, head)
      return head
    })
  }

  /** The committed head as read under the transaction's lock (asynchronous stores). */
  setHead(collection: string, head: number): void {
    this.heads.set(collection, head)
    const known = this.committedHeads.get(collection)
    if (known === undefined || known < head) this.committedHeads.set(collection, head)
  }

  /** A batch begins: with a synchronous store, chain reads go to its transaction. */
  begin(tx: WriteTransaction | undefined): void {
    this.syncTx = tx
  }

  /** Entries read ahead for the batch's jobs. */
  prefetch(entries: readonly StreamEntry[]): void {
    for (const entry of entries) this.prefetched.set(key(entry.collection, entry.offset), entry)
  }

  /**
   * Appends with the collection's next offset, held until the batch is
   * written. Takes `input` over (it becomes the entry) rather than copying
   * it: one allocation fewer per publish.
   */
  append(input: NewEntry): StreamEntry {
    const offset = this.head(input.collection) + 1
    const entry = input as StreamEntry
    entry.offset = offset
    this.order.push(entry)
    this.pending?.set(key(entry.collection, offset), entry)
    this.heads.set(entry.collection, offset)
    this.dirtyHeads.add(entry.collection)
    return entry
  }

  /** The batch's entries and moved heads, to be written in its transaction. */
  plan(): Omit<CommitPlan, 'documents'> {
    return {
      entries: this.order,
      heads: [...this.dirtyHeads].map((collection) => ({
        collection,
        head: this.heads.get(collection) ?? 0,
      })),
    }
  }

  /** The batch committed. */
  committed(): void {
    this.rows += this.order.length
    // forEach, not for-of: iterating this Set (cleared after every batch)
    // with for-of showed as ~6% of bench:record's CPU, forEach as nothing.
    this.dirtyHeads.forEach((collection) => {
      this.committedHeads.set(collection, this.heads.get(collection) ?? 0)
    })
    this.end()
  }

  /** The batch failed: forget what it appended and every cached head (reloaded when next used). */
  rollback(): void {
    this.heads.clear()
    this.end()
  }

  private end(): void {
    this.pending = undefined
    this.order.length = 0
    this.prefetched.clear()
    this.dirtyHeads.clear()
    this.syncTx = undefined
  }

  /**
   * A document's changes, newest back to the one applied at `fromV`, walked
   * along the chain from `lastOffset`; oldest first. Stops early where the
   * chain is cut by retention (or, with an asynchronous store, where nothing
   * was read ahead): callers check that it reaches `fromV`.
   */
  changesBack(collection: string, lastOffset: number | null, fromV: number): StreamEntry[] {
    if (this.pending === undefined) {
      this.pending = new Map()
      for (const entry of this.order) this.pending.set(key(entry.collection, entry.offset), entry)
    }
    const pending = this.pending
    const changes: StreamEntry[] = []
    let offset = lastOffset
    while (offset !== null) {
      const k = key(collection, offset)
      const entry = pending.get(k) ?? this.prefetched.get(k)
      if (entry === undefined) {
        const rest = this.syncTx?.changesBack(collection, offset, fromV)
        if (Array.isArray(rest)) changes.reverse().unshift(...rest)
        else changes.reverse()
        return changes
      }
      if (entry.v === undefined || entry.v < fromV) break
      changes.push(entry)
      offset = entry.prevOffset ?? null
    }
    return changes.reverse()
  }

  /** Retention removed `count` entries. */
  pruned(count: number): void {
    this.rows -= count
  }
}
