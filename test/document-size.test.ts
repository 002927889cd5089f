import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { type as json0 } from 'ot-json0'
import { MemoryBroker } from '../src/broker/memory-broker.ts'
import { ConfigError, loadConfig } from '../src/config.ts'
import { DocumentStore } from '../src/documents/document-store.ts'
import {
  Documents,
  type Snapshot,
  type SubmitRequest,
  type SubmitResult,
} from '../src/documents/documents.ts'
import { createLogger } from '../src/observability/logger.ts'
import type { ProtocolError } from '../src/protocol/errors.ts'
import { openSqliteStore } from '../src/store/sqlite.ts'
import { CommitQueue } from '../src/streams/commit-queue.ts'
import { StreamStore } from '../src/streams/stream-store.ts'
import {
  getJson,
  postJson,
  type ServerMessage,
  startServer,
  TestClient,
  type TestServer,
  tempDir,
  uniqueName,
} from './helpers.ts'

const LIMIT = 4096
/** The body limit that follows from LIMIT (MAX_DOCUMENT_SIZE + 64 KiB). */
const REQUEST_LIMIT = LIMIT + 64 * 1024

const bytes = (value: unknown) => Buffer.byteLength(JSON.stringify(value))

let server: TestServer
beforeAll(() => {
  server = startServer({ MAX_DOCUMENT_SIZE: String(LIMIT) })
})
afterAll(() => server.close())

const snapshot = async (target: { url: string }, collection: string, document: string) =>
  (await getJson(target, `/api/ws/documents/${collection}/${document}`)).body as {
    v: number
    data: unknown
  }

const history = async (target: { url: string }, collection: string) =>
  (await getJson(target, `/api/ws/history?channel=${collection}&limit=1000`)).body
    .messages as ServerMessage[]

/** The snapshot a document must have: its create, then every stored op, in offset order. */
function replay(messages: ServerMessage[], document: string): unknown {
  let data: unknown = null
  for (const message of messages) {
    if (message.document !== document) continue
    if (message.data.create) data = structuredClone(message.data.create.data)
    else if (message.data.op) data = json0.apply(data, message.data.op)
  }
  return data
}

/** A writer and a watcher of a new collection, with one document created from `data`. */
async function documentWith(data: unknown) {
  const writer = await TestClient.connect(server, { user_id: 'writer' })
  const watcher = await TestClient.connect(server, { user_id: 'watcher' })
  const collection = uniqueName('record')
  await watcher.ok({ type: 'subscribe', collection })
  await writer.ok({ type: 'submit', collection, document: 'doc', create: { data } })
  await watcher.next((m) => m.type === 'op' && m.data.create !== undefined)
  const submit = (op: unknown[]) =>
    writer.request({ type: 'submit', collection, document: 'doc', op })
  /** Nothing was stored or sent since the create: version, history, snapshot, watcher. */
  const unchanged = async (expected: unknown) => {
    await watcher.settle()
    expect(watcher.all((m) => m.type === 'op')).toHaveLength(1)
    expect(await history(server, collection)).toHaveLength(1)
    const now = await snapshot(server, collection, 'doc')
    expect(now.v).toBe(1)
    expect(now.data).toEqual(expected)
  }
  return {
    writer,
    watcher,
    collection,
    submit,
    unchanged,
    close: () => Promise.all([writer.close(), watcher.close()]),
  }
}

describe('MAX_DOCUMENT_SIZE', () => {
  test('is read like the other limits: a whole number of bytes from 1 KiB; bodies get 64 KiB more', () => {
    expect(loadConfig({})).toMatchObject({
      maxDocumentSize: 1024 * 1024,
      maxRequestSize: 1024 * 1024 + 64 * 1024,
    })
    expect(loadConfig({ MAX_DOCUMENT_SIZE: '4096' }).maxRequestSize).toBe(REQUEST_LIMIT)
    for (const bad of ['1000', '1.5k', '4096.5', 'lots'])
      expect(() => loadConfig({ MAX_DOCUMENT_SIZE: bad })).toThrow(ConfigError)
  })

  test('an op that would pass it is 413 on the socket: nothing stored, sent or applied', async () => {
    const initial = { title: 'x', list: ['a'] }
    const { submit, unchanged, close } = await documentWith(initial)
    const reply = await submit([{ p: ['list', 1], li: 'y'.repeat(LIMIT) }])
    expect(reply.type).toBe('error')
    expect(reply.error?.code).toBe(413)
    expect(reply.error?.details).toMatchObject({ field: 'op', limit: LIMIT })
    expect(reply.error?.details?.size).toBeGreaterThan(LIMIT)
    await unchanged(initial)
    await close()
  })

  test('the size is the UTF-8 bytes of the JSON text: exactly the limit passes, one byte more does not, also after a restart', async () => {
    const dir = tempDir()
    const env = { MAX_DOCUMENT_SIZE: String(LIMIT), DB_PATH: join(dir.path, 'size.db') }
    const first = startServer(env)
    const collection = uniqueName('record')
    let writer = await TestClient.connect(first)
    const data = { list: ['é"\n'] } // 2, 2 and 2 bytes in the JSON text
    await writer.ok({ type: 'submit', collection, document: 'doc', create: { data } })
    // Fill the list up to exactly LIMIT bytes: each string adds its JSON and a comma.
    const fill = 'ü'.repeat((LIMIT - bytes(data) - 3) / 2)
    const full = { list: ['é"\n', fill] }
    expect(bytes(full)).toBe(LIMIT)
    await writer.ok({
      type: 'submit',
      collection,
      document: 'doc',
      op: [{ p: ['list', 1], li: fill }],
    })
    const over = await writer.request({
      type: 'submit',
      collection,
      document: 'doc',
      op: [{ p: ['list', 0], li: '' }], // ,"" : 3 bytes
    })
    expect(over.error).toMatchObject({ code: 413, details: { limit: LIMIT, size: LIMIT + 3 } })
    // A component that shrinks it makes room within the same op.
    await writer.ok({
      type: 'submit',
      collection,
      document: 'doc',
      op: [
        { p: ['list', 0], ld: 'é"\n' },
        { p: ['list', 0], li: 'ab' },
      ],
    })
    await writer.close()
    await first.close()

    const second = startServer(env)
    writer = await TestClient.connect(second)
    expect((await snapshot(second, collection, 'doc')).data).toEqual({ list: ['ab', fill] })
    // The size came back from the stored text: LIMIT - 4 (-9 for the first string, +5 for 'ab').
    const again = await writer.request({
      type: 'submit',
      collection,
      document: 'doc',
      op: [{ p: ['list', 0], li: 'xyz' }], // "xyz", : 6 bytes
    })
    expect(again.error).toMatchObject({ code: 413, details: { size: LIMIT + 2 } })
    await writer.ok({
      type: 'submit',
      collection,
      document: 'doc',
      op: [{ p: ['list', 0], li: 'x' }],
    })
    expect(bytes((await snapshot(second, collection, 'doc')).data)).toBe(LIMIT)
    await writer.close()
    await second.close()
    dir.remove()
  })

  test('a create past it is 413 and creates nothing', async () => {
    const writer = await TestClient.connect(server)
    const collection = uniqueName('record')
    const reply = await writer.request({
      type: 'submit',
      collection,
      document: 'doc',
      create: { data: { text: 'z'.repeat(LIMIT) } },
    })
    expect(reply.error).toMatchObject({
      code: 413,
      details: { field: 'create.data', limit: LIMIT },
    })
    expect((await getJson(server, `/api/ws/documents/${collection}/doc`)).status).toBe(404)
    expect(await history(server, collection)).toHaveLength(0)
    await writer.close()
  })

  test('a REST publish that would pass it is 413 with a JSON body; nothing stored or sent', async () => {
    const initial = { list: [] }
    const { collection, unchanged, close } = await documentWith(initial)
    const reply = await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'doc',
      operation: [{ p: ['list', 0], li: 'r'.repeat(LIMIT) }],
    })
    expect(reply.status).toBe(413)
    expect(reply.body.error).toMatchObject({ code: 413, details: { field: 'op', limit: LIMIT } })
    await unchanged(initial)
    await close()
  })

  test('an oversize document (the limit was lowered) may shrink but not grow', async () => {
    const dir = tempDir()
    const path = join(dir.path, 'lowered.db')
    const first = startServer({ DB_PATH: path })
    const collection = uniqueName('record')
    const big = { a: 'a'.repeat(LIMIT), b: 'b'.repeat(LIMIT) }
    let writer = await TestClient.connect(first)
    await writer.ok({ type: 'submit', collection, document: 'doc', create: { data: big } })
    await writer.close()
    await first.close()

    const second = startServer({ DB_PATH: path, MAX_DOCUMENT_SIZE: String(LIMIT) })
    writer = await TestClient.connect(second)
    const submit = (op: unknown[]) =>
      writer.request({ type: 'submit', collection, document: 'doc', op })
    expect((await submit([{ p: ['c'], oi: 1 }])).error?.code).toBe(413)
    expect((await submit([{ p: ['a'], od: big.a }])).type).toBe('submit')
    expect((await snapshot(second, collection, 'doc')).data).toEqual({ b: big.b })
    await writer.close()
    await second.close()
    dir.remove()
  })
})

describe('ops apply in place and a refused op leaves no trace', () => {
  test('component 6 of 6 fails: 400 and the snapshot is as it was (key order too); later ops apply', async () => {
    const initial = { n: 1, s: 'str', list: [1, 2, 3], obj: { x: 1, y: [true] }, keep: 'k' }
    const { submit, unchanged, collection, close } = await documentWith(initial)
    const refused = await submit([
      { p: ['obj', 'z'], oi: { deep: [1] } },
      { p: ['list', 0], ld: 1 },
      { p: ['list', 1], lm: 0 },
      { p: ['obj', 'x'], od: 1, oi: 'replaced' },
      { p: ['n'], na: 5 },
      { p: ['s'], na: 1 }, // not a number
    ])
    expect(refused.error).toMatchObject({ code: 400, details: { field: 'op.5' } })
    await unchanged(initial)
    const text = JSON.stringify((await snapshot(server, collection, 'doc')).data)
    expect(text).toBe(JSON.stringify(initial))

    const applied = await submit([
      { p: ['list', 0], ld: 1 },
      { p: ['obj', 'y', 0], ld: true },
      { p: ['n'], na: 1 },
    ])
    expect(applied.data).toMatchObject({ v: 1 })
    expect((await snapshot(server, collection, 'doc')).data).toEqual({
      n: 2,
      s: 'str',
      list: [2, 3],
      obj: { x: 1, y: [] },
      keep: 'k',
    })
    await close()
  })

  test('an op refused for size after several components applied is undone, deletes included', async () => {
    const initial = { list: ['a', 'b', 'c'], obj: { x: 'x', y: 'y' }, t: 'text' }
    const { submit, unchanged, close } = await documentWith(initial)
    const refused = await submit([
      { p: ['list', 1], ld: 'b' },
      { p: ['obj', 'x'], od: 'x' },
      { p: ['list', 0], lm: 1 },
      { p: ['t'], t: 'text0', o: [{ p: 0, i: 'more ' }] },
      { p: ['obj', 'big'], oi: 'q'.repeat(LIMIT) },
    ])
    expect(refused.error?.code).toBe(413)
    await unchanged(initial)
    await close()
  })

  test('after a restart the stored snapshot equals the history replayed', async () => {
    const dir = tempDir()
    const env = { MAX_DOCUMENT_SIZE: String(LIMIT), DB_PATH: join(dir.path, 'replay.db') }
    const first = startServer(env)
    const collection = uniqueName('record')
    const writer = await TestClient.connect(first)
    const initial = { rows: [] as unknown[], meta: { count: 0 }, name: 'n' }
    await writer.ok({ type: 'submit', collection, document: 'doc', create: { data: initial } })
    const outcomes: number[] = []
    for (let i = 0; i < 60; i++) {
      const op =
        i % 5 === 4
          ? [
              { p: ['meta', 'count'], na: 1 },
              { p: ['rows', 0], li: 'w'.repeat(LIMIT) },
            ] // refused for size
          : i % 5 === 3
            ? [
                { p: ['meta', 'count'], na: 1 },
                { p: ['name'], na: 1 },
              ] // refused: name is a string
            : i % 5 === 2 && i > 10
              ? [{ p: ['rows', 0], ld: null }]
              : [
                  { p: ['rows', 0], li: { i, text: `row ${i} ✓` } },
                  { p: ['meta', 'count'], na: 1 },
                  { p: ['meta', `k${i}`], oi: i },
                ]
      const reply = await writer.request({ type: 'submit', collection, document: 'doc', op })
      outcomes.push(reply.type === 'error' ? (reply.error?.code ?? 0) : 200)
    }
    expect(outcomes.filter((code) => code === 413)).toHaveLength(12)
    expect(outcomes.filter((code) => code === 400)).toHaveLength(12)
    const live = await snapshot(first, collection, 'doc')
    await writer.close()
    await first.close()

    const second = startServer(env)
    const stored = await snapshot(second, collection, 'doc')
    expect(stored).toEqual(live)
    expect(stored.data).toEqual(replay(await history(second, collection), 'doc'))
    expect(stored.v).toBe(1 + outcomes.filter((code) => code === 200).length)
    await second.close()
    dir.remove()
  })
})

/** The documents layer on its own store, for batches the test puts together itself. */
function documentsOn(path: string, cacheBytes?: number) {
  const logger = createLogger({ logLevel: 'silent', logFormat: 'json' })
  const store = openSqliteStore(path, logger)
  const streams = new StreamStore(store)
  const documentStore = new DocumentStore(store, 10_000, cacheBytes)
  /** Payloads as fanned out, after their batch committed. */
  const sent: unknown[] = []
  const broker = new MemoryBroker(
    ({ entry }) => {
      sent.push(JSON.parse(JSON.stringify(entry.payload)))
      return 0
    },
    (collection) => streams.head(collection),
    logger,
  )
  const queue = new CommitQueue(store, streams, documentStore, broker, logger, {
    committed: () => {},
    fannedOut: () => {},
  })
  const documents = new Documents(queue, streams, documentStore, 1000, LIMIT, (collection) =>
    streams.head(collection),
  )
  /** Reads answer synchronously on SQLite. */
  const snapshot = (id: string) => documents.snapshot('record_t', id) as Snapshot
  const outcomes: Array<{ code: number; result?: SubmitResult }> = []
  /** Queues a write (nothing runs before `queue.flush()`); its outcome lands in `outcomes`. */
  const submit = (
    request: Omit<SubmitRequest, 'collection' | 'document' | 'source'> & { document?: string },
  ) => {
    const slot = outcomes.length
    outcomes.push({ code: 0 })
    documents.submit(
      { collection: 'record_t', document: 'doc', source: 'server', ...request },
      (error: ProtocolError | undefined, result) => {
        outcomes[slot] = error ? { code: error.code } : { code: 200, result }
      },
    )
  }
  return { store, queue, documents, submit, outcomes, sent, snapshot }
}

describe('batches', () => {
  test('refused jobs in a batch leave the jobs around them intact', () => {
    const dir = tempDir()
    const path = join(dir.path, 'batch.db')
    const first = documentsOn(path)
    first.submit({ create: { data: { list: [0], obj: { a: 1 } } } })
    first.submit({ op: [{ p: ['list', 1], li: 1 }] })
    first.submit({
      op: [
        { p: ['list', 0], ld: 0 },
        { p: ['obj', 'a'], od: 1 },
        { p: ['obj', 'b', 'c'], oi: 1 }, // no obj.b: 400
      ],
    })
    first.submit({
      op: [
        { p: ['obj', 'a'], od: 1 },
        { p: ['list', 0], li: 'l'.repeat(LIMIT) }, // 413
      ],
    })
    first.submit({ op: [{ p: ['list', 2], li: 2 }] })
    first.queue.flush()
    expect(first.outcomes.map((o) => o.code)).toEqual([200, 200, 400, 413, 200])
    // The create went out as it was submitted, though later ops of its batch changed the snapshot.
    expect(first.sent[0]).toEqual({ type: 'json0', data: { list: [0], obj: { a: 1 } } })
    const expected = { list: [0, 1, 2], obj: { a: 1 } }
    expect(first.snapshot('doc')).toEqual({ v: 3, data: expected })
    first.store.close()

    const second = documentsOn(path)
    expect(second.snapshot('doc')).toEqual({ v: 3, data: expected })
    second.store.close()
    dir.remove()
  })

  test('a batch that fails after ops applied in place rolls back to what is stored', () => {
    const dir = tempDir()
    const parts = documentsOn(join(dir.path, 'rollback.db'))
    parts.submit({ create: { data: { list: ['kept'], n: 1 } } })
    parts.queue.flush()
    parts.submit({ op: [{ p: ['list', 0], li: 'lost' }] })
    parts.submit({ op: [{ p: ['n'], na: 10 }] })
    parts.queue.submit(
      { collection: 'record_t' },
      () => {
        throw new Error('the store broke') // not a refusal: the whole batch rolls back
      },
      () => {},
    )
    parts.queue.flush()
    expect(parts.outcomes.map((o) => o.code)).toEqual([200, 500, 500])
    expect(parts.snapshot('doc')).toEqual({
      v: 1,
      data: { list: ['kept'], n: 1 },
    })
    parts.submit({ op: [{ p: ['list', 1], li: 'next' }] })
    parts.queue.flush()
    expect(parts.outcomes.at(-1)).toMatchObject({ code: 200, result: { v: 1 } })
    expect(parts.snapshot('doc').data).toEqual({
      list: ['kept', 'next'],
      n: 1,
    })
    parts.store.close()
    dir.remove()
  })
})

describe('the document cache', () => {
  test('is bounded by bytes too: past the budget the documents loaded first reload from the store', () => {
    const dir = tempDir()
    const parts = documentsOn(join(dir.path, 'cache.db'), 3000)
    const data = { text: 't'.repeat(2000) }
    parts.submit({ document: 'first', create: { data } })
    parts.queue.flush()
    parts.submit({ document: 'second', create: { data } })
    parts.queue.flush()
    // Changed behind the cache's back: only a document that was dropped shows it.
    parts.store.handle.sqlite.run(`UPDATE documents SET data = '{"changed":true}'`)
    expect(parts.snapshot('first').data).toEqual({ changed: true })
    expect(parts.snapshot('second').data).toEqual(data)
    parts.store.close()
    dir.remove()
  })
})

describe('REST request bodies', () => {
  const message = (size: number) => ({ channel: uniqueName('record'), message: 'm'.repeat(size) })

  test('a declared body past the limit is 413 with a JSON body, before it is read', async () => {
    const ok = await postJson(server, '/api/ws/broadcast/channel', message(60_000))
    expect(ok.status).toBe(200)
    const reply = await postJson(server, '/api/ws/broadcast/channel', message(REQUEST_LIMIT))
    expect(reply.status).toBe(413)
    expect(reply.body.error).toMatchObject({ code: 413, details: { limit: REQUEST_LIMIT } })
  })

  test('a chunked body (no Content-Length) is counted as it is read: 413 past the limit', async () => {
    const chunked = (body: unknown) => {
      const bytes = new TextEncoder().encode(JSON.stringify(body))
      return fetch(`${server.url}/api/ws/broadcast/channel`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: new ReadableStream({
          start(controller) {
            for (let at = 0; at < bytes.length; at += 16_384)
              controller.enqueue(bytes.subarray(at, at + 16_384))
            controller.close()
          },
        }),
      })
    }
    const ok = await chunked(message(60_000))
    expect(ok.status).toBe(200)
    expect(((await ok.json()) as { offset: number }).offset).toBe(1)
    const refused = await chunked(message(REQUEST_LIMIT * 4))
    expect(refused.status).toBe(413)
    expect(await refused.json()).toMatchObject({
      error: { code: 413, details: { limit: REQUEST_LIMIT } },
    })
  })
})
