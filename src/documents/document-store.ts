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
 * batch, just before the batch commits. The cache is bounded: past
 * `maxCached`, the documents loaded first are dropped (they reload from the
 * database when next used).
 */
export class DocumentStore implements BatchParticipant {
  private readonly cache = new Map<string, DocumentState>()
  private readonly dirty = new Map<string, DocumentState>()
  private readonly selectOne: Statement<DocumentRow>
  private readonly upsert: Statement

  constructor(
    private readonly store: Store,
    private readonly maxCached = 10_000,
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
    }
    this.cache.set(k, state)
    return state
  }

  /** Records a new state inside the running batch. */
  put(state: DocumentState): void {
    const k = key(state.collection, state.id)
    this.cache.set(k, state)
    this.dirty.set(k, state)
  }

  beforeCommit(): void {
    const now = Date.now()
    for (const state of this.dirty.values())
      this.upsert.run(
        state.collection,
        state.id,
        state.v,
        state.type,
        state.type === null ? null : JSON.stringify(state.data),
        state.deleted ? 1 : 0,
        now,
        state.lastOffset,
      )
    this.dirty.clear()
    for (const k of this.cache.keys()) {
      if (this.cache.size <= this.maxCached) break
      this.cache.delete(k)
    }
  }

  rollback(): void {
    this.dirty.clear()
    this.cache.clear()
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
    }))
  }
}
