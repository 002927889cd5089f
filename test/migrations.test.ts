import { Database } from 'bun:sqlite'
import { expect, test } from 'bun:test'
import { join } from 'node:path'
import { openStore } from '../src/db/database.ts'
import { INDEXES, migrationsIndexSource } from '../src/db/gen-migrations.ts'
import { tempDir } from './helpers.ts'

const root = join(import.meta.dir, '..')

test('the embedded migrations index lists every drizzle/*.sql (run `bun run db:generate`)', async () => {
  const committed = await Bun.file(join(root, 'src/db/migrations.gen.ts')).text()
  const sqlite = INDEXES[0]
  expect(committed).toBe(migrationsIndexSource(join(root, sqlite.migrations), sqlite.from))
})

test('migrations apply once to a new database and are recorded', () => {
  const dir = tempDir()
  const path = join(dir.path, 'm.db')
  const first = openStore(path)
  expect(first.sqlite.query('PRAGMA journal_mode').get()).toEqual({ journal_mode: 'wal' })
  first.close() // leaves WAL mode to release its lock at once (src/db/database.ts)
  openStore(path).close() // a second start applies nothing twice
  const db = new Database(path)
  const applied = db.query('SELECT COUNT(*) AS n FROM __drizzle_migrations').get() as { n: number }
  const journal = require(join(root, 'drizzle/meta/_journal.json')) as { entries: unknown[] }
  expect(applied.n).toBe(journal.entries.length)
  const tables = db
    .query(
      "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_\\_%' ESCAPE '\\'",
    )
    .all() as Array<{ name: string; sql: string }>
  expect(tables.map((t) => t.name).sort()).toEqual([
    'documents',
    'intake_applied',
    'meta',
    'sessions',
    'stream_entries',
    'streams',
  ])
  expect(tables.find((t) => t.name === 'stream_entries')?.sql).toContain('WITHOUT ROWID')
  db.close()
  dir.remove()
})
