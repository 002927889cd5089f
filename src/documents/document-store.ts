import type { DocumentRecord, Maybe, Store } from '../store/store.ts'
import { then } from '../store/store.ts'

/** A document's current state. `type` is 'json0' while we hold its snapshot. */
export interface DocumentState {
  collection: string
  id: string
  v: number
  type: 'json0' | null
  data: unknown
  deleted: boolean
  /** Offset of the latest change (the head of the document's chain in its stream). */
  lastOffset: number | null
  /**
   * UTF-8 bytes of `data`'s JSON text (0 without a snapshot): exact when
   * loaded or committed, a safe upper bound after ops within a batch.
   */
  size: number
}

const key = (collection: string, id: string) => `${collection}\u0000${id}`

/** A stored record as a cached state (the snapshot parsed). */
export function toState(record: DocumentRecord): DocumentState {
  return {
    collection: record.collection,
    id: record.id,
    v: record.v,
    type: record.type,
    data: record.data === null ? null : JSON.parse(record.data),
    deleted: record.deleted,
    lastOffset: record.lastOffset,
    size: record.data === null ? 0 : Buffer.byteLength(record.data),
  }
}

/**
 * Snapshots and versions as the commit queue sees them: cached in memory and
 * written once per document per batch, with the batch. The cache is bounded
 * by count and by the documents' JSON bytes (a count alone would let 10,000
 * documents at MAX_DOCUMENT_SIZE hold gigabytes): past either, the documents
 * loaded first are dropped (they reload from the store when next used).
 * With an asynchronous store the queue loads what a batch needs before its
 * jobs run (`load`); a synchronous one is read on a miss.
 */
export class DocumentStore {
  private readonly cache = new Map<string, DocumentState>()
  private readonly dirty = new Map<string, DocumentState>()
  /** Documents the running batch looked for in an asynchronous store and did not find. */
  private readonly absent = new Set<string>()
  /** Sum of the cached documents' `size`. */
  private cachedBytes = 0
  /**
   * Other processes write the store too (cluster mode): outside a batch the
   * cache may be stale (a batch checks it under the heads' lock), so reads
   * go to the store.
   */
  shared = false

  constructor(
    private readonly store: Store,
    private readonly maxCached = 10_000,
    private readonly maxCachedBytes = 128 * 1024 * 1024,
  ) {}

  /** The document's state, or undefined when it has never had a version. */
  get(collection: string, id: string): DocumentState | undefined {
    const k = key(collection, id)
    const cached = this.cache.get(k)
    if (cached) return cached
    if (this.absent.has(k)) return undefined
    const record = this.store.document(collection, id)
    if (record instanceof Promise)
      throw new Error(`document ${collection}.${id} read before it was loaded`)
    return record === undefined ? undefined : this.remember(toState(record))
  }

  /** Whether the document is cached (an asynchronous store's batch loads the rest first). */
  has(collection: string, id: string): boolean {
    return this.cache.has(key(collection, id))
  }

  /** Caches records read for a batch; the keys asked for and not found are new documents. */
  load(
    wanted: ReadonlyArray<{ collection: string; id: string }>,
    records: readonly DocumentRecord[],
  ): void {
    for (const record of records)
      if (!this.cache.has(key(record.collection, record.id))) this.remember(toState(record))
    for (const { collection, id } of wanted) {
      const k = key(collection, id)
      if (!this.cache.has(k)) this.absent.add(k)
    }
  }

  /** Reads a document outside a batch: from the cache, else from the store (not cached). */
  read(collection: string, id: string): Maybe<DocumentState | undefined> {
    const k = key(collection, id)
    // A document changed by a batch still being written (asynchronous stores) is read as committed.
    const cached = this.shared || this.dirty.has(k) ? undefined : this.cache.get(k)
    if (cached) return cached
    return then(this.store.document(collection, id), (record) =>
      record === undefined ? undefined : toState(record),
    )
  }

  /** Drops cached documents another process changed. */
  evict(collection: string, ids: readonly string[]): void {
    for (const id of ids) this.forget(key(collection, id))
  }

  /** Drops every cached document of a collection. */
  evictCollection(collection: string): void {
    const prefix = key(collection, '')
    for (const k of [...this.cache.keys()]) if (k.startsWith(prefix)) this.forget(k)
  }

  private remember(state: DocumentState): DocumentState {
    this.cache.set(key(state.collection, state.id), state)
    this.cachedBytes += state.size
    return state
  }

  private forget(k: string): void {
    const state = this.cache.get(k)
    if (!state) return
    this.cache.delete(k)
    this.cachedBytes -= state.size
  }

  /** Records a new state inside the running batch. */
  put(state: DocumentState): void {
    const k = key(state.collection, state.id)
    this.cachedBytes += state.size - (this.cache.get(k)?.size ?? 0)
    this.cache.set(k, state)
    this.dirty.set(k, state)
  }

  /**
   * Each document changed in the batch, once, whole: this is the one
   * per-batch cost that follows the document's size (MAX_DOCUMENT_SIZE bounds
   * it). The text written makes the tracked size exact again.
   */
  plan(): DocumentRecord[] {
    const records: DocumentRecord[] = []
    for (const state of this.dirty.values()) {
      const text = state.type === null ? null : JSON.stringify(state.data)
      const size = text === null ? 0 : Buffer.byteLength(text)
      this.cachedBytes += size - state.size
      state.size = size
      records.push({
        collection: state.collection,
        id: state.id,
        v: state.v,
        type: state.type,
        data: text,
        deleted: state.deleted,
        lastOffset: state.lastOffset,
      })
    }
    return records
  }

  /** The batch committed: trim the cache to its bounds. */
  committed(): void {
    this.dirty.clear()
    this.absent.clear()
    for (const [k, state] of this.cache) {
      if (this.cache.size <= this.maxCached && this.cachedBytes <= this.maxCachedBytes) break
      this.cache.delete(k)
      this.cachedBytes -= state.size
    }
  }

  /** Ops change cached snapshots in place: dropping the cache is what undoes a failed batch. */
  rollback(): void {
    this.dirty.clear()
    this.absent.clear()
    this.cache.clear()
    this.cachedBytes = 0
  }

  /** Committed documents of a collection (deleted ones left out), by id. */
  list(
    collection: string,
    ids: readonly string[] | undefined,
    limit: number,
  ): Maybe<DocumentState[]> {
    return then(this.store.listDocuments(collection, ids, limit), (records) => records.map(toState))
  }
}
