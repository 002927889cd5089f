import { Database, SQLiteError } from 'bun:sqlite'
import { mkdirSync, statSync } from 'node:fs'
import { dirname } from 'node:path'
import { type BunSQLiteDatabase, drizzle } from 'drizzle-orm/bun-sqlite'
import { migrate } from 'drizzle-orm/bun-sqlite/migrator'
import type { Logger } from '../observability/logger.ts'
import { journal, migrationSql } from './migrations.gen.ts'
import { withMigrationsFolder } from './migrations-folder.ts'
import * as schema from './schema.ts'

export type Db = BunSQLiteDatabase<typeof schema>

/** How long a statement waits for a lock (none is expected: the file is held exclusively). */
export const BUSY_TIMEOUT_MS = 5000

export interface Store {
  /** Drizzle, for everything but the hot paths. */
  db: Db
  /** The raw handle, for prepared statements on hot paths and transactions. */
  sqlite: Database
  /** Whether writes can be taken: every writer reports its outcome here. */
  health: StoreHealth
  close(): void
}

/** The database could not be opened, migrated or written: the server must not start. */
export class StoreError extends Error {
  override name = 'StoreError'
}

/**
 * Opens (creating its directory) and migrates the SQLite store. WAL with
 * synchronous=NORMAL: a commit survives a process crash without an fsync
 * per transaction; only a power loss can take the last commits.
 *
 * The file is held exclusively for the life of the process (SQLite's
 * EXCLUSIVE locking mode, an fcntl lock the OS drops when the process dies,
 * even by SIGKILL): a second server on the same DB_PATH fails to start
 * instead of writing the same offsets and versions.
 */
export function openStore(path: string, logger?: Logger): Store {
  let sqlite: Database
  try {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
    sqlite = new Database(path, { create: true, strict: true })
  } catch (error) {
    throw new StoreError(`cannot open database at ${path}: ${(error as Error).message}`)
  }
  try {
    // Before WAL is entered, so no shared-memory index exists that another process could join.
    sqlite.exec('PRAGMA locking_mode = EXCLUSIVE')
    // A lock someone else holds at start is another server: fail now rather than wait for it.
    sqlite.exec('PRAGMA busy_timeout = 0')
    sqlite.exec('PRAGMA journal_mode = WAL')
    // Takes the write lock, kept from now on; also fails now, not at the first publish, when the file is read-only.
    sqlite.exec('BEGIN IMMEDIATE; COMMIT')
    sqlite.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`)
    sqlite.exec('PRAGMA synchronous = NORMAL')
    sqlite.exec('PRAGMA foreign_keys = ON')
    const db = drizzle(sqlite, { schema })
    applyMigrations(db)
    const health = new StoreHealth(path, sqlite, logger)
    return { db, sqlite, health, close: () => release(sqlite) }
  } catch (error) {
    sqlite.close()
    if (error instanceof SQLiteError && primaryCode(error) === SQLITE_BUSY)
      throw new StoreError(
        `database at ${path} (DB_PATH) is locked by another process: another teable-realtime uses it (one server per DB_PATH), or a tool such as sqlite3 has it open; stop that one or give this server its own DB_PATH`,
      )
    throw new StoreError(
      `database at ${path} is unusable (corrupt, not a database, or not writable): ${(error as Error).message}`,
    )
  }
}

/**
 * Closes, releasing the file's lock now. sqlite3_close_v2 keeps a connection
 * (and its exclusive lock) alive while any prepared statement is, until they
 * are garbage-collected; leaving WAL (which checkpoints, as a last close
 * does anyway) and exclusive mode drops the lock at once, so this process
 * can open the file again.
 */
function release(sqlite: Database): void {
  try {
    sqlite.exec('PRAGMA journal_mode = DELETE')
    sqlite.exec('PRAGMA locking_mode = NORMAL')
    sqlite.query('SELECT 1 FROM sqlite_master LIMIT 1').get()
  } catch {
    // Closing anyway: the lock goes with the statements, or with the process.
  }
  sqlite.close()
}

const SQLITE_BUSY = 5

/** bun:sqlite reports extended result codes; the low byte is the primary one. */
function primaryCode(error: SQLiteError): number {
  return error.errno & 0xff
}

/**
 * SQLite's primary result codes that blame the store (disk, file, lock),
 * not the statement: BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL,
 * CANTOPEN, PROTOCOL, NOTADB. A constraint or a bad value is a bug (500).
 */
const STORE_FAILURES = new Set([5, 6, 7, 8, 10, 11, 13, 14, 15, 26])

/** Whether a failed write is the store's fault (answered 503, retry later) rather than the write's. */
export function isStoreFailure(error: unknown): boolean {
  return error instanceof SQLiteError && STORE_FAILURES.has(primaryCode(error))
}

export type Readiness = { ok: true } | { ok: false; reason: string }

/**
 * Whether the store takes writes: the outcome of the last write transaction
 * (group commits, session writes), and whether DB_PATH still names the file
 * that was opened. A deleted or replaced file would take writes into an
 * unlinked inode, lost at the next start: that is final until a restart.
 */
export class StoreHealth {
  private failureCount = 0
  private lastFailure: string | undefined
  private lost: string | undefined
  private readonly identity: { dev: bigint; ino: bigint } | undefined

  constructor(
    private readonly path: string,
    private readonly sqlite: Database,
    private readonly logger: Logger | undefined,
  ) {
    const stat = path === ':memory:' ? undefined : statSync(path, { bigint: true })
    this.identity = stat && { dev: stat.dev, ino: stat.ino }
  }

  /**
   * Why writes must be refused for good (the file at DB_PATH was deleted or
   * replaced), or undefined. One stat call (~2 µs): cheap enough per commit.
   */
  fileProblem(): string | undefined {
    if (this.lost !== undefined || this.identity === undefined) return this.lost
    let now: ReturnType<typeof statSync>
    try {
      now = statSync(this.path, { bigint: true, throwIfNoEntry: false })
    } catch (error) {
      // The directory may be unreadable for now (EACCES): refuse this batch, check again next time.
      return `cannot check the database file ${this.path} (DB_PATH): ${(error as Error).message}`
    }
    if (now && now.dev === this.identity.dev && now.ino === this.identity.ino) return undefined
    const what = now ? 'replaced' : 'deleted'
    this.lost = `the database file ${this.path} (DB_PATH) was ${what} while the server ran; writes are refused until the server is restarted`
    this.logger?.error({ db: this.path }, `database file ${what}: writes refused until a restart`)
    return this.lost
  }

  /** Whether a failed write is the store's fault rather than the write's. */
  isStoreFailure(error: unknown): boolean {
    return isStoreFailure(error)
  }

  /** Write transactions that failed for the store's sake or were refused for a lost file, since start. */
  get failures(): number {
    return this.failureCount
  }

  /** A write transaction that stored something committed. */
  succeeded(): void {
    this.lastFailure = undefined
  }

  /** A write transaction failed: true (and counted) when the store is to blame. */
  failed(error: unknown): boolean {
    if (!isStoreFailure(error)) return false
    this.failureCount++
    this.lastFailure = (error as Error).message
    return true
  }

  /** A write transaction was refused because the file was lost. */
  refused(): void {
    this.failureCount++
  }

  /** For the metrics gauge: no write attempted here. */
  get writable(): boolean {
    return this.fileProblem() === undefined && this.lastFailure === undefined
  }

  /**
   * Readiness. After a failed write, a one-row write transaction tells
   * whether the store takes writes again, so a disk with room again (or a
   * released lock) is ready without client traffic.
   */
  check(): Readiness {
    const lost = this.fileProblem()
    if (lost !== undefined) return { ok: false, reason: lost }
    if (this.lastFailure === undefined) return { ok: true }
    try {
      // A real write (a WAL frame appended), unlike BEGIN IMMEDIATE; ROLLBACK.
      this.sqlite
        .query('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)')
        .run('readiness_probe', new Date().toISOString())
      this.lastFailure = undefined
      return { ok: true }
    } catch (error) {
      if (isStoreFailure(error)) this.lastFailure = (error as Error).message
      return {
        ok: false,
        reason: `store not writable: the last write failed (${this.lastFailure})`,
      }
    }
  }
}

function applyMigrations(db: Db): void {
  withMigrationsFolder({ journal, migrationSql }, (folder) =>
    migrate(db, { migrationsFolder: folder }),
  )
}
