import type { EndReason } from '../protocol/close.ts'
import type { StreamEntry } from '../streams/entry.ts'

/**
 * A value now (SQLite) or later (PostgreSQL). Callers that must keep a
 * synchronous path for the embedded store check with `isPromise`.
 */
export type Maybe<T> = T | Promise<T>

export function isPromise<T>(value: Maybe<T>): value is Promise<T> {
  return value instanceof Promise
}

/** Runs `next` on the value now when it is there, later when it is a promise. */
export function then<T, R>(value: Maybe<T>, next: (value: T) => Maybe<R>): Maybe<R> {
  return isPromise(value) ? value.then(next) : next(value)
}

/** A document as stored: its version, snapshot (while `type` is json0) and chain head. */
export interface DocumentRecord {
  collection: string
  id: string
  v: number
  /** 'json0' while a snapshot is held; null for external or deleted documents. */
  type: 'json0' | null
  /** The snapshot's JSON text, or null. */
  data: string | null
  deleted: boolean
  /** Offset of the document's latest change (the head of its chain), or null. */
  lastOffset: number | null
}

/** A change's place in its document's chain. */
export interface ChainLink {
  offset: number
  v: number | null
  prevOffset: number | null
}

/** Everything one group commit writes, in one transaction. */
export interface CommitPlan {
  /** Each collection's new head (the last offset appended). */
  heads: Array<{ collection: string; head: number }>
  /** The appended entries, offsets gap-free per collection after the head the batch was built on. */
  entries: readonly StreamEntry[]
  /** The last state of every document the batch changed. */
  documents: readonly DocumentRecord[]
  /** Intake entries whose effect this batch commits (src/intake/): written with it, or not at all. */
  marks?: readonly IntakeMark[]
}

/** An intake stream entry whose effect is committed: its id is its idempotency key. */
export interface IntakeMark {
  stream: string
  entryId: string
  appliedAt: number
}

/** The intake queue's idempotency keys (table `intake_applied`). */
export interface IntakeBackend {
  /** Which of these entry ids of `stream` are marked applied. */
  applied(stream: string, ids: readonly string[]): Maybe<Set<string>>
  /** Marks entries that have no store effect (a user broadcast), in one transaction of their own. */
  mark(marks: readonly IntakeMark[]): Maybe<void>
  /** Deletes up to `limit` marks written before `before` (ms); returns how many. */
  prune(before: number, limit: number): Maybe<number>
}

/**
 * One write transaction of the commit queue. SQLite: synchronous, every
 * method returns a plain value. PostgreSQL: the heads of the collections
 * the batch writes are locked first (`lockHeads`, so no other process
 * commits to them until this one ends), then what the batch's jobs need is
 * read inside the same transaction, then the plan is written.
 */
export interface WriteTransaction {
  /**
   * The committed heads of these collections (0 for a new one), locked
   * until the transaction ends. Sorted internally, so two processes never
   * wait for each other in a cycle.
   */
  lockHeads(collections: readonly string[]): Maybe<Map<string, number>>
  /**
   * Documents that have a change with after < offset ≤ until (to drop from a
   * stale cache); undefined when retention removed part of that range (the
   * caller must then treat every document of the collection as changed).
   */
  changedDocuments(collection: string, after: number, until: number): Maybe<string[] | undefined>
  /** These documents as committed (absent ones left out). */
  documents(keys: ReadonlyArray<{ collection: string; id: string }>): Maybe<DocumentRecord[]>
  /**
   * A document's changes walked back along its chain from `lastOffset` to
   * the one applied at `fromV` (stops early where retention cut it); oldest first.
   */
  changesBack(collection: string, lastOffset: number | null, fromV: number): Maybe<StreamEntry[]>
  /** Writes the plan: entries, document states and heads. */
  write(plan: CommitPlan): Maybe<void>
}

export type Readiness = { ok: true } | { ok: false; reason: string }

/** One row per WebSocket connection, live or ended. */
export interface SessionRecord {
  connectionId: string
  userId: string
  sessionId: string
  client: string | null
  userAgent: string | null
  remoteAddress: string | null
  /** The process the connection is (or was) on; `NODE_ID`. */
  nodeId: string
  connectedAt: number
  lastSeen: number
  endedAt: number | null
  endReason: string | null
}

/** How a session ended: as its connection did, or closed by the store's owner (a restart, a lost node). */
export type SessionEndReason = EndReason | 'server_restart' | 'node_lost'

/** Session writes, queued and committed together (see presence/sessions.ts). */
export type SessionWrite =
  | { kind: 'open'; record: SessionRecord }
  | { kind: 'end'; connectionId: string; endedAt: number; reason: EndReason; lastSeen: number }
  | { kind: 'name'; connectionId: string; client: string | null }
  | { kind: 'touch'; connectionId: string; lastSeen: number }

export interface SessionBackend {
  /** Commits the writes in one transaction. */
  apply(writes: readonly SessionWrite[]): Maybe<void>
  /**
   * Ends the sessions of `nodeId` still open (a crash left them), at their
   * last_seen, with `reason`; returns how many.
   */
  closeNode(nodeId: string, reason: SessionEndReason): Maybe<number>
  /** Deletes up to `limit` sessions that ended before `before` (ms); returns how many. */
  pruneEnded(before: number, limit: number): Maybe<number>
  /** Deletes up to `limit` of the sessions that ended first; returns how many. */
  pruneOldest(limit: number): Maybe<number>
  /** Rows in the table. */
  count(): Maybe<number>
  /** A user's sessions, newest first. */
  list(userId: string, limit: number): Maybe<SessionRecord[]>
}

/**
 * The store behind streams, documents and sessions: an SQLite file (one
 * process, synchronous) or PostgreSQL (a cluster, asynchronous). The caches
 * (heads, documents) live above it, in streams/ and documents/.
 */
export interface Store {
  readonly kind: 'sqlite' | 'postgres'
  /** Names this store's history: resume positions from another store are not recovered. */
  readonly epoch: string
  /** Where it is, for logs and /readyz (never a password). */
  readonly location: string
  /** Committed head of a collection (0 when it has none). */
  head(collection: string): Maybe<number>
  /** Oldest offset still held, or undefined when nothing is. */
  firstHeld(collection: string): Maybe<number | undefined>
  /** Entries with after < offset ≤ until, oldest first, at most `limit`. */
  readRange(collection: string, after: number, until: number, limit: number): Maybe<StreamEntry[]>
  /** One document's entries (changes and messages) with after < offset ≤ until, oldest first. */
  readDocumentRange(
    collection: string,
    document: string,
    after: number,
    until: number,
    limit: number,
  ): Maybe<StreamEntry[]>
  /** History API: a collection's (or one document's) entries after `since`, oldest first. */
  history(
    collection: string,
    document: string | undefined,
    since: number,
    limit: number,
  ): Maybe<StreamEntry[]>
  /**
   * A document's chain links (no payloads) from `lastOffset` back while
   * v ≥ fromV, plus the first link below it; newest first. Stops where
   * retention cut the chain.
   */
  chainLinks(collection: string, lastOffset: number | null, fromV: number): Maybe<ChainLink[]>
  /** A committed document, or undefined when it never had a version. */
  document(collection: string, id: string): Maybe<DocumentRecord | undefined>
  /** Committed documents of a collection (deleted ones left out), by id. */
  listDocuments(
    collection: string,
    ids: readonly string[] | undefined,
    limit: number,
  ): Maybe<DocumentRecord[]>
  /** Runs `work` in one write transaction; its error rolls everything back. */
  transaction<T>(work: (tx: WriteTransaction) => Maybe<T>): Maybe<T>
  /** Every collection with its head, for retention. */
  collections(): Maybe<Array<{ collection: string; head: number }>>
  /** Retention: deletes up to `batch` of the collection's entries with offset ≤ upTo; returns how many. */
  pruneUpTo(collection: string, upTo: number, batch: number): Maybe<number>
  /**
   * Retention by age: deletes up to `batch` of the collection's oldest
   * entries, stopping at the first one not older than `before` (ms).
   */
  pruneOlderPrefix(collection: string, before: number, batch: number): Maybe<number>
  /** Entries held in all (for metrics; may be an estimate on PostgreSQL). */
  countEntries(): Maybe<number>
  readonly sessions: SessionBackend
  readonly intake: IntakeBackend
  /**
   * Whether a failed write is the store's fault (unreachable, disk, lock:
   * answered 503, retry later) rather than the write's (a bug: 500).
   */
  isUnavailable(error: unknown): boolean
  /** For metrics: write transactions failed for the store's sake since start, and whether writes work now. */
  readonly health: { readonly failures: number; readonly writable: boolean }
  /** Readiness: can the store take writes now? Probes it after a failure. */
  check(): Maybe<Readiness>
  close(): Maybe<void>
}
