import { Database } from 'bun:sqlite'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { type BunSQLiteDatabase, drizzle } from 'drizzle-orm/bun-sqlite'
import { migrate } from 'drizzle-orm/bun-sqlite/migrator'
import { journal, migrationSql } from './migrations.gen.ts'
import * as schema from './schema.ts'

export type Db = BunSQLiteDatabase<typeof schema>

/** How long a write waits for a lock another process holds. */
export const BUSY_TIMEOUT_MS = 5000

export interface Store {
  /** Drizzle, for everything but the hot paths. */
  db: Db
  /** The raw handle, for prepared statements on hot paths and transactions. */
  sqlite: Database
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
 */
export function openStore(path: string): Store {
  let sqlite: Database
  try {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
    sqlite = new Database(path, { create: true, strict: true })
  } catch (error) {
    throw new StoreError(`cannot open database at ${path}: ${(error as Error).message}`)
  }
  try {
    sqlite.exec('PRAGMA journal_mode = WAL')
    sqlite.exec('PRAGMA synchronous = NORMAL')
    sqlite.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`)
    sqlite.exec('PRAGMA foreign_keys = ON')
    const db = drizzle(sqlite, { schema })
    applyMigrations(db)
    // Fails now, not at the first publish, when the file is read-only.
    sqlite.exec('BEGIN IMMEDIATE; COMMIT')
    return { db, sqlite, close: () => sqlite.close() }
  } catch (error) {
    sqlite.close()
    throw new StoreError(
      `database at ${path} is unusable (corrupt, not a database, or not writable): ${(error as Error).message}`,
    )
  }
}

/**
 * Drizzle's migrator reads a folder; the migrations are embedded in the
 * program (so the compiled binary has them), so they are laid out in a
 * temporary folder for it.
 */
function applyMigrations(db: Db): void {
  const folder = mkdtempSync(join(tmpdir(), 'teable-realtime-migrations-'))
  try {
    mkdirSync(join(folder, 'meta'))
    writeFileSync(join(folder, 'meta', '_journal.json'), JSON.stringify(journal))
    for (const [tag, sql] of Object.entries(migrationSql))
      writeFileSync(join(folder, `${tag}.sql`), sql)
    migrate(db, { migrationsFolder: folder })
  } finally {
    rmSync(folder, { recursive: true, force: true })
  }
}
