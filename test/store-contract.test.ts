import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { SQL } from 'bun'
import { StoreError } from '../src/db/database.ts'
import { INDEXES, migrationsIndexSource } from '../src/db/gen-migrations.ts'
import { openPostgresStore, type PostgresStore } from '../src/store/postgres/postgres-store.ts'
import { openSqliteStore } from '../src/store/sqlite.ts'
import {
  type DocumentRecord,
  type SessionRecord,
  type Store,
  then,
  type WriteTransaction,
} from '../src/store/store.ts'
import type { EntryKind, StreamEntry } from '../src/streams/entry.ts'
import { eventually, freePort, tempDir, within } from './helpers.ts'
import { freshDatabase, requireServices } from './support/services.ts'

const root = join(import.meta.dir, '..')

/** A place a store lives (an SQLite file, a PostgreSQL database) that can be opened again. */
interface Location {
  open(): Promise<Store>
  remove(): Promise<void>
}

interface Subject {
  name: 'sqlite' | 'postgres'
  fresh(): Promise<Location>
  /** Makes countEntries exact: PostgreSQL's is the planner's estimate, refreshed by ANALYZE. */
  settleCounts(location: Location): Promise<void>
  /**
   * Whether closeNode ends only that node's sessions. The SQLite file is one
   * process's alone, so it ends every open one (also those of an older NODE_ID).
   */
  nodeScopedSessions: boolean
}

const sqlite: Subject = {
  name: 'sqlite',
  async fresh() {
    const dir = tempDir()
    const path = join(dir.path, 'store.db')
    return {
      open: async () => openSqliteStore(path),
      remove: async () => dir.remove(),
    }
  },
  settleCounts: async () => {},
  nodeScopedSessions: false,
}

const databaseUrls = new WeakMap<Location, string>()

const postgres: Subject = {
  name: 'postgres',
  async fresh() {
    const database = await freshDatabase()
    const location: Location = {
      open: () => openPostgresStore(database.url),
      remove: () => database.drop(),
    }
    databaseUrls.set(location, database.url)
    return location
  },
  async settleCounts(location) {
    await withSql(urlOf(location), (sql) => sql`ANALYZE stream_entries`)
  },
  nodeScopedSessions: true,
}

function urlOf(location: Location): string {
  const url = databaseUrls.get(location)
  if (url === undefined) throw new Error('not a PostgreSQL location')
  return url
}

/** A connection of the test's own to a PostgreSQL database (to look at it, or to act on it). */
async function withSql<T>(url: string, work: (sql: SQL) => Promise<T>): Promise<T> {
  const sql = new SQL(url, { max: 1 })
  try {
    return await work(sql)
  } finally {
    await sql.close()
  }
}

// Run by `bun run test` when PostgreSQL answers (it names this file otherwise).
await requireServices()

let names = 0
const unique = (prefix: string) => `${prefix}_${Date.now().toString(36)}_${++names}`

type NewEntry = Omit<StreamEntry, 'collection' | 'offset'>

const message = (payload: unknown, document?: string): NewEntry => ({
  kind: 'message',
  payload,
  source: 'server',
  createdAt: 1_000,
  ...(document === undefined ? {} : { document }),
})

/**
 * Appends entries after the collection's locked head, as the commit queue
 * does: the same code for both stores (`then` keeps SQLite synchronous).
 */
function append(
  store: Store,
  collection: string,
  items: readonly NewEntry[],
  documents: (entries: StreamEntry[]) => DocumentRecord[] = () => [],
): Promise<StreamEntry[]> {
  return Promise.resolve(
    store.transaction((tx) =>
      then(tx.lockHeads([collection]), (heads) => {
        const head = heads.get(collection) ?? 0
        const entries = items.map((item, i) => ({ ...item, collection, offset: head + 1 + i }))
        const plan = {
          heads: [{ collection, head: head + entries.length }],
          entries,
          documents: documents(entries),
        }
        return then(tx.write(plan), () => entries)
      }),
    ),
  )
}

/** A document's chain as the document writer builds it: each change points at the previous one. */
class Chain {
  v = 0
  lastOffset: number | null = null

  constructor(
    readonly collection: string,
    readonly id: string,
  ) {}

  /** Commits the next change (a create at v 0, ops after), with `others` entries around it. */
  async change(store: Store, others: NewEntry[] = []): Promise<StreamEntry> {
    const kind: EntryKind = this.v === 0 ? 'create' : 'op'
    const change: NewEntry = {
      document: this.id,
      v: this.v,
      kind,
      payload: kind === 'create' ? { type: 'json0', data: { n: 0 } } : [{ p: ['n'], na: 1 }],
      source: 'client',
      src: 'client-a',
      seq: this.v + 1,
      createdAt: 2_000 + this.v,
      ...(this.lastOffset === null ? {} : { prevOffset: this.lastOffset }),
    }
    const entries = await append(store, this.collection, [...others, change], (written) => {
      const last = written.at(-1) as StreamEntry
      return [
        {
          collection: this.collection,
          id: this.id,
          v: this.v + 1,
          type: 'json0',
          data: JSON.stringify({ n: this.v }),
          deleted: false,
          lastOffset: last.offset,
        },
      ]
    })
    const written = entries.at(-1) as StreamEntry
    this.v++
    this.lastOffset = written.offset
    return written
  }
}

/** Runs `work` in a transaction, turning a synchronous throw (SQLite) into a rejection. */
const transact = <T>(store: Store, work: (tx: WriteTransaction) => T | Promise<T>) =>
  Promise.resolve().then(() => store.transaction(work))

const session = (fields: Partial<SessionRecord> & { connectionId: string }): SessionRecord => ({
  userId: 'user',
  sessionId: 'session',
  client: null,
  userAgent: 'agent/1',
  remoteAddress: '127.0.0.1',
  nodeId: 'node-a',
  connectedAt: 1_000,
  lastSeen: 1_000,
  endedAt: null,
  endReason: null,
  ...fields,
})

test('the embedded PostgreSQL migrations index lists every drizzle/postgres/*.sql', async () => {
  const committed = await Bun.file(join(root, 'src/store/postgres/migrations.gen.ts')).text()
  const postgres = INDEXES[1]
  expect(committed).toBe(migrationsIndexSource(join(root, postgres.migrations), postgres.from))
})

for (const subject of [sqlite, postgres]) {
  describe(`store contract: ${subject.name}`, () => {
    let location: Location
    let store: Store

    beforeAll(async () => {
      location = await subject.fresh()
      store = await location.open()
    })

    afterAll(async () => {
      await store?.close()
      await location?.remove()
    })

    test('kind, location, and an 8-hex epoch that reopening keeps', async () => {
      expect(store.kind).toBe(subject.name)
      expect(store.epoch).toMatch(/^[0-9a-f]{8}$/)
      expect(store.location.length).toBeGreaterThan(0)
      const other = await subject.fresh()
      try {
        const first = await other.open()
        const epoch = first.epoch
        await first.close()
        const again = await other.open()
        expect(again.epoch).toBe(epoch)
        expect(epoch).not.toBe(store.epoch)
        await again.close()
      } finally {
        await other.remove()
      }
    })

    test('appends through transaction are gap-free after the locked head', async () => {
      const collection = unique('gapless')
      expect(await store.head(collection)).toBe(0)
      expect(await store.firstHeld(collection)).toBeUndefined()
      for (let batch = 1; batch <= 4; batch++)
        await append(
          store,
          collection,
          Array.from({ length: batch }, (_, i) => message({ batch, i })),
        )
      expect(await store.head(collection)).toBe(10)
      expect(await store.firstHeld(collection)).toBe(1)
      const all = await store.readRange(collection, 0, 10, 100)
      expect(all.map((e) => e.offset)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
      expect(all[9]).toEqual({
        collection,
        offset: 10,
        kind: 'message',
        payload: { batch: 4, i: 3 },
        source: 'server',
        createdAt: 1_000,
      })
      const heads = await store.transaction((tx) => tx.lockHeads([collection, unique('new')]))
      expect([...heads.values()].sort((a, b) => a - b)).toEqual([0, 10])
      expect(heads.get(collection)).toBe(10)
      expect(await store.collections()).toContainEqual({ collection, head: 10 })
    })

    test('an empty plan and a plan of heads alone commit', async () => {
      const collection = unique('plans')
      await store.transaction((tx) => tx.write({ heads: [], entries: [], documents: [] }))
      await store.transaction((tx) =>
        tx.write({ heads: [{ collection, head: 7 }], entries: [], documents: [] }),
      )
      expect(await store.head(collection)).toBe(7)
      expect(await store.readRange(collection, 0, 100, 100)).toEqual([])
    })

    test('readRange, readDocumentRange and history keep their bounds and limits', async () => {
      const collection = unique('ranges')
      const items: NewEntry[] = []
      for (let i = 1; i <= 9; i++) items.push(message({ i }, i % 3 === 0 ? 'doc' : undefined))
      await append(store, collection, items)
      const offsets = (entries: StreamEntry[]) => entries.map((e) => e.offset)
      expect(offsets(await store.readRange(collection, 2, 6, 100))).toEqual([3, 4, 5, 6])
      expect(offsets(await store.readRange(collection, 2, 6, 2))).toEqual([3, 4])
      expect(offsets(await store.readRange(collection, 9, 20, 100))).toEqual([])
      expect(offsets(await store.readDocumentRange(collection, 'doc', 0, 9, 100))).toEqual([
        3, 6, 9,
      ])
      expect(offsets(await store.readDocumentRange(collection, 'doc', 3, 8, 100))).toEqual([6])
      expect(offsets(await store.readDocumentRange(collection, 'doc', 0, 9, 1))).toEqual([3])
      expect(offsets(await store.history(collection, undefined, 7, 100))).toEqual([8, 9])
      expect(offsets(await store.history(collection, undefined, 0, 3))).toEqual([1, 2, 3])
      expect(offsets(await store.history(collection, 'doc', 3, 100))).toEqual([6, 9])
      expect(offsets(await store.history(collection, 'doc', 0, 1))).toEqual([3])
      expect(offsets(await store.history(collection, 'other', 0, 100))).toEqual([])
      const [doc] = await store.readDocumentRange(collection, 'doc', 0, 3, 1)
      expect(doc).toEqual({
        collection,
        offset: 3,
        document: 'doc',
        kind: 'message',
        payload: { i: 3 },
        source: 'server',
        createdAt: 1_000,
      })
    })

    test('changesBack and chainLinks walk a document chain, and stop where pruning cut it', async () => {
      const collection = unique('chain')
      const chain = new Chain(collection, 'doc')
      const other = new Chain(collection, 'other')
      const changes: StreamEntry[] = []
      for (let v = 0; v < 5; v++) {
        changes.push(await chain.change(store, [message({ v }, 'doc')]))
        await other.change(store)
      }
      expect(changes.map((c) => c.v)).toEqual([0, 1, 2, 3, 4])
      expect(changes[2]).toEqual({
        collection,
        offset: changes[2]?.offset as number,
        document: 'doc',
        v: 2,
        kind: 'op',
        payload: [{ p: ['n'], na: 1 }],
        source: 'client',
        src: 'client-a',
        seq: 3,
        createdAt: 2_002,
        prevOffset: changes[1]?.offset as number,
      })
      const back = (fromV: number) =>
        store.transaction((tx) => tx.changesBack(collection, chain.lastOffset, fromV))
      expect(await back(2)).toEqual(changes.slice(2))
      expect(await back(0)).toEqual(changes)
      expect(await back(5)).toEqual([])
      expect(await store.transaction((tx) => tx.changesBack(collection, null, 0))).toEqual([])

      const link = (c: StreamEntry) => ({
        offset: c.offset,
        v: c.v ?? null,
        prevOffset: c.prevOffset ?? null,
      })
      const newestFirst = [...changes].reverse().map(link)
      // Down to fromV, plus the first link below it.
      expect(await store.chainLinks(collection, chain.lastOffset, 2)).toEqual(
        newestFirst.slice(0, 4),
      )
      expect(await store.chainLinks(collection, chain.lastOffset, 0)).toEqual(newestFirst)
      expect(await store.chainLinks(collection, chain.lastOffset, 9)).toEqual(
        newestFirst.slice(0, 1),
      )
      expect(await store.chainLinks(collection, null, 0)).toEqual([])

      // Retention takes everything before v 2's change.
      const cut = (changes[2]?.offset as number) - 1
      expect(await store.pruneUpTo(collection, cut, 1_000)).toBe(cut)
      expect(await back(0)).toEqual(changes.slice(2))
      expect(await store.chainLinks(collection, chain.lastOffset, 0)).toEqual(
        newestFirst.slice(0, 3),
      )
    })

    test('documents are written, read by key, and listed without deleted ones', async () => {
      const collection = unique('docs')
      const record = (id: string, fields: Partial<DocumentRecord> = {}): DocumentRecord => ({
        collection,
        id,
        v: 1,
        type: 'json0',
        data: JSON.stringify({ id }),
        deleted: false,
        lastOffset: 1,
        ...fields,
      })
      // Ids compare byte by byte on both stores ('B' < '_' < 'a').
      const written = [
        record('a'),
        record('B', { v: 3 }),
        record('_external', { type: null, data: null, lastOffset: null }),
        record('gone', { v: 2, type: null, data: null, deleted: true }),
      ]
      await append(store, collection, [message('x')], () => written)
      expect(await store.document(collection, 'B')).toEqual(written[1] as DocumentRecord)
      expect(await store.document(collection, '_external')).toEqual(written[2] as DocumentRecord)
      expect(await store.document(collection, 'gone')).toEqual(written[3] as DocumentRecord)
      expect(await store.document(collection, 'never')).toBeUndefined()
      const ids = (records: DocumentRecord[]) => records.map((r) => r.id)
      expect(ids(await store.listDocuments(collection, undefined, 100))).toEqual([
        'B',
        '_external',
        'a',
      ])
      expect(await store.listDocuments(collection, undefined, 1)).toEqual([
        written[1] as DocumentRecord,
      ])
      expect(ids(await store.listDocuments(collection, ['a', 'gone', 'never'], 100))).toEqual(['a'])
      expect(await store.listDocuments(collection, [], 100)).toEqual([])
      expect(await store.listDocuments(unique('empty'), undefined, 100)).toEqual([])

      // A later write replaces the whole state.
      const updated = record('a', { v: 2, data: '{"id":"a","n":1}', lastOffset: 2 })
      await append(store, collection, [message('y')], () => [updated])
      const elsewhere = unique('docs')
      await append(store, elsewhere, [message('z')], () => [
        { ...record('a'), collection: elsewhere },
      ])
      const found = await store.transaction((tx) =>
        tx.documents([
          { collection, id: 'a' },
          { collection, id: 'never' },
          { collection: elsewhere, id: 'a' },
          { collection, id: 'gone' },
        ]),
      )
      const byKey = (r: DocumentRecord) => `${r.collection}/${r.id}`
      expect([...found].sort((x, y) => byKey(x).localeCompare(byKey(y)))).toEqual(
        [updated, written[3] as DocumentRecord, { ...record('a'), collection: elsewhere }].sort(
          (x, y) => byKey(x).localeCompare(byKey(y)),
        ),
      )
      expect(await store.transaction((tx) => tx.documents([]))).toEqual([])
    })

    test('changedDocuments names the documents changed in a range', async () => {
      const collection = unique('changed')
      const a = new Chain(collection, 'a')
      const b = new Chain(collection, 'b')
      await a.change(store) // 1
      await b.change(store, [message('collection-wide')]) // 2, 3
      await a.change(store) // 4
      const changed = (after: number, until: number) =>
        store.transaction((tx) => tx.changedDocuments(collection, after, until))
      expect([...((await changed(0, 4)) ?? [])].sort()).toEqual(['a', 'b'])
      expect(await changed(1, 3)).toEqual(['b'])
      expect(await changed(3, 4)).toEqual(['a'])
      expect(await changed(4, 10)).toEqual([])
      // Once retention removed part of a range, it cannot be told: undefined.
      await store.pruneUpTo(collection, 2, 100)
      expect(await changed(0, 4)).toBeUndefined()
      expect(await changed(1, 4)).toBeUndefined()
      expect([...((await changed(2, 4)) ?? [])].sort()).toEqual(['a', 'b'])
    })

    test('a transaction whose work throws leaves nothing behind', async () => {
      const collection = unique('rollback')
      const failure = new Error('the batch failed')
      const attempt = transact(store, (tx) =>
        then(tx.lockHeads([collection]), () =>
          then(
            tx.write({
              heads: [{ collection, head: 1 }],
              entries: [{ ...message('lost'), collection, offset: 1 }],
              documents: [
                {
                  collection,
                  id: 'doc',
                  v: 1,
                  type: 'json0',
                  data: '{}',
                  deleted: false,
                  lastOffset: 1,
                },
              ],
            }),
            () => {
              throw failure
            },
          ),
        ),
      )
      await expect(attempt).rejects.toBe(failure)
      await attempt.catch(() => {})
      expect(store.isUnavailable(failure)).toBe(false)
      expect(await store.head(collection)).toBe(0)
      expect(await store.readRange(collection, 0, 10, 10)).toEqual([])
      expect(await store.document(collection, 'doc')).toBeUndefined()
      const collections = await store.collections()
      expect(collections.some((c) => c.collection === collection)).toBe(false)
      // The store takes the next transaction.
      await append(store, collection, [message('kept')])
      expect(await store.head(collection)).toBe(1)
    })

    test('a statement that fails (an offset written twice) rolls back and is not unavailability', async () => {
      const collection = unique('duplicate')
      await append(store, collection, [message(1), message(2)])
      const attempt = transact(store, (tx) =>
        tx.write({
          heads: [{ collection, head: 3 }],
          entries: [
            { ...message(3), collection, offset: 3 },
            { ...message('again'), collection, offset: 2 },
          ],
          documents: [],
        }),
      )
      const error = await attempt.then(
        () => undefined,
        (reason: unknown) => reason,
      )
      expect(error).toBeInstanceOf(Error)
      expect(store.isUnavailable(error)).toBe(false)
      expect(await store.head(collection)).toBe(2)
      expect((await store.readRange(collection, 0, 10, 10)).map((e) => e.payload)).toEqual([1, 2])
    })

    test('pruneUpTo deletes the oldest entries up to an offset, a batch at a time', async () => {
      const collection = unique('prune')
      await append(
        store,
        collection,
        Array.from({ length: 10 }, (_, i) => message(i)),
      )
      expect(await store.pruneUpTo(collection, 6, 4)).toBe(4)
      expect(await store.firstHeld(collection)).toBe(5)
      expect(await store.pruneUpTo(collection, 6, 4)).toBe(2)
      expect(await store.firstHeld(collection)).toBe(7)
      expect(await store.pruneUpTo(collection, 6, 4)).toBe(0)
      expect(await store.pruneUpTo(unique('none'), 6, 4)).toBe(0)
      // Heads outlive pruned entries, so offsets never repeat.
      expect(await store.pruneUpTo(collection, 100, 100)).toBe(4)
      expect(await store.firstHeld(collection)).toBeUndefined()
      expect(await store.head(collection)).toBe(10)
      const [next] = await append(store, collection, [message('next')])
      expect(next?.offset).toBe(11)
    })

    test('pruneOlderPrefix never deletes past a younger entry', async () => {
      const collection = unique('age')
      const at = (createdAt: number): NewEntry => ({ ...message(createdAt), createdAt })
      // A clock stepped back wrote 50 after 400: only offsets 1-2 may go before 250.
      await append(store, collection, [at(100), at(200), at(400), at(50), at(300)])
      expect(await store.pruneOlderPrefix(collection, 250, 1)).toBe(1)
      expect(await store.firstHeld(collection)).toBe(2)
      expect(await store.pruneOlderPrefix(collection, 250, 100)).toBe(1)
      expect(await store.firstHeld(collection)).toBe(3)
      expect(await store.pruneOlderPrefix(collection, 250, 100)).toBe(0)
      expect(await store.pruneOlderPrefix(collection, 1_000, 2)).toBe(2)
      expect(await store.firstHeld(collection)).toBe(5)
      expect(await store.pruneOlderPrefix(collection, 1_000, 100)).toBe(1)
      expect(await store.firstHeld(collection)).toBeUndefined()
      expect(await store.pruneOlderPrefix(collection, 1_000, 100)).toBe(0)
    })

    test('countEntries counts what is held', async () => {
      const other = await subject.fresh()
      const counted = await other.open()
      try {
        await append(counted, unique('count'), [message(1), message(2), message(3)])
        await append(counted, unique('count'), [message(4), message(5)])
        await subject.settleCounts(other)
        expect(await counted.countEntries()).toBe(5)
      } finally {
        await counted.close()
        await other.remove()
      }
    })

    test('sessions: opens, names, touches and ends apply in order; a user lists newest first', async () => {
      const user = unique('user')
      await store.sessions.apply([
        { kind: 'open', record: session({ connectionId: `${user}-1`, userId: user }) },
        { kind: 'name', connectionId: `${user}-1`, client: 'sdk/1' },
        // Opened twice in one batch (INSERT OR REPLACE on SQLite): the last one stands.
        {
          kind: 'open',
          record: session({ connectionId: `${user}-2`, userId: user, userAgent: 'stale/0' }),
        },
        {
          kind: 'open',
          record: session({
            connectionId: `${user}-2`,
            userId: user,
            connectedAt: 2_000,
            lastSeen: 2_000,
            nodeId: 'node-b',
          }),
        },
        { kind: 'touch', connectionId: `${user}-1`, lastSeen: 1_100 },
        { kind: 'touch', connectionId: `${user}-1`, lastSeen: 1_200 },
        {
          kind: 'open',
          record: session({
            connectionId: `${user}-3`,
            userId: user,
            connectedAt: 1_500,
            lastSeen: 1_500,
          }),
        },
      ])
      await store.sessions.apply([
        {
          kind: 'end',
          connectionId: `${user}-2`,
          endedAt: 2_500,
          reason: 'client_close',
          lastSeen: 2_400,
        },
        { kind: 'name', connectionId: `${user}-3`, client: 'sdk/3' },
        { kind: 'name', connectionId: `${user}-3`, client: null },
      ])
      expect(await store.sessions.list(user, 10)).toEqual([
        session({
          connectionId: `${user}-2`,
          userId: user,
          nodeId: 'node-b',
          connectedAt: 2_000,
          lastSeen: 2_400,
          endedAt: 2_500,
          endReason: 'client_close',
        }),
        session({ connectionId: `${user}-3`, userId: user, connectedAt: 1_500, lastSeen: 1_500 }),
        session({ connectionId: `${user}-1`, userId: user, client: 'sdk/1', lastSeen: 1_200 }),
      ])
      expect((await store.sessions.list(user, 1)).map((s) => s.connectionId)).toEqual([`${user}-2`])
      expect(await store.sessions.list(unique('nobody'), 10)).toEqual([])
      // Ended sessions are left for the next test's pruning.
      await store.sessions.apply([
        {
          kind: 'end',
          connectionId: `${user}-1`,
          endedAt: 3_000,
          reason: 'client_close',
          lastSeen: 1_200,
        },
        {
          kind: 'end',
          connectionId: `${user}-3`,
          endedAt: 3_100,
          reason: 'client_close',
          lastSeen: 1_500,
        },
      ])
      await store.sessions.apply([])
    })

    test('closeNode ends open sessions at their last_seen, leaving ended ones', async () => {
      const user = unique('user')
      const id = (n: number) => `${user}-${n}`
      await store.sessions.apply([
        {
          kind: 'open',
          record: session({ connectionId: id(1), userId: user, lastSeen: 1_300, nodeId: 'lost' }),
        },
        {
          kind: 'open',
          record: session({ connectionId: id(2), userId: user, connectedAt: 900, nodeId: 'lost' }),
        },
        { kind: 'end', connectionId: id(2), endedAt: 950, reason: 'client_close', lastSeen: 940 },
        {
          kind: 'open',
          record: session({
            connectionId: id(3),
            userId: user,
            connectedAt: 800,
            lastSeen: 1_400,
            nodeId: 'alive',
          }),
        },
      ])
      const closed = await store.sessions.closeNode('lost', 'node_lost')
      const byId = new Map((await store.sessions.list(user, 10)).map((s) => [s.connectionId, s]))
      expect(byId.get(id(1))).toMatchObject({ endedAt: 1_300, endReason: 'node_lost' })
      expect(byId.get(id(2))).toMatchObject({
        endedAt: 950,
        endReason: 'client_close',
        lastSeen: 940,
      })
      if (subject.nodeScopedSessions) {
        expect(closed).toBe(1)
        expect(byId.get(id(3))).toMatchObject({ endedAt: null, endReason: null })
        expect(await store.sessions.closeNode('alive', 'node_lost')).toBe(1)
      } else {
        expect(closed).toBe(2)
      }
      expect(byId.size).toBe(3)
      expect(await store.sessions.closeNode('lost', 'node_lost')).toBe(0)
    })

    test('pruneEnded and pruneOldest delete ended sessions, oldest end first, never live ones', async () => {
      // Everything earlier tests left has ended by now; a live one joins.
      const user = unique('user')
      await store.sessions.apply([
        {
          kind: 'open',
          record: session({ connectionId: `${user}-live`, userId: user, connectedAt: 10 }),
        },
        {
          kind: 'open',
          record: session({ connectionId: `${user}-old`, userId: user, connectedAt: 11 }),
        },
        {
          kind: 'end',
          connectionId: `${user}-old`,
          endedAt: 20,
          reason: 'client_close',
          lastSeen: 15,
        },
      ])
      const total = await store.sessions.count()
      expect(total).toBeGreaterThan(3)
      expect(await store.sessions.pruneEnded(20, 100)).toBe(0)
      expect(await store.sessions.pruneEnded(21, 100)).toBe(1)
      expect(await store.sessions.count()).toBe(total - 1)
      expect(await store.sessions.pruneEnded(10_000, 1)).toBe(1)
      expect(await store.sessions.pruneOldest(2)).toBe(2)
      expect(await store.sessions.count()).toBe(total - 4)
      expect(await store.sessions.pruneOldest(1_000)).toBe(total - 5)
      expect(await store.sessions.count()).toBe(1)
      expect((await store.sessions.list(user, 10)).map((s) => s.connectionId)).toEqual([
        `${user}-live`,
      ])
      expect(await store.sessions.pruneOldest(1_000)).toBe(0)
    })

    test('is ready and writable', async () => {
      expect(await store.check()).toEqual({ ok: true })
      expect(store.health.writable).toBe(true)
      expect(store.health.failures).toBe(0)
      expect(store.isUnavailable(new Error('a bug'))).toBe(false)
      expect(store.isUnavailable('not an error')).toBe(false)
    })
  })
}

describe('PostgreSQL store in a cluster', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>
  let stores: PostgresStore[] = []

  beforeAll(async () => {
    database = await freshDatabase()
    // Three processes starting together on a new database: migrations and epoch must not race.
    stores = await Promise.all([1, 2, 3].map(() => openPostgresStore(database.url)))
  })

  afterAll(async () => {
    for (const store of stores) await store.close()
    await database?.drop()
  })

  const at = (i: number) => stores[i] as PostgresStore

  test('processes started together agree on the epoch; migrations ran once', async () => {
    expect(new Set(stores.map((s) => s.epoch)).size).toBe(1)
    const journal = require(join(root, 'drizzle/postgres/meta/_journal.json')) as {
      entries: unknown[]
    }
    const applied = await withSql(
      database.url,
      (sql) => sql`SELECT count(*)::int AS n FROM drizzle.__drizzle_migrations`,
    )
    expect(applied[0].n).toBe(journal.entries.length)
    expect(at(0).location).toBe(database.url)
  })

  test('concurrent commits from three processes to one collection never share an offset', async () => {
    const collection = unique('contended')
    const seen: number[] = []
    const commits = 30
    const perCommit = 5
    await Promise.all(
      [0, 1, 2].map(async (writer) => {
        for (let i = 0; i < commits; i++)
          await at(writer).transaction(async (tx) => {
            const head = (await tx.lockHeads([collection])).get(collection) ?? 0
            seen.push(head)
            const entries = Array.from({ length: perCommit }, (_, k) => ({
              ...message({ writer, i, k }),
              collection,
              offset: head + 1 + k,
            }))
            await tx.write({
              heads: [{ collection, head: head + perCommit }],
              entries,
              documents: [],
            })
          })
      }),
    )
    const total = 3 * commits * perCommit
    // Every commit saw the head the one before it left, whichever process made it.
    expect(seen.sort((a, b) => a - b)).toEqual(
      Array.from({ length: 3 * commits }, (_, i) => i * perCommit),
    )
    const entries = await at(0).readRange(collection, 0, total, total + 1)
    expect(entries.map((e) => e.offset)).toEqual(Array.from({ length: total }, (_, i) => i + 1))
    for (const writer of [0, 1, 2])
      expect(
        entries.filter((e) => (e.payload as { writer: number }).writer === writer),
      ).toHaveLength(commits * perCommit)
    expect(await at(1).head(collection)).toBe(total)
  })

  test("lockHeads waits for the other process's transaction and then sees its head", async () => {
    const collection = unique('serialised')
    await append(at(0), collection, [message('first')])
    let inside!: () => void
    const entered = new Promise<void>((resolve) => {
      inside = resolve
    })
    let finish!: () => void
    const finishing = new Promise<void>((resolve) => {
      finish = resolve
    })
    const first = at(0).transaction(async (tx) => {
      const head = (await tx.lockHeads([collection])).get(collection) ?? 0
      inside()
      await finishing
      await tx.write({
        heads: [{ collection, head: head + 2 }],
        entries: [
          { ...message('a'), collection, offset: head + 1 },
          { ...message('b'), collection, offset: head + 2 },
        ],
        documents: [],
      })
      return head
    })
    await entered
    const second = at(1).transaction((tx) => tx.lockHeads([collection]))
    // The second one is blocked on the row lock until the first commits.
    await eventually(async () => {
      const rows = await withSql(
        database.url,
        (sql) => sql`SELECT count(*)::int AS n FROM pg_stat_activity
          WHERE datname = ${database.name} AND wait_event_type = 'Lock'`,
      )
      expect(rows[0].n).toBe(1)
    })
    finish()
    expect(await first).toBe(1)
    expect((await within(second, 5_000, 'second lockHeads')).get(collection)).toBe(3)
  })

  test('queries beyond the pool size wait for a connection instead of pipelining (oven-sh/bun #33627)', async () => {
    const store = await openPostgresStore(database.url, undefined, { max: 1 })
    try {
      const collection = unique('gated')
      await append(store, collection, [message('a'), message('b', 'doc')])
      // Two statements prepared on the one connection; then one it has not seen is started
      // between them: pipelined, Bun 1.3.14 gives it [{}] and the connection hangs.
      await store.head(collection)
      await store.firstHeld(collection)
      const [head, range, first, documentRange] = await within(
        Promise.all([
          store.head(collection),
          store.readRange(collection, 0, 2, 10),
          store.firstHeld(collection),
          store.readDocumentRange(collection, 'doc', 0, 2, 10),
        ]),
        3_000,
        'reads on a one-connection pool',
      )
      expect(head).toBe(2)
      expect(range.map((e) => e.payload)).toEqual(['a', 'b'])
      expect(first).toBe(1)
      expect(documentRange.map((e) => e.offset)).toEqual([2])
    } finally {
      await store.close()
    }
  })

  test('a connection lost in a transaction is unavailability; check probes a write and recovers', async () => {
    const store = await openPostgresStore(database.url, undefined, { max: 2 })
    try {
      const collection = unique('lost')
      let inside!: () => void
      const entered = new Promise<void>((resolve) => {
        inside = resolve
      })
      let resume!: () => void
      const resuming = new Promise<void>((resolve) => {
        resume = resolve
      })
      const attempt = store.transaction(async (tx) => {
        await tx.lockHeads([collection])
        inside()
        await resuming
        await tx.write({
          heads: [{ collection, head: 1 }],
          entries: [{ ...message('lost'), collection, offset: 1 }],
          documents: [],
        })
      })
      await entered
      const terminated = await withSql(
        database.url,
        (sql) => sql`SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity
          WHERE datname = ${database.name} AND state = 'idle in transaction'`,
      )
      expect(terminated).toHaveLength(1)
      resume()
      const error = await within(attempt, 5_000, 'the broken transaction').then(
        () => undefined,
        (reason: unknown) => reason,
      )
      expect(error).toBeInstanceOf(Error)
      expect(store.isUnavailable(error)).toBe(true)
      expect(store.health).toMatchObject({ failures: 1, writable: false })
      expect(await store.check()).toEqual({ ok: true })
      expect(store.health.writable).toBe(true)
      expect(await store.head(collection)).toBe(0)
    } finally {
      await store.close()
    }
  })

  test('after PostgreSQL ends every connection (as a restart does), the store works again', async () => {
    const store = await openPostgresStore(database.url, undefined, { max: 2, transactions: 2 })
    try {
      const collection = unique('restart')
      await append(store, collection, [message(1)])
      await Promise.all([store.head(collection), store.firstHeld(collection)])
      const ended = await withSql(
        database.url,
        (sql) => sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = ${database.name} AND pid <> pg_backend_pid()`,
      )
      expect(ended.length).toBeGreaterThanOrEqual(3)
      // The other stores of this database were ended as well; this one must reconnect.
      await eventually(async () => expect(await store.head(collection)).toBe(1))
      await eventually(() => append(store, collection, [message(2)]))
      expect(await store.head(collection)).toBe(2)
      expect(await store.check()).toEqual({ ok: true })
    } finally {
      await store.close()
    }
  })

  test('isUnavailable: true for a refused connection and a shutdown, false for a bad statement', async () => {
    const refused = new SQL(`postgres://postgres@127.0.0.1:${freePort()}/x`, {
      max: 1,
      connectionTimeout: 1,
    })
    const error = await refused`SELECT 1`.then(
      () => undefined,
      (reason: unknown) => reason,
    )
    await refused.close()
    expect(at(0).isUnavailable(error)).toBe(true)
    const syntax = await withSql(database.url, (sql) =>
      sql`SELECT nonsense FROM nowhere`.then(
        () => undefined,
        (reason: unknown) => reason,
      ),
    )
    expect(at(0).isUnavailable(syntax)).toBe(false)
    const serialization = await withSql(database.url, (sql) =>
      sql`DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$`.then(
        () => undefined,
        (reason: unknown) => reason,
      ),
    )
    expect(at(0).isUnavailable(serialization)).toBe(true)
    const shutdown = await withSql(database.url, (sql) =>
      sql`DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '57P01'; END $$`.then(
        () => undefined,
        (reason: unknown) => reason,
      ),
    )
    expect(at(0).isUnavailable(shutdown)).toBe(true)
  })

  test('a store that cannot connect, or a URL that is not PostgreSQL, fails with a StoreError naming DATABASE_URL', async () => {
    const refusedUrl = `postgres://postgres:sekret@127.0.0.1:${freePort()}/x`
    for (const url of [refusedUrl, 'not a url', 'mysql://127.0.0.1/x']) {
      const error = await openPostgresStore(url).then(
        () => undefined,
        (reason: unknown) => reason,
      )
      expect(error).toBeInstanceOf(StoreError)
      expect((error as Error).message).toContain('DATABASE_URL')
      expect((error as Error).message).not.toContain('sekret')
    }
    const missing = await openPostgresStore(`${database.url}_missing`).then(
      () => undefined,
      (reason: unknown) => reason,
    )
    expect((missing as Error).message).toContain('DATABASE_URL')
    expect((missing as Error).message).toContain('does not exist')
  })

  test('check reports PostgreSQL and the error once the pool is gone', async () => {
    const store = await openPostgresStore(database.url, undefined, { checkTimeoutMs: 1_000 })
    await store.close()
    const readiness = await store.check()
    expect(readiness.ok).toBe(false)
    expect(readiness.ok === false && readiness.reason).toContain('PostgreSQL at')
  })
})
