import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { SQL } from 'bun'
import { freshDatabase, requireServices } from './support/services.ts'

/**
 * Bun 1.3.14's PostgreSQL client pipelines queries beyond its connections
 * onto a busy one, and writes an already-prepared statement ahead of a new
 * one queued before it while replies are matched in order: the new one
 * resolves with the other's rows (`[{}]`) and the connection hangs
 * (oven-sh/bun #33627). src/store/postgres/postgres-store.ts gates queries
 * to the pool size because of it. This test fails once a Bun upgrade fixes
 * the bug: the gate may then go.
 */

// Run by `bun run test` when PostgreSQL answers (it names this file otherwise).
await requireServices()

describe('Bun SQL pipelining (oven-sh/bun #33627)', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>

  beforeAll(async () => {
    database = await freshDatabase()
  })

  afterAll(async () => {
    await database?.drop()
  })

  test('a new statement queued between two prepared ones on one connection gets wrong rows', async () => {
    const sql = new SQL(database.url, { max: 1 })
    const busy = () => sql`SELECT ${1}::int AS busy`
    const prepared = (k: number) => sql`SELECT ${k}::int AS prepared`
    try {
      await busy()
      await prepared(0)
      // Each query starts when it is awaited; started in this order, all three are in flight.
      const first = busy().then((rows) => rows)
      const novel = sql.unsafe('SELECT $1::int AS novel', [7]).then((rows) => rows)
      const last = prepared(2).then((rows) => rows)
      // The wedged connection never answers these; closing it rejects them.
      first.catch(() => {})
      last.catch(() => {})
      expect(await novel).toEqual([{}]) // not [{ novel: 7 }]
    } finally {
      // A timeout of 0 would wait for the wedged query for ever.
      await sql.close({ timeout: 0.001 })
    }
  })
})
