import type { Statement } from 'bun:sqlite'
import { and, asc, desc, eq, gt, inArray } from 'drizzle-orm'
import { openStore, type Store as SqliteHandle } from '../db/database.ts'
import { documents, meta, sessions, streamEntries, streams } from '../db/schema.ts'
import type { Logger } from '../observability/logger.ts'
import type { EntryKind, EntrySource, StreamEntry } from '../streams/entry.ts'
import type {
  ChainLink,
  CommitPlan,
  DocumentRecord,
  IntakeBackend,
  IntakeMark,
  Readiness,
  SessionBackend,
  SessionRecord,
  SessionWrite,
  Store,
  WriteTransaction,
} from './store.ts'

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

interface DocumentRow {
  collection: string
  id: string
  v: number
  type: string | null
  data: string | null
  deleted: number | boolean
  lastOffset: number | null
}

const ENTRY_COLUMNS =
  'collection, "offset", document, v, kind, payload, source, src, seq, created_at AS createdAt, prev_offset AS prevOffset'

export function toEntry(row: EntryRow): StreamEntry {
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

function toDocument(row: DocumentRow): DocumentRecord {
  return {
    collection: row.collection,
    id: row.id,
    v: row.v,
    type: row.type === 'json0' ? 'json0' : null,
    data: row.data,
    deleted: row.deleted === true || row.deleted === 1,
    lastOffset: row.lastOffset,
  }
}

/** The database file was deleted or replaced: no write may be acknowledged into it. */
export class FileLostError extends Error {
  override name = 'FileLostError'
}

/**
 * The embedded store: one SQLite file held exclusively by this process.
 * Every method answers synchronously, so the commit path (commit, fan-out,
 * acks) runs in one event-loop turn. Hot statements are prepared once.
 */
export class SqliteStore implements Store {
  readonly kind = 'sqlite'
  readonly epoch: string
  readonly location: string
  readonly sessions: SessionBackend
  readonly intake: IntakeBackend
  private readonly insertEntry: Statement
  private readonly upsertHead: Statement
  private readonly upsertDocument: Statement
  private readonly selectHead: Statement<{ head: number }>
  private readonly selectFirst: Statement<{ first: number | null }>
  private readonly selectSince: Statement<EntryRow>
  private readonly selectAt: Statement<EntryRow>
  private readonly selectLink: Statement<{ v: number | null; prevOffset: number | null }>
  private readonly selectDocumentSince: Statement<EntryRow>
  private readonly selectDocument: Statement<DocumentRow>
  private readonly selectChanged: Statement<{ document: string }>
  private readonly selectOldest: Statement<{ offset: number; createdAt: number }>
  private readonly deleteUpTo: Statement
  private readonly insertMark: Statement
  /** Whether the running transaction wrote entries (a batch of refusals says nothing about the disk). */
  private wrote = false
  /** bun:sqlite's transaction wrapper, made once: making it per commit was ~4% of bench:record's CPU. */
  private readonly inTransaction: <T>(work: (tx: WriteTransaction) => T) => T

  constructor(
    readonly handle: SqliteHandle,
    path: string,
  ) {
    const { sqlite } = handle
    this.inTransaction = sqlite.transaction(
      <T>(work: (tx: WriteTransaction) => T): T => work(this.tx),
    )
    this.location = path
    this.epoch = this.loadEpoch()
    this.insertEntry = sqlite.prepare(
      'INSERT INTO stream_entries (collection, "offset", document, v, kind, payload, source, src, seq, created_at, prev_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    )
    this.upsertHead = sqlite.prepare(
      'INSERT INTO streams (collection, head) VALUES (?, ?) ON CONFLICT (collection) DO UPDATE SET head = excluded.head',
    )
    this.upsertDocument = sqlite.prepare(
      `INSERT INTO documents (collection, id, v, type, data, deleted, updated_at, last_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (collection, id) DO UPDATE SET v = excluded.v, type = excluded.type, data = excluded.data,
       deleted = excluded.deleted, updated_at = excluded.updated_at, last_offset = excluded.last_offset`,
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
    this.selectDocument = sqlite.prepare(
      'SELECT collection, id, v, type, data, deleted, last_offset AS lastOffset FROM documents WHERE collection = ? AND id = ?',
    )
    this.selectChanged = sqlite.prepare(
      'SELECT DISTINCT document FROM stream_entries WHERE collection = ? AND "offset" > ? AND "offset" <= ? AND document IS NOT NULL',
    )
    this.selectOldest = sqlite.prepare(
      'SELECT "offset", created_at AS createdAt FROM stream_entries WHERE collection = ? ORDER BY "offset" LIMIT ?',
    )
    this.deleteUpTo = sqlite.prepare(
      'DELETE FROM stream_entries WHERE collection = ? AND "offset" <= ?',
    )
    // A plain INSERT: a second mark for an entry fails its batch, so no entry takes effect twice.
    this.insertMark = sqlite.prepare(
      'INSERT INTO intake_applied (stream, entry_id, applied_at) VALUES (?, ?, ?)',
    )
    this.sessions = new SqliteSessions(handle)
    this.intake = new SqliteIntake(handle, this.insertMark)
  }

  get health() {
    return this.handle.health
  }

  private loadEpoch(): string {
    const { db } = this.handle
    const row = db.select().from(meta).where(eq(meta.key, 'epoch')).get()
    if (row) return row.value
    const epoch = crypto.randomUUID().slice(0, 8)
    db.insert(meta).values({ key: 'epoch', value: epoch }).run()
    return epoch
  }

  head(collection: string): number {
    return this.selectHead.get(collection)?.head ?? 0
  }

  firstHeld(collection: string): number | undefined {
    return this.selectFirst.get(collection)?.first ?? undefined
  }

  readRange(collection: string, after: number, until: number, limit: number): StreamEntry[] {
    return this.selectSince.all(collection, after, until, limit).map(toEntry)
  }

  readDocumentRange(
    collection: string,
    document: string,
    after: number,
    until: number,
    limit: number,
  ): StreamEntry[] {
    return this.selectDocumentSince.all(collection, after, until, document, limit).map(toEntry)
  }

  history(
    collection: string,
    document: string | undefined,
    since: number,
    limit: number,
  ): StreamEntry[] {
    const rows = this.handle.db
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

  chainLinks(collection: string, lastOffset: number | null, fromV: number): ChainLink[] {
    const links: ChainLink[] = []
    for (let offset = lastOffset; offset !== null; ) {
      const link = this.selectLink.get(collection, offset)
      if (!link) break
      links.push({ offset, v: link.v, prevOffset: link.prevOffset })
      if (link.v === null || link.v < fromV) break
      offset = link.prevOffset
    }
    return links
  }

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

  document(collection: string, id: string): DocumentRecord | undefined {
    const row = this.selectDocument.get(collection, id)
    return row ? toDocument(row) : undefined
  }

  listDocuments(
    collection: string,
    ids: readonly string[] | undefined,
    limit: number,
  ): DocumentRecord[] {
    return this.handle.db
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
      .map((row) => toDocument({ ...row, collection }))
  }

  /**
   * One SQLite transaction, synchronous. Refused before it starts while the
   * file at DB_PATH is deleted or replaced; its outcome feeds readiness.
   */
  transaction<T>(work: (tx: WriteTransaction) => T): T {
    const { health } = this.handle
    const lost = health.fileProblem()
    if (lost !== undefined) {
      health.refused()
      throw new FileLostError(lost)
    }
    this.wrote = false
    try {
      const result = this.inTransaction(work)
      if (this.wrote) health.succeeded()
      return result
    } catch (error) {
      health.failed(error)
      throw error
    }
  }

  private readonly tx: WriteTransaction = {
    lockHeads: (collections) => {
      // The file is held exclusively: nobody else can move a head.
      const heads = new Map<string, number>()
      for (const collection of collections) heads.set(collection, this.head(collection))
      return heads
    },
    changedDocuments: (collection, after, until) => {
      const first = this.firstHeld(collection)
      if (after < until && (first === undefined || first > after + 1)) return undefined
      return this.selectChanged.all(collection, after, until).map((row) => row.document)
    },
    documents: (keys) => {
      const found: DocumentRecord[] = []
      for (const { collection, id } of keys) {
        const record = this.document(collection, id)
        if (record) found.push(record)
      }
      return found
    },
    changesBack: (collection, lastOffset, fromV) => this.changesBack(collection, lastOffset, fromV),
    write: (plan) => this.write(plan),
  }

  private write(plan: CommitPlan): void {
    for (const entry of plan.entries)
      this.insertEntry.run(
        entry.collection,
        entry.offset,
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
    const now = Date.now()
    for (const doc of plan.documents)
      this.upsertDocument.run(
        doc.collection,
        doc.id,
        doc.v,
        doc.type,
        doc.data,
        doc.deleted ? 1 : 0,
        now,
        doc.lastOffset,
      )
    for (const { collection, head } of plan.heads) this.upsertHead.run(collection, head)
    for (const mark of plan.marks ?? [])
      this.insertMark.run(mark.stream, mark.entryId, mark.appliedAt)
    if (plan.entries.length > 0) this.wrote = true
  }

  collections(): Array<{ collection: string; head: number }> {
    return this.handle.db.select().from(streams).all()
  }

  pruneUpTo(collection: string, upTo: number, batch: number): number {
    const first = this.firstHeld(collection)
    if (first === undefined || first > upTo) return 0
    return this.deleteUpTo.run(collection, Math.min(upTo, first + batch - 1)).changes
  }

  /**
   * Never past a younger entry, so what is held stays one run of offsets up
   * to the head (a wall clock stepped back can write an old timestamp after a
   * young one; deleting by timestamp alone would cut a silent hole that
   * resuming clients, who check only the oldest held offset, would not see).
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
    return this.deleteUpTo.run(collection, upTo).changes
  }

  countEntries(): number {
    return (
      this.handle.sqlite.query<{ n: number }, []>('SELECT COUNT(*) AS n FROM stream_entries').get()
        ?.n ?? 0
    )
  }

  isUnavailable(error: unknown): boolean {
    return error instanceof FileLostError || this.handle.health.isStoreFailure(error)
  }

  check(): Readiness {
    return this.handle.health.check()
  }

  close(): void {
    this.handle.close()
  }
}

/** The intake queue's idempotency keys in the SQLite file. */
class SqliteIntake implements IntakeBackend {
  private readonly selectApplied: Statement<{ entryId: string }>
  private readonly deleteBefore: Statement

  constructor(
    private readonly handle: SqliteHandle,
    private readonly insertMark: Statement,
  ) {
    const { sqlite } = handle
    this.selectApplied = sqlite.prepare(
      'SELECT entry_id AS entryId FROM intake_applied WHERE stream = ? AND entry_id IN (SELECT value FROM json_each(?))',
    )
    this.deleteBefore = sqlite.prepare(
      'DELETE FROM intake_applied WHERE rowid IN (SELECT rowid FROM intake_applied WHERE applied_at < ? ORDER BY applied_at LIMIT ?)',
    )
  }

  applied(stream: string, ids: readonly string[]): Set<string> {
    if (ids.length === 0) return new Set()
    return new Set(this.selectApplied.all(stream, JSON.stringify(ids)).map((row) => row.entryId))
  }

  mark(marks: readonly IntakeMark[]): void {
    const { health, sqlite } = this.handle
    const lost = health.fileProblem()
    if (lost !== undefined) {
      health.refused()
      throw new FileLostError(lost)
    }
    try {
      sqlite.transaction(() => {
        for (const mark of marks) this.insertMark.run(mark.stream, mark.entryId, mark.appliedAt)
      })()
      health.succeeded()
    } catch (error) {
      health.failed(error)
      throw error
    }
  }

  prune(before: number, limit: number): number {
    return this.deleteBefore.run(before, limit).changes
  }
}

/** Sessions in the SQLite file; writes go through one transaction per flush. */
class SqliteSessions implements SessionBackend {
  private readonly insert: Statement
  private readonly end: Statement
  private readonly name: Statement
  private readonly touch: Statement
  private readonly deleteEnded: Statement
  private readonly deleteOldest: Statement
  private readonly closeOpen: Statement

  constructor(private readonly handle: SqliteHandle) {
    const { sqlite } = handle
    this.insert = sqlite.prepare(
      'INSERT OR REPLACE INTO sessions (connection_id, user_id, session_id, client, user_agent, remote_address, node_id, connected_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    )
    this.end = sqlite.prepare(
      'UPDATE sessions SET ended_at = ?, end_reason = ?, last_seen = ? WHERE connection_id = ?',
    )
    this.name = sqlite.prepare('UPDATE sessions SET client = ? WHERE connection_id = ?')
    this.touch = sqlite.prepare('UPDATE sessions SET last_seen = ? WHERE connection_id = ?')
    // Both walk the ended_at index from the oldest end, a chunk at a time.
    this.deleteEnded = sqlite.prepare(
      'DELETE FROM sessions WHERE connection_id IN (SELECT connection_id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ? ORDER BY ended_at LIMIT ?)',
    )
    this.deleteOldest = sqlite.prepare(
      'DELETE FROM sessions WHERE connection_id IN (SELECT connection_id FROM sessions WHERE ended_at IS NOT NULL ORDER BY ended_at LIMIT ?)',
    )
    // The file is this process's alone: every open session is its own (also those of an older NODE_ID).
    this.closeOpen = sqlite.prepare(
      'UPDATE sessions SET ended_at = last_seen, end_reason = ? WHERE ended_at IS NULL',
    )
  }

  apply(writes: readonly SessionWrite[]): void {
    const { health, sqlite } = this.handle
    // Not into a deleted or replaced file (logged by the health check): the next start would not see them.
    const lost = health.fileProblem()
    if (lost !== undefined) {
      health.refused()
      throw new FileLostError(lost)
    }
    try {
      sqlite.transaction(() => {
        for (const write of writes) this.run(write)
      })()
      health.succeeded()
    } catch (error) {
      health.failed(error)
      throw error
    }
  }

  private run(write: SessionWrite): void {
    switch (write.kind) {
      case 'open': {
        const r = write.record
        this.insert.run(
          r.connectionId,
          r.userId,
          r.sessionId,
          r.client,
          r.userAgent,
          r.remoteAddress,
          r.nodeId,
          r.connectedAt,
          r.lastSeen,
        )
        return
      }
      case 'end':
        this.end.run(write.endedAt, write.reason, write.lastSeen, write.connectionId)
        return
      case 'name':
        this.name.run(write.client, write.connectionId)
        return
      case 'touch':
        this.touch.run(write.lastSeen, write.connectionId)
        return
    }
  }

  closeNode(_nodeId: string, reason: string): number {
    return this.closeOpen.run(reason).changes
  }

  pruneEnded(before: number, limit: number): number {
    return this.deleteEnded.run(before, limit).changes
  }

  pruneOldest(limit: number): number {
    return this.deleteOldest.run(limit).changes
  }

  count(): number {
    return (
      this.handle.sqlite.query<{ n: number }, []>('SELECT count(*) AS n FROM sessions').get()?.n ??
      0
    )
  }

  list(userId: string, limit: number): SessionRecord[] {
    return this.handle.db
      .select()
      .from(sessions)
      .where(eq(sessions.userId, userId))
      .orderBy(desc(sessions.connectedAt))
      .limit(limit)
      .all()
  }
}

/** Opens (creating and migrating) the SQLite store at `path`. */
export function openSqliteStore(path: string, logger?: Logger): SqliteStore {
  return new SqliteStore(openStore(path, logger), path)
}
