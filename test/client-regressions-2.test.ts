/**
 * Regressions of the second client SDK review (issue 12): each test failed
 * (or hung) before its fix.
 */
import { afterAll, beforeAll, expect, test } from 'bun:test'
import { join } from 'node:path'
import { RealtimeClient } from '../src/client/index.ts'
import {
  getJson,
  outcome,
  postJson,
  spawnServer,
  startServer,
  type TestServer,
  tempDir,
  uniqueName,
  within,
} from './helpers.ts'

let server: TestServer
beforeAll(() => {
  server = startServer({ MAX_MESSAGE_SIZE: '8192' })
})
afterAll(() => server.close())

test('an in-flight change that a concurrent op turns into nothing is not resent as op: [] (no 400, no reset)', async () => {
  const dir = tempDir()
  const env = { DB_PATH: join(dir.path, 'emptied.db') }
  let first = await spawnServer(env)
  const port = String(first.port)
  // A reconnects only when told (connect()), B at once: B's delete lands first.
  const a = new RealtimeClient({ url: first.url, userId: 'a', reconnect: { initialDelay: 60_000 } })
  const b = new RealtimeClient({
    url: first.url,
    userId: 'b',
    reconnect: { initialDelay: 20, maxDelay: 100 },
  })
  try {
    const collection = uniqueName('record')
    const docA = a.doc<{ list: string[] }>(collection, 'd')
    const docB = b.doc<{ list: string[] }>(collection, 'd')
    await docA.subscribe()
    await docA.create({ list: ['x', 'y'] })
    await docB.subscribe()
    const resets: string[] = []
    docA.on('reset', (event) => resets.push(event.reason))
    // A's delete is sent to a server that never reads it: stopped, then killed.
    first.proc.kill('SIGSTOP')
    const deleted = outcome(docA.submit([{ p: ['list', 0], ld: 'x' }]))
    const inserted = outcome(docA.submit([{ p: ['list', 0], li: 'z' }]))
    first.proc.kill('SIGKILL')
    await first.exited
    first = await spawnServer({ ...env, SOCKET_PORT: port })
    await b.once('resynced')
    await docB.submit([{ p: ['list', 0], ld: 'x' }]) // the same element, meanwhile
    const resynced = a.once('resynced')
    a.connect()
    await resynced
    expect(await Promise.all([deleted, inserted])).toEqual(['ok', 'ok'])
    expect(resets).toEqual([])
    const stored = await getJson(first, `/api/ws/documents/${collection}/d`)
    expect(stored.body.data).toEqual({ list: ['z', 'y'] })
    expect(docA.data).toEqual(stored.body.data)
  } finally {
    a.close()
    b.close()
    first.proc.kill('SIGKILL')
    await first.exited
    dir.remove()
  }
}, 30_000)

const client = (options: { autoConnect?: boolean } = {}) =>
  new RealtimeClient({
    url: server.url,
    userId: uniqueName('user'),
    reconnect: { initialDelay: 20, maxDelay: 100 },
    ...options,
  })

test('message_too_big teaches the limit of the frame that was too big, not of the last one sent', async () => {
  const c = client()
  try {
    const doc = c.doc<Record<string, string>>(uniqueName('record'), 'd')
    await doc.subscribe()
    await doc.create({ s: '' })
    // Over the server's 8 KB, and a small frame right behind it.
    const big = outcome(doc.submit([{ p: ['s'], oi: 'x'.repeat(20_000), od: '' }]))
    const pinged = c.ping().catch(() => undefined)
    const resynced = c.once('resynced')
    await Promise.all([big, pinged, resynced])
    // The big change was refused (413) and the document reloaded: wait for it.
    while (!doc.loaded) await doc.once('load')
    expect(await outcome(doc.submit([{ p: ['t'], oi: 'y'.repeat(3000) }]))).toBe('ok')
  } finally {
    c.close()
  }
}, 20_000)

test('a document subscription held elsewhere keeps delivering ops after a Doc on it unsubscribes', async () => {
  const c = client()
  try {
    const collection = uniqueName('record')
    const held = c.subscribe(collection, { document: 'd' })
    await held.ready
    const doc = c.doc<{ n: number }>(collection, 'd')
    await doc.subscribe()
    await doc.create({ n: 0 })
    await doc.unsubscribe()
    const op = held.once('op')
    const published = await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'd',
      operation: [{ p: ['n'], na: 1 }],
    })
    expect(published.status).toBe(200)
    expect((await within(op, 3000, 'the op on the held subscription')).data.v).toBe(1)
  } finally {
    c.close()
  }
})

test('presence.set() after the channel was left rejects instead of hanging', async () => {
  const c = client()
  try {
    const presence = c.presence(uniqueName('record'))
    await presence.set({ a: 1 })
    await presence.unsubscribe()
    expect(await within(outcome(presence.set({ a: 2 })), 3000, 'set after leaving')).toBe('closed')
  } finally {
    c.close()
  }
})

test('a Doc subscribed from a connected listener loads its snapshot once and keeps a change made on load', async () => {
  const collection = uniqueName('record')
  const writer = client()
  const reader = client({ autoConnect: false })
  try {
    const written = writer.doc<{ n: number }>(collection, 'd')
    await written.subscribe()
    await written.create({ n: 0 })
    const queries = async () =>
      ((await getJson(server, '/api/ws/stats')).body.messages.in_by_type.query ?? 0) as number
    const before = await queries()
    const doc = reader.doc<{ n: number }>(collection, 'd')
    let subscribed: Promise<void> | undefined
    reader.on('connected', () => {
      subscribed = doc.subscribe()
    })
    let changed: Promise<string | number> | undefined
    doc.on('load', () => {
      changed ??= outcome(doc.submit([{ p: ['n'], na: 5 }]))
    })
    reader.connect()
    await reader.once('resynced')
    await subscribed
    expect(await changed).toBe('ok')
    await doc.whenNothingPending()
    expect(await queries()).toBe(before + 1)
    const snapshot = await reader.snapshot(collection, 'd')
    expect(snapshot.data).toEqual({ n: 5 })
    expect(doc.data).toEqual({ n: 5 })
  } finally {
    writer.close()
    reader.close()
  }
})

test('subscribe() on an old Doc while client.doc() gave another is refused; the other keeps following', async () => {
  const c = client()
  try {
    const collection = uniqueName('record')
    const old = c.doc<{ n: number }>(collection, 'd')
    await old.subscribe()
    await old.create({ n: 0 })
    await old.unsubscribe()
    const current = c.doc<{ n: number }>(collection, 'd')
    await current.subscribe()
    expect(await outcome(old.subscribe())).toBe('invalid_op')
    const op = current.once('op')
    await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'd',
      operation: [{ p: ['n'], na: 1 }],
    })
    await within(op, 3000, 'the op on the current Doc')
    expect(current.data).toEqual({ n: 1 })
    expect(await outcome(current.submit([{ p: ['n'], na: 1 }]))).toBe('ok')
    expect((await c.snapshot(collection, 'd')).data).toEqual({ n: 2 })
  } finally {
    c.close()
  }
})
