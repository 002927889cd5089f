import type { Statement } from 'bun:sqlite'
import { and, asc, eq, inArray } from 'drizzle-orm'
import type { Store } from '../db/database.ts'
import { documents } from '../db/schema.ts'
import type { BatchParticipant } from '../streams/commit-queue.ts'

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

interface DocumentRow {
  v: number
  type: string | null
  data: string | null
  deleted: number
  lastOffset: number | null
}

const key = (collection: string, id: string) => `${collection}\u0000${id}`

/**
 * Snapshots and versions, cached in memory and written once per document per
 * batch, just before the batch commits. The cache is bounded by count and by
 * the documents' JSON bytes (a count alone would let 10,000 documents at
 * MAX_DOCUMENT_SIZE hold gigabytes): past either, the documents loaded first
 * are dropped (they reload from the database when next used).
 */
export class DocumentStore implements BatchParticipant {
  private readonly cache = new Map<string, DocumentState>()
  private readonly dirty = new Map<string, DocumentState>()
  /** Sum of the cached documents' `size`. */
  private cachedBytes = 0
  private readonly selectOne: Statement<DocumentRow>
  private readonly upsert: Statement

  constructor(
    private readonly store: Store,
    private readonly maxCached = 10_000,
    private readonly maxCachedBytes = 128 * 1024 * 1024,
  ) {
    this.selectOne = store.sqlite.prepare(
      'SELECT v, type, data, deleted, last_offset AS lastOffset FROM documents WHERE collection = ? AND id = ?',
    )
    this.upsert = store.sqlite.prepare(
      `INSERT INTO documents (collection, id, v, type, data, deleted, updated_at, last_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (collection, id) DO UPDATE SET v = excluded.v, type = excluded.type, data = excluded.data,
       deleted = excluded.deleted, updated_at = excluded.updated_at, last_offset = excluded.last_offset`,
    )
  }

  /** The document's state, or undefined when it has never had a version. */
  get(collection: string, id: string): DocumentState | undefined {
    const k = key(collection, id)
    const cached = this.cache.get(k)
    if (cached) return cached
    const row = this.selectOne.get(collection, id)
    if (!row) return undefined
    const state: DocumentState = {
      collection,
      id,
      v: row.v,
      type: row.type === 'json0' ? 'json0' : null,
      data: row.data === null ? null : JSON.parse(row.data),
      deleted: row.deleted !== 0,
      lastOffset: row.lastOffset,
      size: row.data === null ? 0 : Buffer.byteLength(row.data),
    }
    this.cache.set(k, state)
    this.cachedBytes += state.size
    return state
  }

  /** Records a new state inside the running batch. */
  put(state: DocumentState): void {
    const k = key(state.collection, state.id)
    this.cachedBytes += state.size - (this.cache.get(k)?.size ?? 0)
    this.cache.set(k, state)
    this.dirty.set(k, state)
  }

  /**
   * Writes each document changed in the batch once, whole: this is the one
   * per-batch cost that follows the document's size (MAX_DOCUMENT_SIZE bounds
   * it). The text written makes the tracked size exact again.
   */
  beforeCommit(): void {
    const now = Date.now()
    for (const state of this.dirty.values()) {
      const text = state.type === null ? null : JSON.stringify(state.data)
      const size = text === null ? 0 : Buffer.byteLength(text)
      this.cachedBytes += size - state.size
      state.size = size
      this.upsert.run(
        state.collection,
        state.id,
        state.v,
        state.type,
        text,
        state.deleted ? 1 : 0,
        now,
        state.lastOffset,
      )
    }
    this.dirty.clear()
    for (const [k, state] of this.cache) {
      if (this.cache.size <= this.maxCached && this.cachedBytes <= this.maxCachedBytes) break
      this.cache.delete(k)
      this.cachedBytes -= state.size
    }
  }

  /** Ops change cached snapshots in place: dropping the cache is what undoes a failed batch. */
  rollback(): void {
    this.dirty.clear()
    this.cache.clear()
    this.cachedBytes = 0
  }

  /** Committed documents of a collection (deleted ones left out), by id. */
  list(collection: string, ids: readonly string[] | undefined, limit: number): DocumentState[] {
    const rows = this.store.db
      .select()
      .from(documents)
      .where(
        and(
          eq(documents.collection, collection),
          eq(documents.deleted, false),
          ids === undefined ? undefined : inArray(documents.id, [...ids]),
        ),
      )
      .orderBy(asc(documents.id))
      .limit(limit)
      .all()
    return rows.map((row) => ({
      collection,
      id: row.id,
      v: row.v,
      type: row.type === 'json0' ? 'json0' : null,
      data: row.data === null ? null : JSON.parse(row.data),
      deleted: row.deleted,
      lastOffset: row.lastOffset,
      size: row.data === null ? 0 : Buffer.byteLength(row.data),
    }))
  }
}
