import { SQL } from 'bun'
import { and, asc, desc, sql as dsql, eq, inArray } from 'drizzle-orm'
import { type BunSQLDatabase, drizzle } from 'drizzle-orm/bun-sql'
import { migrate } from 'drizzle-orm/bun-sql/migrator'
import { StoreError } from '../../db/database.ts'
import { withMigrationsFolder } from '../../db/migrations-folder.ts'
import type { Logger } from '../../observability/logger.ts'
import type { EndReason } from '../../protocol/close.ts'
import type { EntryKind, EntrySource, StreamEntry } from '../../streams/entry.ts'
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
} from '../store.ts'
import { journal, migrationSql } from './migrations.gen.ts'
import * as schema from './schema.ts'

export interface PostgresStoreOptions {
  /** Connections for statements outside transactions, and so such statements in flight at most (default 8). */
  max?: number
  /** Connections for write transactions, and so transactions at once at most (default 2). */
  transactions?: number
  /** Seconds to wait for a connection to be made (default 5). */
  connectionTimeout?: number
  /** Milliseconds `check()` waits for its probe (default 2000). */
  checkTimeoutMs?: number
}

type Db = BunSQLDatabase<typeof schema>
/** What Bun SQL resolves a query with: the rows, and how many a write touched. */
type Rows<R> = R[] & { count: number }

/** How long close() lets running queries finish (seconds). */
const CLOSE_TIMEOUT_S = 5

/** Any two processes that migrate this database take this advisory lock first. */
const MIGRATION_LOCK = 0x7265_616c // 'real'

/**
 * Opens the PostgreSQL store: connects (failing with a StoreError that names
 * DATABASE_URL, never its password), applies the embedded migrations under
 * an advisory lock (so processes started together do not race), and queries or
 * creates the epoch.
 */
export async function openPostgresStore(
  url: string,
  logger?: Logger,
  options: PostgresStoreOptions = {},
): Promise<PostgresStore> {
  const location = redact(url)
  if (location === undefined)
    throw new StoreError(
      'DATABASE_URL is not a PostgreSQL URL (expected postgres://user@host:port/database)',
    )
  const connectionTimeout = options.connectionTimeout ?? 5
  const queries = new Pool(url, options.max ?? 8, connectionTimeout)
  const transactions = new Pool(url, options.transactions ?? 2, connectionTimeout)
  const closeBoth = () => Promise.all([queries.close(), transactions.close()]).catch(() => {})
  try {
    await queries.run((sql) => sql`SELECT 1`)
  } catch (error) {
    await closeBoth()
    throw new StoreError(
      `cannot connect to PostgreSQL at ${location} (DATABASE_URL): ${messageOf(error)}`,
    )
  }
  try {
    await applyMigrations(url, connectionTimeout)
    const db = drizzle({ client: queries.sql, schema })
    const epoch = await loadEpoch(db)
    logger?.info({ db: location }, 'PostgreSQL store open')
    return new PostgresStore(
      queries,
      transactions,
      db,
      epoch,
      location,
      options.checkTimeoutMs ?? 2000,
    )
  } catch (error) {
    await closeBoth()
    throw new StoreError(
      `cannot prepare the PostgreSQL database at ${location} (DATABASE_URL): ${messageOf(error)}`,
    )
  }
}

/** The URL without its password, for logs and errors; undefined when it is not a PostgreSQL URL. */
function redact(url: string): string | undefined {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return undefined
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') return undefined
  parsed.password = ''
  return parsed.toString()
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/**
 * Drizzle's migrator queries a folder: the embedded SQL is laid out in a
 * temporary one. One connection of its own holds the advisory lock and runs
 * every statement, so the lock covers the whole migration.
 */
async function applyMigrations(url: string, connectionTimeout: number): Promise<void> {
  const sql = new SQL(url, { max: 1, connectionTimeout })
  try {
    await withMigrationsFolder({ journal, migrationSql }, async (folder) => {
      await sql`SELECT pg_advisory_lock(${MIGRATION_LOCK})`
      await migrate(drizzle({ client: sql }), { migrationsFolder: folder })
      await sql`SELECT pg_advisory_unlock(${MIGRATION_LOCK})`
    })
  } finally {
    // Closing ends the session, which releases the lock after a failure too.
    await sql.close()
  }
}

/** Names this database's history; processes starting together agree on the first one written. */
async function loadEpoch(db: Db): Promise<string> {
  const candidate = crypto.randomUUID().slice(0, 8)
  await db.insert(schema.meta).values({ key: 'epoch', value: candidate }).onConflictDoNothing()
  const [row] = await db.select().from(schema.meta).where(eq(schema.meta.key, 'epoch'))
  if (!row) throw new Error('the epoch row is missing after it was written')
  return row.value
}

/**
 * Keeps queries in flight at or below the pool size: Bun 1.3.14 pipelines
 * the excess onto busy connections, where a query can resolve with another's
 * rows and the connection then hangs (oven-sh/bun #33627).
 */
class Gate {
  private free: number
  private readonly waiting: Array<() => void> = []

  constructor(private readonly slots: number) {
    this.free = slots
  }

  /** Nothing running through the gate. */
  get idle(): boolean {
    return this.free === this.slots
  }

  async run<T>(work: () => PromiseLike<T>): Promise<T> {
    if (this.free > 0) this.free--
    else await new Promise<void>((resolve) => this.waiting.push(resolve))
    try {
      return await work()
    } finally {
      const next = this.waiting.shift()
      if (next) next()
      else this.free++
    }
  }
}

/**
 * A Bun SQL pool behind its gate. Transactions get a pool of their own:
 * in Bun 1.3.14 a pooled query can be handed a connection a waiting
 * transaction owns and run inside it (oven-sh/bun #32004), which cannot
 * happen when no plain query shares their pool.
 */
class Pool {
  readonly sql: SQL
  private readonly gate: Gate

  constructor(url: string, max: number, connectionTimeout: number) {
    this.sql = new SQL(url, { max, connectionTimeout })
    this.gate = new Gate(max)
  }

  run<T>(work: (sql: SQL) => PromiseLike<T>): Promise<T> {
    return this.gate.run(() => work(this.sql))
  }

  /**
   * BEGIN … COMMIT on a reserved connection, holding one slot for its life,
   * each statement awaited before the next. Not `sql.begin()`: in Bun 1.3.14
   * a begin() whose connection the server closed keeps its pool slot, and
   * once every slot is lost so, begin() waits for ever (oven-sh/bun #43205);
   * a released reservation is replaced.
   */
  transaction<T>(work: (tx: SQL) => Promise<T>): Promise<T> {
    return this.gate.run(async () => {
      const tx = await this.sql.reserve()
      try {
        await tx`BEGIN`
        let result: T
        try {
          result = await work(tx)
        } catch (error) {
          // Fails only with the connection gone, and the server has rolled back then.
          await tx`ROLLBACK`.catch(() => {})
          throw error
        }
        await tx`COMMIT`
        return result
      } finally {
        // Typed void, but a promise that rejects when the connection is gone.
        await Promise.resolve(tx.release()).catch(() => {})
      }
    })
  }

  /**
   * Ends the pool. Bun's close() waits for work it believes in flight, and
   * after a connection lost in a transaction it believes so for ever: when
   * the gate says nothing of ours is running, it closes at once (a timeout
   * of 0 would mean none at all).
   */
  close(): Promise<void> {
    return this.sql.close({ timeout: this.gate.idle ? 0.001 : CLOSE_TIMEOUT_S })
  }
}

/**
 * PostgreSQL array literals, sent as one text parameter and cast in SQL
 * (`$1::text[]`): Bun's `sql.array` writes a null as the string "null".
 */
function textArray(values: ReadonlyArray<string | null>): string {
  let out = '{'
  for (let i = 0; i < values.length; i++) {
    const value = values[i]
    if (i > 0) out += ','
    out += value == null ? 'NULL' : `"${value.replace(/[\\"]/g, '\\$&')}"`
  }
  return `${out}}`
}

function int8Array(values: ReadonlyArray<number | null>): string {
  let out = '{'
  for (let i = 0; i < values.length; i++) {
    const value = values[i]
    if (i > 0) out += ','
    out += value == null ? 'NULL' : String(value)
  }
  return `${out}}`
}

function boolArray(values: readonly boolean[]): string {
  return `{${values.map((value) => (value ? 't' : 'f')).join(',')}}`
}

/** int8 columns arrive as strings. */
function num(value: string | number): number {
  return typeof value === 'number' ? value : Number(value)
}

function numOrNull(value: string | number | null): number | null {
  return value === null ? null : num(value)
}

interface EntryRow {
  collection: string
  offset: string
  document: string | null
  v: string | null
  kind: EntryKind
  payload: string
  source: EntrySource
  src: string | null
  seq: string | null
  created_at: string
  prev_offset: string | null
}

function toEntry(row: EntryRow): StreamEntry {
  const entry: StreamEntry = {
    collection: row.collection,
    offset: num(row.offset),
    kind: row.kind,
    payload: JSON.parse(row.payload),
    source: row.source,
    createdAt: num(row.created_at),
  }
  if (row.document !== null) entry.document = row.document
  if (row.v !== null) entry.v = num(row.v)
  if (row.src !== null) entry.src = row.src
  if (row.seq !== null) entry.seq = num(row.seq)
  if (row.prev_offset !== null) entry.prevOffset = num(row.prev_offset)
  return entry
}

interface DocumentRow {
  collection: string
  id: string
  v: string
  type: string | null
  data: string | null
  deleted: boolean
  last_offset: string | null
}

function toDocument(row: DocumentRow): DocumentRecord {
  return {
    collection: row.collection,
    id: row.id,
    v: num(row.v),
    type: row.type === 'json0' ? 'json0' : null,
    data: row.data,
    deleted: row.deleted,
    lastOffset: numOrNull(row.last_offset),
  }
}

/**
 * Bun SQL's codes for a connection that is gone or could not be made.
 * EXPECTED_REQUEST ("Failed to read data") is what a query gets instead of
 * CONNECTION_CLOSED when the server ends the connection under it.
 */
const LOST_CONNECTION = new Set([
  'ERR_POSTGRES_CONNECTION_CLOSED',
  'ERR_POSTGRES_EXPECTED_REQUEST',
  'ERR_POSTGRES_CONNECTION_TIMEOUT',
  'ERR_POSTGRES_IDLE_TIMEOUT',
  'ERR_POSTGRES_LIFETIME_TIMEOUT',
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
])

/**
 * SQLSTATEs that blame the server or the moment, not the statement: lost
 * connections (08), resources (53), shutdown (57P01-57P03), and conflicts
 * another try resolves (40001 serialization, 40P01 deadlock).
 */
function unavailableState(state: string): boolean {
  return (
    state.startsWith('08') ||
    state.startsWith('53') ||
    state === '57P01' ||
    state === '57P02' ||
    state === '57P03' ||
    state === '40001' ||
    state === '40P01'
  )
}

/** Whether an error blames PostgreSQL's reachability or state rather than the statement. */
function isUnavailable(error: unknown): boolean {
  if (!(error instanceof Error)) return false
  const { code, errno } = error as { code?: unknown; errno?: unknown }
  if (typeof code === 'string' && LOST_CONNECTION.has(code)) return true
  return (
    code === 'ERR_POSTGRES_SERVER_ERROR' && typeof errno === 'string' && unavailableState(errno)
  )
}

/** Outcomes of write transactions, for metrics and readiness (as SQLite's StoreHealth). */
class Health {
  failures = 0
  /** Why the last write transaction failed for PostgreSQL's sake, until one succeeds. */
  lastFailure: string | undefined

  get writable(): boolean {
    return this.lastFailure === undefined
  }

  /** Runs a write transaction, recording whether it failed for the store's sake. */
  async track<T>(write: Promise<T>, wrote: () => boolean): Promise<T> {
    try {
      const result = await write
      if (wrote()) this.lastFailure = undefined
      return result
    } catch (error) {
      if (isUnavailable(error)) {
        this.failures++
        this.lastFailure = messageOf(error)
      }
      throw error
    }
  }
}

/** The cluster's store: every method answers with a promise. */
export class PostgresStore implements Store {
  readonly kind = 'postgres'
  readonly sessions: SessionBackend
  readonly intake: IntakeBackend
  readonly health = new Health()

  constructor(
    private readonly queries: Pool,
    private readonly transactions: Pool,
    private readonly db: Db,
    readonly epoch: string,
    readonly location: string,
    private readonly checkTimeoutMs: number,
  ) {
    this.sessions = new PostgresSessions(queries, transactions, db, this.health)
    this.intake = new PostgresIntake(queries, transactions, this.health)
  }

  private query<R>(run: (sql: SQL) => PromiseLike<unknown>): Promise<Rows<R>> {
    return this.queries.run(run) as Promise<Rows<R>>
  }

  async head(collection: string): Promise<number> {
    const rows = await this.query<{ head: string }>(
      (sql) => sql`SELECT head FROM streams WHERE collection = ${collection}`,
    )
    return rows[0] ? num(rows[0].head) : 0
  }

  async firstHeld(collection: string): Promise<number | undefined> {
    const rows = await this.query<{ first: string | null }>(
      (sql) =>
        sql`SELECT MIN("offset") AS first FROM stream_entries WHERE collection = ${collection}`,
    )
    const first = rows[0]?.first ?? null
    return first === null ? undefined : num(first)
  }

  async readRange(
    collection: string,
    after: number,
    until: number,
    limit: number,
  ): Promise<StreamEntry[]> {
    const rows = await this.query<EntryRow>(
      (sql) => sql`SELECT * FROM stream_entries
        WHERE collection = ${collection} AND "offset" > ${after}::int8 AND "offset" <= ${until}::int8
        ORDER BY "offset" LIMIT ${limit}::int8`,
    )
    return rows.map(toEntry)
  }

  async readDocumentRange(
    collection: string,
    document: string,
    after: number,
    until: number,
    limit: number,
  ): Promise<StreamEntry[]> {
    const rows = await this.query<EntryRow>(
      (sql) => sql`SELECT * FROM stream_entries
        WHERE collection = ${collection} AND "offset" > ${after}::int8 AND "offset" <= ${until}::int8
          AND document = ${document}
        ORDER BY "offset" LIMIT ${limit}::int8`,
    )
    return rows.map(toEntry)
  }

  async history(
    collection: string,
    document: string | undefined,
    since: number,
    limit: number,
  ): Promise<StreamEntry[]> {
    const rows = await this.query<EntryRow>((sql) =>
      document === undefined
        ? sql`SELECT * FROM stream_entries
            WHERE collection = ${collection} AND "offset" > ${since}::int8
            ORDER BY "offset" LIMIT ${limit}::int8`
        : sql`SELECT * FROM stream_entries
            WHERE collection = ${collection} AND "offset" > ${since}::int8 AND document = ${document}
            ORDER BY "offset" LIMIT ${limit}::int8`,
    )
    return rows.map(toEntry)
  }

  async chainLinks(
    collection: string,
    lastOffset: number | null,
    fromV: number,
  ): Promise<ChainLink[]> {
    if (lastOffset === null) return []
    // One round trip for the whole walk; the first link below fromV (or without a
    // version) is kept and ends it, as does a link retention removed.
    const rows = await this.query<{ offset: string; v: string | null; prev_offset: string | null }>(
      (sql) => sql`WITH RECURSIVE chain AS (
          SELECT "offset", v, prev_offset FROM stream_entries
          WHERE collection = ${collection} AND "offset" = ${lastOffset}::int8
          UNION ALL
          SELECT e."offset", e.v, e.prev_offset FROM chain c
          JOIN stream_entries e ON e.collection = ${collection} AND e."offset" = c.prev_offset
          WHERE c.v >= ${fromV}::int8
        )
        SELECT "offset", v, prev_offset FROM chain ORDER BY "offset" DESC`,
    )
    return rows.map((row) => ({
      offset: num(row.offset),
      v: numOrNull(row.v),
      prevOffset: numOrNull(row.prev_offset),
    }))
  }

  async document(collection: string, id: string): Promise<DocumentRecord | undefined> {
    const rows = await this.query<DocumentRow>(
      (sql) => sql`SELECT collection, id, v, type, data, deleted, last_offset FROM documents
        WHERE collection = ${collection} AND id = ${id}`,
    )
    return rows[0] && toDocument(rows[0])
  }

  async listDocuments(
    collection: string,
    ids: readonly string[] | undefined,
    limit: number,
  ): Promise<DocumentRecord[]> {
    const { documents } = schema
    const rows = await this.queries.run(() =>
      this.db
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
        .limit(limit),
    )
    return rows.map((row) => ({
      collection: row.collection,
      id: row.id,
      v: row.v,
      type: row.type === 'json0' ? 'json0' : null,
      data: row.data,
      deleted: row.deleted,
      lastOffset: row.lastOffset,
    }))
  }

  /** One transaction on a connection of the transactions' pool (see Pool.transaction). */
  async transaction<T>(work: (tx: WriteTransaction) => T | Promise<T>): Promise<T> {
    let write: PostgresWrite | undefined
    return this.health.track(
      this.transactions.transaction(async (tx) => {
        write = new PostgresWrite(tx)
        return work(write)
      }),
      // Only a commit that wrote entries tells that writes work (not one of refusals alone).
      () => write?.wroteEntries === true,
    )
  }

  async collections(): Promise<Array<{ collection: string; head: number }>> {
    return this.queries.run(() => this.db.select().from(schema.streams))
  }

  async pruneUpTo(collection: string, upTo: number, batch: number): Promise<number> {
    const result = await this.query<never>(
      (
        sql,
      ) => sql`DELETE FROM stream_entries WHERE collection = ${collection} AND "offset" <= LEAST(
          ${upTo}::int8,
          (SELECT MIN("offset") FROM stream_entries WHERE collection = ${collection}) + ${batch}::int8 - 1
        )`,
    )
    return result.count
  }

  async pruneOlderPrefix(collection: string, before: number, batch: number): Promise<number> {
    // Up to the last of the oldest `batch` entries that has no younger one at or before it,
    // so what is held stays one run of offsets (see StreamStore.pruneOlderPrefix).
    const result = await this.query<never>(
      (sql) => sql`WITH oldest AS (
          SELECT "offset", created_at FROM stream_entries
          WHERE collection = ${collection} ORDER BY "offset" LIMIT ${batch}::int8
        ), stop AS (
          SELECT MIN("offset") AS at FROM oldest WHERE created_at >= ${before}::int8
        )
        DELETE FROM stream_entries WHERE collection = ${collection} AND "offset" <= (
          SELECT MAX("offset") FROM oldest
          WHERE "offset" < COALESCE((SELECT at FROM stop), 9223372036854775807)
        )`,
    )
    return result.count
  }

  /**
   * An estimate: the planner's row count, kept by autovacuum/ANALYZE (-1
   * before the first one). Counting a large op log exactly would scan it
   * on every metrics scrape.
   */
  async countEntries(): Promise<number> {
    const rows = await this.query<{ n: number }>(
      (sql) =>
        sql`SELECT GREATEST(reltuples, 0)::float8 AS n FROM pg_class WHERE oid = 'stream_entries'::regclass`,
    )
    return Math.round(rows[0]?.n ?? 0)
  }

  isUnavailable(error: unknown): boolean {
    return isUnavailable(error)
  }

  /**
   * `SELECT 1` while writes work; after a failed write, a one-row write
   * (a server that answers but cannot write, e.g. a full disk, stays not
   * ready). Bounded by checkTimeoutMs.
   */
  async check(): Promise<Readiness> {
    const failed = this.health.lastFailure
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`no answer within ${this.checkTimeoutMs} ms`)),
        this.checkTimeoutMs,
      )
    })
    const probe = this.query((sql) =>
      failed === undefined
        ? sql`SELECT 1`
        : sql`INSERT INTO meta (key, value) VALUES ('readiness_probe', ${new Date().toISOString()})
            ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
    )
    try {
      await Promise.race([probe, timeout])
      this.health.lastFailure = undefined
      return { ok: true }
    } catch (error) {
      const last = failed === undefined ? '' : ` (the last write failed: ${failed})`
      return { ok: false, reason: `PostgreSQL at ${this.location}: ${messageOf(error)}${last}` }
    } finally {
      clearTimeout(timer)
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.queries.close(), this.transactions.close()])
  }
}

/** The commit queue's transaction: fixed statement texts, batched through unnest(). */
class PostgresWrite implements WriteTransaction {
  wroteEntries = false

  constructor(private readonly tx: SQL) {}

  private query<R>(run: (sql: SQL) => PromiseLike<unknown>): Promise<Rows<R>> {
    return Promise.resolve(run(this.tx)) as Promise<Rows<R>>
  }

  async lockHeads(collections: readonly string[]): Promise<Map<string, number>> {
    if (collections.length === 0) return new Map()
    const sorted = textArray([...new Set(collections)].sort())
    // Rows for new collections first (so there is a row to lock), in the same order
    // everywhere; then the locks, taken in sorted order: no two processes wait in a cycle.
    await this.query(
      (sql) => sql`INSERT INTO streams (collection, head)
        SELECT c, 0 FROM unnest(${sorted}::text[]) AS c ON CONFLICT (collection) DO NOTHING`,
    )
    const rows = await this.query<{ collection: string; head: string }>(
      (sql) => sql`SELECT collection, head FROM streams
        WHERE collection = ANY(${sorted}::text[]) ORDER BY collection FOR UPDATE`,
    )
    return new Map(rows.map((row) => [row.collection, num(row.head)]))
  }

  async changedDocuments(
    collection: string,
    after: number,
    until: number,
  ): Promise<string[] | undefined> {
    const [first] = await this.query<{ first: string | null }>(
      (sql) =>
        sql`SELECT MIN("offset") AS first FROM stream_entries WHERE collection = ${collection}`,
    )
    if (after < until && (first?.first === null || num(first?.first ?? '0') > after + 1))
      return undefined
    const rows = await this.query<{ document: string }>(
      (sql) => sql`SELECT DISTINCT document FROM stream_entries
        WHERE collection = ${collection} AND "offset" > ${after}::int8 AND "offset" <= ${until}::int8
          AND document IS NOT NULL`,
    )
    return rows.map((row) => row.document)
  }

  async documents(
    keys: ReadonlyArray<{ collection: string; id: string }>,
  ): Promise<DocumentRecord[]> {
    if (keys.length === 0) return []
    const collections = textArray(keys.map((key) => key.collection))
    const ids = textArray(keys.map((key) => key.id))
    const rows = await this.query<DocumentRow>(
      (sql) => sql`SELECT d.collection, d.id, d.v, d.type, d.data, d.deleted, d.last_offset
        FROM unnest(${collections}::text[], ${ids}::text[]) AS k(collection, id)
        JOIN documents d ON d.collection = k.collection AND d.id = k.id`,
    )
    return rows.map(toDocument)
  }

  async changesBack(
    collection: string,
    lastOffset: number | null,
    fromV: number,
  ): Promise<StreamEntry[]> {
    if (lastOffset === null) return []
    const rows = await this.query<EntryRow>(
      (sql) => sql`WITH RECURSIVE chain AS (
          SELECT * FROM stream_entries
          WHERE collection = ${collection} AND "offset" = ${lastOffset}::int8 AND v >= ${fromV}::int8
          UNION ALL
          SELECT e.* FROM chain c
          JOIN stream_entries e ON e.collection = ${collection} AND e."offset" = c.prev_offset
          WHERE e.v >= ${fromV}::int8
        )
        SELECT * FROM chain ORDER BY "offset"`,
    )
    return rows.map(toEntry)
  }

  /**
   * The entries, documents and heads in one statement (data-modifying CTEs;
   * an empty array inserts nothing): every round trip here is made holding
   * the heads' locks, which every process writing these collections waits for.
   */
  async write({ entries, documents, heads, marks }: CommitPlan): Promise<void> {
    if (entries.length > 0 || documents.length > 0 || heads.length > 0) {
      const now = Date.now()
      await this.query(
        (sql) => sql`WITH entries AS (
            INSERT INTO stream_entries
              (collection, "offset", document, v, kind, payload, source, src, seq, created_at, prev_offset)
            SELECT * FROM unnest(${textArray(entries.map((e) => e.collection))}::text[],
              ${int8Array(entries.map((e) => e.offset))}::int8[],
              ${textArray(entries.map((e) => e.document ?? null))}::text[],
              ${int8Array(entries.map((e) => e.v ?? null))}::int8[],
              ${textArray(entries.map((e) => e.kind))}::text[],
              ${textArray(entries.map((e) => JSON.stringify(e.payload)))}::text[],
              ${textArray(entries.map((e) => e.source))}::text[],
              ${textArray(entries.map((e) => e.src ?? null))}::text[],
              ${int8Array(entries.map((e) => e.seq ?? null))}::int8[],
              ${int8Array(entries.map((e) => e.createdAt))}::int8[],
              ${int8Array(entries.map((e) => e.prevOffset ?? null))}::int8[])
          ), documents AS (
            INSERT INTO documents (collection, id, v, type, data, deleted, last_offset, updated_at)
            SELECT *, ${now}::int8 FROM unnest(${textArray(documents.map((d) => d.collection))}::text[],
              ${textArray(documents.map((d) => d.id))}::text[],
              ${int8Array(documents.map((d) => d.v))}::int8[],
              ${textArray(documents.map((d) => d.type))}::text[],
              ${textArray(documents.map((d) => d.data))}::text[],
              ${boolArray(documents.map((d) => d.deleted))}::bool[],
              ${int8Array(documents.map((d) => d.lastOffset))}::int8[])
            ON CONFLICT (collection, id) DO UPDATE SET v = excluded.v, type = excluded.type,
              data = excluded.data, deleted = excluded.deleted, last_offset = excluded.last_offset,
              updated_at = excluded.updated_at
          )
          -- An upsert, not an UPDATE: correct also for a collection lockHeads did not see.
          INSERT INTO streams (collection, head)
          SELECT * FROM unnest(${textArray(heads.map((h) => h.collection))}::text[],
            ${int8Array(heads.map((h) => h.head))}::int8[])
          ON CONFLICT (collection) DO UPDATE SET head = excluded.head`,
      )
      if (entries.length > 0) this.wroteEntries = true
    }
    if (marks !== undefined && marks.length > 0) await insertMarks(this.tx, marks)
  }
}

/** A plain INSERT: a second mark for an entry fails its transaction, so no entry takes effect twice. */
function insertMarks(tx: SQL, marks: readonly IntakeMark[]): PromiseLike<unknown> {
  const streams = textArray(marks.map((m) => m.stream))
  const ids = textArray(marks.map((m) => m.entryId))
  const at = int8Array(marks.map((m) => m.appliedAt))
  return tx`INSERT INTO intake_applied (stream, entry_id, applied_at)
    SELECT * FROM unnest(${streams}::text[], ${ids}::text[], ${at}::int8[])`
}

/** The intake queue's idempotency keys in PostgreSQL. */
class PostgresIntake implements IntakeBackend {
  constructor(
    private readonly queries: Pool,
    private readonly transactions: Pool,
    private readonly health: Health,
  ) {}

  async applied(stream: string, ids: readonly string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set()
    const list = textArray(ids)
    const rows = (await this.queries.run(
      (sql) => sql`SELECT entry_id FROM intake_applied
        WHERE stream = ${stream} AND entry_id = ANY(${list}::text[])`,
    )) as Rows<{ entry_id: string }>
    return new Set(rows.map((row) => row.entry_id))
  }

  async mark(marks: readonly IntakeMark[]): Promise<void> {
    if (marks.length === 0) return
    await this.health.track(
      this.transactions.transaction(async (tx) => {
        await insertMarks(tx, marks)
      }),
      () => true,
    )
  }

  async prune(before: number, limit: number): Promise<number> {
    const result = (await this.queries.run(
      (sql) => sql`DELETE FROM intake_applied WHERE (stream, entry_id) IN (
          SELECT stream, entry_id FROM intake_applied WHERE applied_at < ${before}::int8
          ORDER BY applied_at LIMIT ${limit}::int8)`,
    )) as Rows<never>
    return result.count
  }
}

type WriteOf<K extends SessionWrite['kind']> = Extract<SessionWrite, { kind: K }>

/**
 * Session writes: each run of writes of one kind is one statement (the
 * latest write per connection in the run wins, as applying them one by one
 * would leave it), runs in their order, all in one transaction.
 */
class PostgresSessions implements SessionBackend {
  constructor(
    private readonly queries: Pool,
    private readonly transactions: Pool,
    private readonly db: Db,
    private readonly health: Health,
  ) {}

  async apply(writes: readonly SessionWrite[]): Promise<void> {
    if (writes.length === 0) return
    const runs: SessionWrite[][] = []
    for (const write of writes) {
      const last = runs.at(-1)
      if (last && last[0]?.kind === write.kind) last.push(write)
      else runs.push([write])
    }
    await this.health.track(
      this.transactions.transaction(async (tx) => {
        for (const run of runs) await applyRun(tx, run)
      }),
      () => true,
    )
  }

  async closeNode(nodeId: string, reason: EndReason): Promise<number> {
    const result = (await this.queries.run(
      (sql) => sql`UPDATE sessions SET ended_at = last_seen, end_reason = ${reason}
        WHERE node_id = ${nodeId} AND ended_at IS NULL`,
    )) as Rows<never>
    return result.count
  }

  async pruneEnded(before: number, limit: number): Promise<number> {
    const result = (await this.queries.run(
      (sql) => sql`DELETE FROM sessions WHERE connection_id IN (
        SELECT connection_id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ${before}::int8
        ORDER BY ended_at LIMIT ${limit}::int8)`,
    )) as Rows<never>
    return result.count
  }

  async pruneOldest(limit: number): Promise<number> {
    const result = (await this.queries.run(
      (sql) => sql`DELETE FROM sessions WHERE connection_id IN (
        SELECT connection_id FROM sessions WHERE ended_at IS NOT NULL
        ORDER BY ended_at LIMIT ${limit}::int8)`,
    )) as Rows<never>
    return result.count
  }

  async count(): Promise<number> {
    const [row] = await this.queries.run(() =>
      this.db.select({ n: dsql<number>`count(*)`.mapWith(Number) }).from(schema.sessions),
    )
    return row?.n ?? 0
  }

  async list(userId: string, limit: number): Promise<SessionRecord[]> {
    const { sessions } = schema
    const rows: SessionRecord[] = await this.queries.run(() =>
      this.db
        .select()
        .from(sessions)
        .where(eq(sessions.userId, userId))
        .orderBy(desc(sessions.connectedAt))
        .limit(limit),
    )
    return rows
  }
}

/** The last write of each connection in a run: applied one by one, it would have won. */
function lastPer<W>(run: readonly SessionWrite[], connection: (write: W) => string): W[] {
  const byConnection = new Map<string, W>()
  // A run holds writes of one kind (see apply).
  for (const write of run as readonly W[]) byConnection.set(connection(write), write)
  return [...byConnection.values()]
}

async function applyRun(tx: SQL, run: readonly SessionWrite[]): Promise<void> {
  switch (run[0]?.kind) {
    case 'open': {
      const records = lastPer<WriteOf<'open'>>(run, (w) => w.record.connectionId).map(
        (write) => write.record,
      )
      const text = (pick: (r: SessionRecord) => string | null) => textArray(records.map(pick))
      const int8 = (pick: (r: SessionRecord) => number | null) => int8Array(records.map(pick))
      await tx`INSERT INTO sessions (connection_id, user_id, session_id, client, user_agent,
          remote_address, node_id, connected_at, last_seen, ended_at, end_reason)
        SELECT * FROM unnest(${text((r) => r.connectionId)}::text[], ${text((r) => r.userId)}::text[],
          ${text((r) => r.sessionId)}::text[], ${text((r) => r.client)}::text[],
          ${text((r) => r.userAgent)}::text[], ${text((r) => r.remoteAddress)}::text[],
          ${text((r) => r.nodeId)}::text[], ${int8((r) => r.connectedAt)}::int8[],
          ${int8((r) => r.lastSeen)}::int8[], ${int8((r) => r.endedAt)}::int8[],
          ${text((r) => r.endReason)}::text[])
        ON CONFLICT (connection_id) DO UPDATE SET user_id = excluded.user_id,
          session_id = excluded.session_id, client = excluded.client,
          user_agent = excluded.user_agent, remote_address = excluded.remote_address,
          node_id = excluded.node_id, connected_at = excluded.connected_at,
          last_seen = excluded.last_seen, ended_at = excluded.ended_at,
          end_reason = excluded.end_reason`
      return
    }
    case 'end': {
      const writes = lastPer<WriteOf<'end'>>(run, (w) => w.connectionId)
      await tx`UPDATE sessions s SET ended_at = w.ended_at, end_reason = w.reason,
          last_seen = w.last_seen
        FROM unnest(${textArray(writes.map((w) => w.connectionId))}::text[],
          ${int8Array(writes.map((w) => w.endedAt))}::int8[],
          ${textArray(writes.map((w) => w.reason))}::text[],
          ${int8Array(writes.map((w) => w.lastSeen))}::int8[]) AS w(id, ended_at, reason, last_seen)
        WHERE s.connection_id = w.id`
      return
    }
    case 'name': {
      const writes = lastPer<WriteOf<'name'>>(run, (w) => w.connectionId)
      await tx`UPDATE sessions s SET client = w.client
        FROM unnest(${textArray(writes.map((w) => w.connectionId))}::text[],
          ${textArray(writes.map((w) => w.client))}::text[]) AS w(id, client)
        WHERE s.connection_id = w.id`
      return
    }
    case 'touch': {
      const writes = lastPer<WriteOf<'touch'>>(run, (w) => w.connectionId)
      await tx`UPDATE sessions s SET last_seen = w.last_seen
        FROM unnest(${textArray(writes.map((w) => w.connectionId))}::text[],
          ${int8Array(writes.map((w) => w.lastSeen))}::int8[]) AS w(id, last_seen)
        WHERE s.connection_id = w.id`
      return
    }
    case undefined:
      return
  }
}
