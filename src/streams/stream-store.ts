import type { Statement } from 'bun:sqlite'
import { and, asc, eq, gt } from 'drizzle-orm'
import type { Store } from '../db/database.ts'
import { meta, streamEntries, streams } from '../db/schema.ts'
import type { EntryKind, EntrySource, StreamEntry } from './entry.ts'

interface EntryRow {
  collection: string
  offset: number
  document: string | null
  v: number | null
  kind: EntryKind
  payload: string
  source: EntrySource
  src: string | null
  seq: number | null
  createdAt: number
  prevOffset: number | null
}

const ENTRY_COLUMNS =
  'collection, "offset", document, v, kind, payload, source, src, seq, created_at AS createdAt, prev_offset AS prevOffset'

function toEntry(row: EntryRow): StreamEntry {
  const entry: StreamEntry = {
    collection: row.collection,
    offset: row.offset,
    kind: row.kind,
    payload: JSON.parse(row.payload),
    source: row.source,
    createdAt: row.createdAt,
  }
  if (row.document !== null) entry.document = row.document
  if (row.v !== null) entry.v = row.v
  if (row.src !== null) entry.src = row.src
  if (row.seq !== null) entry.seq = row.seq
  if (row.prevOffset !== null) entry.prevOffset = row.prevOffset
  return entry
}

export type NewEntry = Omit<StreamEntry, 'offset'>

/** A change's place in its document's chain. */
export interface ChainLink {
  v: number | null
  prevOffset: number | null
}

/**
 * The op log: the only writer of stream entries. Hot statements are prepared
 * once; heads are cached and written once per batch (see CommitQueue).
 * Writes must happen inside the queue's transaction.
 */
export class StreamStore {
  readonly epoch: string
  /** Entries held: counted once at start, then kept up to date (for metrics). */
  private rows: number
  private readonly heads = new Map<string, number>()
  private readonly dirtyHeads = new Set<string>()
  private readonly insertEntry: Statement
  private readonly upsertHead: Statement
  private readonly selectHead: Statement<{ head: number }>
  private readonly selectFirst: Statement<{ first: number | null }>
  private readonly selectSince: Statement<EntryRow>
  private readonly selectAt: Statement<EntryRow>
  private readonly selectLink: Statement<ChainLink>
  private readonly selectDocumentSince: Statement<EntryRow>
  private readonly selectOldest: Statement<{ offset: number; createdAt: number }>
  private readonly deleteUpTo: Statement

  constructor(private readonly store: Store) {
    const { sqlite } = store
    this.epoch = this.loadEpoch()
    this.rows =
      sqlite.query<{ n: number }, []>('SELECT COUNT(*) AS n FROM stream_entries').get()?.n ?? 0
    this.insertEntry = sqlite.prepare(
      'INSERT INTO stream_entries (collection, "offset", document, v, kind, payload, source, src, seq, created_at, prev_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    )
    this.upsertHead = sqlite.prepare(
      'INSERT INTO streams (collection, head) VALUES (?, ?) ON CONFLICT (collection) DO UPDATE SET head = excluded.head',
    )
    this.selectHead = sqlite.prepare('SELECT head FROM streams WHERE collection = ?')
    this.selectFirst = sqlite.prepare(
      'SELECT MIN("offset") AS first FROM stream_entries WHERE collection = ?',
    )
    this.selectSince = sqlite.prepare(
      `SELECT ${ENTRY_COLUMNS} FROM stream_entries WHERE collection = ? AND "offset" > ? AND "offset" <= ? ORDER BY "offset" LIMIT ?`,
    )
    this.selectAt = sqlite.prepare(
      `SELECT ${ENTRY_COLUMNS} FROM stream_entries WHERE collection = ? AND "offset" = ?`,
    )
    this.selectLink = sqlite.prepare(
      'SELECT v, prev_offset AS prevOffset FROM stream_entries WHERE collection = ? AND "offset" = ?',
    )
    this.selectDocumentSince = sqlite.prepare(
      `SELECT ${ENTRY_COLUMNS} FROM stream_entries WHERE collection = ? AND "offset" > ? AND "offset" <= ? AND document = ? ORDER BY "offset" LIMIT ?`,
    )
    this.selectOldest = sqlite.prepare(
      'SELECT "offset", created_at AS createdAt FROM stream_entries WHERE collection = ? ORDER BY "offset" LIMIT ?',
    )
    this.deleteUpTo = sqlite.prepare(
      'DELETE FROM stream_entries WHERE collection = ? AND "offset" <= ?',
    )
  }

  private loadEpoch(): string {
    const { db } = this.store
    const row = db.select().from(meta).where(eq(meta.key, 'epoch')).get()
    if (row) return row.value
    const epoch = crypto.randomUUID().slice(0, 8)
    db.insert(meta).values({ key: 'epoch', value: epoch }).run()
    return epoch
  }

  /** Last offset handed out in the collection (0 when none). */
  head(collection: string): number {
    let head = this.heads.get(collection)
    if (head === undefined) {
      head = this.selectHead.get(collection)?.head ?? 0
      this.heads.set(collection, head)
    }
    return head
  }

  get heldRows(): number {
    return this.rows
  }

  /** A batch of `count` appends committed. */
  committed(count: number): void {
    this.rows += count
  }

  /** Oldest offset still held, or undefined when nothing is. */
  firstHeld(collection: string): number | undefined {
    return this.selectFirst.get(collection)?.first ?? undefined
  }

  /** Inserts the entry with the collection's next offset. Inside a transaction only. */
  append(input: NewEntry): StreamEntry {
    const offset = this.head(input.collection) + 1
    const entry: StreamEntry = { ...input, offset }
    this.insertEntry.run(
      entry.collection,
      offset,
      entry.document ?? null,
      entry.v ?? null,
      entry.kind,
      JSON.stringify(entry.payload),
      entry.source,
      entry.src ?? null,
      entry.seq ?? null,
      entry.createdAt,
      entry.prevOffset ?? null,
    )
    this.heads.set(entry.collection, offset)
    this.dirtyHeads.add(entry.collection)
    return entry
  }

  /** Persists the heads moved by this batch; called by the queue before commit. */
  flushHeads(): void {
    for (const collection of this.dirtyHeads)
      this.upsertHead.run(collection, this.heads.get(collection) ?? 0)
    this.dirtyHeads.clear()
  }

  /** Forgets cached heads after a rolled-back batch. */
  resetCache(): void {
    this.heads.clear()
    this.dirtyHeads.clear()
  }

  /** Entries with after < offset ≤ until, oldest first. */
  readRange(collection: string, after: number, until: number, limit: number): StreamEntry[] {
    return this.selectSince.all(collection, after, until, limit).map(toEntry)
  }

  /**
   * A document's changes, newest back to the one applied at `fromV`, walked
   * along the chain from `lastOffset`; oldest first. Stops early where the
   * chain is cut by retention: callers check that it reaches `fromV`.
   */
  changesBack(collection: string, lastOffset: number | null, fromV: number): StreamEntry[] {
    const changes: StreamEntry[] = []
    let offset = lastOffset
    while (offset !== null) {
      const row = this.selectAt.get(collection, offset)
      if (!row || row.v === null || row.v < fromV) break
      changes.push(toEntry(row))
      offset = row.prevOffset
    }
    return changes.reverse()
  }

  /** One link of a document's chain (no payload): its version and the previous change's offset. */
  link(collection: string, offset: number): ChainLink | undefined {
    return this.selectLink.get(collection, offset) ?? undefined
  }

  /** One document's entries (changes and messages) with after < offset ≤ until, oldest first. */
  readDocumentRange(
    collection: string,
    document: string,
    after: number,
    until: number,
    limit: number,
  ): StreamEntry[] {
    return this.selectDocumentSince.all(collection, after, until, document, limit).map(toEntry)
  }

  /**
   * Retention by age: drops up to `batch` of the collection's oldest entries,
   * stopping at the first one not older than `before` (ms). Never past a
   * younger entry, so what is held stays one run of offsets up to the head
   * (a wall clock stepped back can write an old timestamp after a young one;
   * deleting by timestamp alone would cut a silent hole that resuming
   * clients, who check only the oldest held offset, would not see).
   */
  pruneOlderPrefix(collection: string, before: number, batch: number): number {
    let upTo: number | undefined
    // A collection whose oldest entry is young costs one row read.
    const oldest = this.selectOldest.get(collection, 1)
    if (oldest === null || oldest.createdAt >= before) return 0
    for (const row of this.selectOldest.all(collection, batch)) {
      if (row.createdAt >= before) break
      upTo = row.offset
    }
    if (upTo === undefined) return 0
    const removed = this.deleteUpTo.run(collection, upTo).changes
    this.rows -= removed
    return removed
  }

  /** Retention: drops up to `batch` of the collection's entries with offset ≤ `upTo`. */
  pruneUpTo(collection: string, upTo: number, batch: number): number {
    const first = this.firstHeld(collection)
    if (first === undefined || first > upTo) return 0
    const removed = this.deleteUpTo.run(collection, Math.min(upTo, first + batch - 1)).changes
    this.rows -= removed
    return removed
  }

  /** Every collection with its head, for retention passes. */
  collections(): Array<{ collection: string; head: number }> {
    return this.store.db.select().from(streams).all()
  }

  /** History API: a collection's (or one document's) entries after `since`. */
  history(
    collection: string,
    document: string | undefined,
    since: number,
    limit: number,
  ): StreamEntry[] {
    const { db } = this.store
    const rows = db
      .select()
      .from(streamEntries)
      .where(
        and(
          eq(streamEntries.collection, collection),
          document === undefined ? undefined : eq(streamEntries.document, document),
          gt(streamEntries.offset, since),
        ),
      )
      .orderBy(asc(streamEntries.offset))
      .limit(limit)
      .all()
    return rows.map(toEntry)
  }
}
