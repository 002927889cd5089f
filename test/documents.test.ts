import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import {
  getJson,
  postJson,
  startServerOnTestStore,
  TestClient,
  type TestServer,
  uniqueName,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore()
})
afterAll(() => server.close())

async function pair() {
  const writer = await TestClient.connect(server, { user_id: 'writer' })
  const watcher = await TestClient.connect(server, { user_id: 'watcher' })
  const collection = uniqueName('record')
  await watcher.ok({ type: 'subscribe', collection })
  return {
    writer,
    watcher,
    collection,
    close: () => Promise.all([writer.close(), watcher.close()]),
  }
}

const history = async (channel: string) =>
  (await getJson(server, `/api/ws/history?channel=${channel}&limit=1000`)).body

describe('create, op, del', () => {
  test('create then ops apply to the snapshot; others get each op, the submitter only acks', async () => {
    const { writer, watcher, collection, close } = await pair()
    const created = await writer.ok({
      type: 'submit',
      collection,
      document: 'rec1',
      create: { data: { fields: { name: 'a', n: 1, tags: ['x'] } } },
    })
    expect(created.data).toEqual({ v: 0, offset: 1 })
    expect(created.collection).toBe(collection)
    expect(created.document).toBe('rec1')

    const op = await writer.ok({
      type: 'submit',
      collection,
      document: 'rec1',
      v: 1,
      op: [
        { p: ['fields', 'name'], od: 'a', oi: 'b' },
        { p: ['fields', 'n'], na: 41 },
        { p: ['fields', 'tags', 1], li: 'y' },
      ],
    })
    expect(op.data).toEqual({ v: 1, offset: 2 })

    const seen = await watcher.collect(2, (m) => m.type === 'op')
    expect(seen[0]?.data).toMatchObject({
      create: { type: 'json0', data: { fields: { name: 'a' } } },
      v: 0,
      offset: 1,
      source: 'client',
    })
    expect(seen[1]?.data.op).toHaveLength(3)
    expect(seen[1]?.data).toMatchObject({ v: 1, offset: 2, source: 'client' })
    expect(typeof seen[1]?.data.epoch).toBe('string')

    const snapshot = { v: 2, data: { fields: { name: 'b', n: 42, tags: ['x', 'y'] } } }
    expect((await writer.ok({ type: 'query', collection, document: 'rec1' })).data).toEqual(
      snapshot,
    )
    expect((await getJson(server, `/api/ws/documents/${collection}/rec1`)).body).toEqual(snapshot)

    await writer.settle()
    expect(writer.all((m) => m.type === 'op')).toHaveLength(0)
    await close()
  })

  test('create on an existing document is 409; del clears it; ops after del are 404; it can be created again', async () => {
    const { writer, collection, close } = await pair()
    await writer.ok({ type: 'submit', collection, document: 'd', create: { data: { a: 1 } } })
    const again = await writer.request({
      type: 'submit',
      collection,
      document: 'd',
      create: { data: {} },
    })
    expect(again.error?.code).toBe(409)
    expect(again.error?.details?.v).toBe(1)

    expect(
      (await writer.ok({ type: 'submit', collection, document: 'd', v: 1, del: true })).data.v,
    ).toBe(1)
    expect((await writer.ok({ type: 'query', collection, document: 'd' })).data).toEqual({
      v: 2,
      data: null,
    })
    const afterDel = await writer.request({
      type: 'submit',
      collection,
      document: 'd',
      v: 2,
      op: [{ p: ['a'], oi: 2 }],
    })
    expect(afterDel.error?.code).toBe(404)
    const delAgain = await writer.request({ type: 'submit', collection, document: 'd', del: true })
    expect(delAgain.error?.code).toBe(404)

    await writer.ok({ type: 'submit', collection, document: 'd', create: { data: { b: 2 } } })
    expect((await writer.ok({ type: 'query', collection, document: 'd' })).data).toEqual({
      v: 3,
      data: { b: 2 },
    })
    await close()
  })

  test('a document never created here gets versions, history and fan-out, with data null', async () => {
    const { writer, watcher, collection, close } = await pair()
    const missing = await writer.request({ type: 'query', collection, document: 'ext' })
    expect(missing.error?.code).toBe(404)
    expect((await getJson(server, `/api/ws/documents/${collection}/ext`)).status).toBe(404)

    const first = await writer.ok({
      type: 'submit',
      collection,
      document: 'ext',
      v: 0,
      op: [{ p: ['fields', 'f'], oi: 1 }],
    })
    expect(first.data).toEqual({ v: 0, offset: 1 })
    const second = await writer.ok({
      type: 'submit',
      collection,
      document: 'ext',
      op: [{ p: ['fields', 'f'], na: 1 }],
    })
    expect(second.data).toEqual({ v: 1, offset: 2 })
    expect((await writer.ok({ type: 'query', collection, document: 'ext' })).data).toEqual({
      v: 2,
      data: null,
    })
    expect((await getJson(server, `/api/ws/documents/${collection}/ext`)).body).toEqual({
      v: 2,
      data: null,
    })
    expect((await watcher.collect(2, (m) => m.type === 'op')).map((m) => m.data.v)).toEqual([0, 1])
    await close()
  })

  test("the seed's {p, t, o} shorthand sets the value (json0 oi)", async () => {
    const { writer, watcher, collection, close } = await pair()
    await writer.ok({
      type: 'submit',
      collection,
      document: 'r',
      create: { data: { name: 'old' } },
    })
    await writer.ok({
      type: 'submit',
      collection,
      document: 'r',
      v: 1,
      op: [{ p: ['name'], t: 'string', o: 'new' }],
    })
    expect((await writer.ok({ type: 'query', collection, document: 'r' })).data.data).toEqual({
      name: 'new',
    })
    const ops = await watcher.collect(2, (m) => m.type === 'op')
    expect(ops[1]?.data.op).toEqual([{ p: ['name'], oi: 'new' }])
    await close()
  })

  test('`operation` is accepted as the name of the op', async () => {
    const { writer, collection, close } = await pair()
    const reply = await writer.ok({
      type: 'submit',
      collection,
      document: 'x',
      operation: [{ p: ['a'], oi: 1 }],
    })
    expect(reply.data.v).toBe(0)
    await close()
  })
})

describe('versions', () => {
  test('an op based on an older version is transformed against the ops it missed', async () => {
    const { writer, collection, close } = await pair()
    const other = await TestClient.connect(server)
    await writer.ok({
      type: 'submit',
      collection,
      document: 'l',
      create: { data: { items: ['a'] } },
    })
    // Both insert at the head, both based on v1.
    await other.ok({
      type: 'submit',
      collection,
      document: 'l',
      v: 1,
      op: [{ p: ['items', 0], li: 'from-other' }],
    })
    const late = await writer.ok({
      type: 'submit',
      collection,
      document: 'l',
      v: 1,
      op: [{ p: ['items', 0], li: 'from-writer' }],
    })
    expect(late.data.v).toBe(2)
    const { data } = (await writer.ok({ type: 'query', collection, document: 'l' })).data
    expect(data.items).toHaveLength(3)
    expect(data.items).toContain('from-other')
    expect(data.items).toContain('from-writer')
    expect(data.items[2]).toBe('a')
    await other.close()
    await close()
  })

  test('a version ahead of the document is 409 with the current v', async () => {
    const { writer, collection, close } = await pair()
    await writer.ok({ type: 'submit', collection, document: 'a', create: { data: {} } })
    const ahead = await writer.request({
      type: 'submit',
      collection,
      document: 'a',
      v: 5,
      op: [{ p: ['k'], oi: 1 }],
    })
    expect(ahead.type).toBe('error')
    expect(ahead.error?.code).toBe(409)
    expect(ahead.error?.details?.v).toBe(1)
    await close()
  })

  test('an op from before a create or del it missed is 409', async () => {
    const { writer, collection, close } = await pair()
    await writer.ok({ type: 'submit', collection, document: 'c', v: 0, op: [{ p: ['x'], oi: 1 }] })
    await writer.ok({ type: 'submit', collection, document: 'c', create: { data: { x: 1 } } })
    const stale = await writer.request({
      type: 'submit',
      collection,
      document: 'c',
      v: 1,
      op: [{ p: ['x'], oi: 2 }],
    })
    expect(stale.error?.code).toBe(409)
    expect(stale.error?.message).toContain('created')
    await close()
  })

  test('src+seq: a resubmission is acked with the first result and not applied twice', async () => {
    const { writer, watcher, collection, close } = await pair()
    await writer.ok({ type: 'submit', collection, document: 'n', create: { data: { n: 0 } } })
    const submit = {
      type: 'submit',
      collection,
      document: 'n',
      v: 1,
      op: [{ p: ['n'], na: 1 }],
      src: 'client-a',
      seq: 7,
    }
    const first = await writer.ok(submit)
    const replayed = await writer.ok(submit)
    expect(replayed.data).toEqual(first.data)
    // Even from another connection (a reconnect) with a stale v.
    const reconnected = await TestClient.connect(server)
    expect((await reconnected.ok(submit)).data).toEqual(first.data)
    expect((await writer.ok({ type: 'query', collection, document: 'n' })).data).toEqual({
      v: 2,
      data: { n: 1 },
    })
    await watcher.settle()
    expect(watcher.all((m) => m.type === 'op')).toHaveLength(2)
    expect((await history(collection)).messages).toHaveLength(2)

    // Without a `v`, a resubmission is found among the document's recent changes.
    const noV = {
      type: 'submit',
      collection,
      document: 'n',
      op: [{ p: ['n'], na: 5 }],
      src: 'client-b',
      seq: 1,
    }
    const applied = await writer.ok(noV)
    await writer.ok({ type: 'submit', collection, document: 'n', op: [{ p: ['n'], na: 1 }] })
    expect((await reconnected.ok(noV)).data).toEqual(applied.data)
    // The same seq from another src is a different op.
    await writer.ok({ ...noV, src: 'client-c' })
    expect((await writer.ok({ type: 'query', collection, document: 'n' })).data).toEqual({
      v: 5,
      data: { n: 12 },
    })
    await reconnected.close()
    await close()
  })
})

describe('bad submits leave no trace', () => {
  const cases: Array<[string, Record<string, unknown>, number]> = [
    ['no instruction', { op: [{ p: ['a'] }] }, 400],
    ['two instructions', { op: [{ p: ['a'], oi: 1, na: 1 }] }, 400],
    ['path into a missing key', { op: [{ p: ['fields', 'missing', 'x'], oi: 1 }] }, 400],
    ['delete of a missing key', { op: [{ p: ['nothing'], od: 1 }] }, 400],
    ['number add on a string', { op: [{ p: ['fields', 'name'], na: 1 }] }, 400],
    ['list insert past the end', { op: [{ p: ['fields', 'tags', 5], li: 'x' }] }, 400],
    ['list op on an object', { op: [{ p: ['fields', 0], li: 'x' }] }, 400],
    ['prototype pollution', { op: [{ p: ['__proto__', 'polluted'], oi: true }] }, 400],
    ['constructor path', { op: [{ p: ['constructor', 'prototype', 'x'], oi: 1 }] }, 400],
    ['op is not a list', { op: { p: ['a'], oi: 1 } }, 400],
    ['path step of the wrong type', { op: [{ p: [{}], oi: 1 }] }, 400],
    ['both op and del', { op: [{ p: ['a'], oi: 1 }], del: true }, 400],
    ['neither op nor create nor del', {}, 400],
    ['bad collection name', { collection: 'record tbl' }, 400],
    ['bad document id', { document: 'rec/1' }, 400],
    ['create without data', { op: undefined, create: {} }, 400],
    ['seq that is not a number', { op: [{ p: ['a'], oi: 1 }], src: 's', seq: 'one' }, 400],
  ]

  test.each(cases)('%s', async (_name, fields, code) => {
    const { writer, watcher, collection, close } = await pair()
    await writer.ok({
      type: 'submit',
      collection,
      document: 'r',
      create: { data: { fields: { name: 'n', tags: [] } } },
    })
    const before = await history(collection)
    const reply = await writer.request({
      type: 'submit',
      collection,
      document: 'r',
      v: 1,
      ...fields,
    })
    expect(reply.type).toBe('error')
    expect(reply.error?.code).toBe(code)
    expect(typeof reply.error?.message).toBe('string')
    expect(({} as Record<string, unknown>).polluted).toBeUndefined()
    const after = await history(collection)
    expect(after.head).toBe(before.head)
    expect(after.messages).toEqual(before.messages)
    expect((await writer.ok({ type: 'query', collection, document: 'r' })).data).toEqual({
      v: 1,
      data: { fields: { name: 'n', tags: [] } },
    })
    await watcher.settle()
    expect(watcher.all((m) => m.type === 'op')).toHaveLength(1) // the create only
    await close()
  })
})

describe('collection query', () => {
  test('returns documents with the stream position they match, filtered by ids and limited', async () => {
    const { writer, collection, close } = await pair()
    for (const id of ['c', 'a', 'b'])
      await writer.ok({ type: 'submit', collection, document: id, create: { data: { id } } })
    await writer.ok({ type: 'submit', collection, document: 'ext', op: [{ p: ['x'], oi: 1 }] })
    await writer.ok({ type: 'submit', collection, document: 'gone', create: { data: {} } })
    await writer.ok({ type: 'submit', collection, document: 'gone', del: true })

    const all = (await writer.ok({ type: 'query', collection })).data
    expect(all.docs).toEqual([
      { id: 'a', v: 1, data: { id: 'a' } },
      { id: 'b', v: 1, data: { id: 'b' } },
      { id: 'c', v: 1, data: { id: 'c' } },
      { id: 'ext', v: 1, data: null },
    ])
    expect(all.offset).toBe(6)
    expect(typeof all.epoch).toBe('string')

    const some = (await writer.ok({ type: 'query', collection, data: { ids: ['b', 'zzz', 'c'] } }))
      .data
    expect(some.docs.map((d: { id: string }) => d.id)).toEqual(['b', 'c'])
    const limited = (await writer.ok({ type: 'query', collection, data: { limit: 2 } })).data
    expect(limited.docs).toHaveLength(2)
    const tooMany = await writer.request({ type: 'query', collection, data: { limit: 5000 } })
    expect(tooMany.error?.code).toBe(400)
    await close()
  })
})

describe('REST publish', () => {
  test('record, view, field and table ops land in their collections like client ops', async () => {
    const watcher = await TestClient.connect(server)
    const table = uniqueName('tbl')
    const base = uniqueName('bse')
    for (const collection of [
      `record_${table}`,
      `view_${table}`,
      `field_${table}`,
      `table_${base}`,
    ])
      await watcher.ok({ type: 'subscribe', collection })
    const op = [{ p: ['name'], oi: 'x' }]
    const replies = [
      await postJson(server, '/api/ws/publish/record', {
        table_id: table,
        record_id: 'rec1',
        operation: op,
      }),
      await postJson(server, '/api/ws/publish/view', {
        table_id: table,
        view_id: 'viw1',
        operation: op,
      }),
      await postJson(server, '/api/ws/publish/field', {
        table_id: table,
        field_id: 'fld1',
        operation: op,
      }),
      await postJson(server, '/api/ws/publish/table', {
        base_id: base,
        table_id: table,
        operation: op,
      }),
      await postJson(server, '/api/ws/publish/document', {
        collection: `record_${table}`,
        document: 'rec1',
        operation: [{ p: ['name'], oi: 'y' }],
        v: 1,
      }),
    ]
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200])
    expect(replies.map((r) => r.body)).toEqual([
      { v: 0, offset: 1 },
      { v: 0, offset: 1 },
      { v: 0, offset: 1 },
      { v: 0, offset: 1 },
      { v: 1, offset: 2 },
    ])
    const ops = await watcher.collect(5, (m) => m.type === 'op')
    expect(ops.map((m) => `${m.collection}.${m.document}`)).toEqual([
      `record_${table}.rec1`,
      `view_${table}.viw1`,
      `field_${table}.fld1`,
      `table_${base}.${table}`,
      `record_${table}.rec1`,
    ])
    expect(ops.every((m) => m.data.source === 'server')).toBe(true)
    await watcher.close()
  })

  test('bad publishes get 400/409 and store nothing', async () => {
    const collection = uniqueName('record')
    const bad = await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'd',
      operation: [{ p: ['a'] }],
    })
    expect(bad.status).toBe(400)
    expect(bad.body.error.code).toBe(400)
    const wrongType = await postJson(server, '/api/ws/publish/record', {
      table_id: 't',
      record_id: 1,
      operation: [],
    })
    expect(wrongType.status).toBe(400)
    expect(wrongType.body.error.details.field).toBe('record_id')
    const badGrammar = await postJson(server, '/api/ws/publish/record', {
      table_id: 'has space',
      record_id: 'r',
      operation: [],
    })
    expect(badGrammar.status).toBe(400)
    const ahead = await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'd',
      operation: [{ p: ['a'], oi: 1 }],
      v: 3,
    })
    expect(ahead.status).toBe(409)
    expect(ahead.body.error.details.v).toBe(0)
    expect((await history(collection)).messages).toEqual([])
  })
})

describe('history API', () => {
  test('since is exclusive, limit defaults to 100 and is capped at 1000', async () => {
    const collection = uniqueName('record')
    for (let i = 0; i < 120; i++)
      await postJson(server, '/api/ws/broadcast/channel', {
        channel: `${collection}.d${i % 3}`,
        message: i,
      })
    const first = (await getJson(server, `/api/ws/history?channel=${collection}`)).body
    expect(first.messages).toHaveLength(100)
    expect(first.head).toBe(120)
    expect(first.messages[0].data.offset).toBe(1)
    const page = (await getJson(server, `/api/ws/history?channel=${collection}&since=110&limit=5`))
      .body
    expect(page.messages.map((m: { data: { offset: number } }) => m.data.offset)).toEqual([
      111, 112, 113, 114, 115,
    ])
    expect(page.messages[0]).toMatchObject({
      type: 'message',
      collection,
      document: 'd2',
      data: { message: 110 },
    })
    const oneDoc = (await getJson(server, `/api/ws/history?channel=${collection}.d1&since=100`))
      .body
    expect(oneDoc.messages.map((m: { data: { message: number } }) => m.data.message)).toEqual([
      100, 103, 106, 109, 112, 115, 118,
    ])
    expect((await getJson(server, `/api/ws/history?channel=${collection}&limit=1001`)).status).toBe(
      400,
    )
    expect((await getJson(server, `/api/ws/history?channel=${collection}&since=-1`)).status).toBe(
      400,
    )
    expect((await getJson(server, '/api/ws/history?channel=bad%20name')).status).toBe(400)
    expect((await getJson(server, '/api/ws/history')).status).toBe(400)
  })
})
