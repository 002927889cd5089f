import { afterAll, beforeAll, expect, test } from 'bun:test'
import fc from 'fast-check'
import { type as json0 } from 'ot-json0'
import { normalizeOp } from '../src/documents/json0.ts'
import {
  getJson,
  postJson,
  type ServerMessage,
  startServerOnTestStore,
  TestClient,
  type TestServer,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore({ MAX_MESSAGE_SIZE: '65536', MAX_JSON_DEPTH: '32' })
})
afterAll(() => server.close())

const TYPES = [
  'connect',
  'subscribe',
  'unsubscribe',
  'query',
  'submit',
  'presence',
  'ping',
  'nope',
  '',
]
const odd = fc.oneof(
  fc.jsonValue(),
  fc.string({ unit: 'binary' }),
  fc.string({ unit: 'grapheme' }),
  fc.constantFrom(
    1e308,
    -1e308,
    2 ** 53 + 1,
    -0,
    0.1,
    Number.MAX_SAFE_INTEGER,
    '__proto__',
    'constructor',
    '',
    ' ',
    // Integers written as strings: the socket must refuse them, never coerce or compare them.
    '5',
    '-5',
    '0',
    '5000',
    '1e3',
  ),
)
const name = fc.oneof(
  fc.constantFrom('fuzz', 'fuzz_b', 'record_x'),
  fc.string({ maxLength: 140 }),
  odd,
)
const pathStep = fc.oneof(
  fc.constantFrom('a', 'b', 'list', '__proto__', 'prototype'),
  fc.nat(5),
  odd,
)
const component = fc.oneof(
  fc.record({ p: fc.array(pathStep, { maxLength: 3 }), oi: fc.jsonValue() }),
  fc.record({ p: fc.array(pathStep, { maxLength: 3 }), od: fc.jsonValue() }),
  fc.record({ p: fc.array(pathStep, { maxLength: 3 }), na: fc.oneof(fc.double(), odd) }),
  fc.record({ p: fc.array(pathStep, { maxLength: 3 }), li: fc.jsonValue() }),
  fc.record({ p: fc.array(pathStep, { maxLength: 3 }), t: fc.string(), o: fc.jsonValue() }),
  fc.dictionary(fc.string(), fc.jsonValue()),
)
const message = fc.record(
  {
    type: fc.oneof(fc.constantFrom(...TYPES), odd),
    collection: name,
    document: name,
    v: fc.oneof(fc.nat(5), odd),
    op: fc.oneof(fc.array(component, { maxLength: 4 }), odd),
    create: fc.oneof(fc.record({ data: fc.jsonValue() }), odd),
    del: fc.oneof(fc.constant(true), odd),
    since: fc.oneof(
      fc.record({ v: fc.nat(3) }),
      fc.record({ epoch: fc.string(), offset: fc.nat(3) }),
      odd,
    ),
    data: fc.oneof(fc.jsonValue(), fc.record({ ids: fc.array(name), limit: odd })),
    src: odd,
    seq: odd,
    timestamp: odd,
  },
  { requiredKeys: ['type'] },
)

/** Well-formed writes on a few documents, so that valid ops land among the invalid ones. */
const validWrite = fc
  .record({
    type: fc.constant('submit'),
    collection: fc.constantFrom('fuzz', 'fuzz_b'),
    document: fc.constantFrom('d1', 'd2', 'd3'),
  })
  .chain((base) =>
    fc.oneof(
      fc.constant({ ...base, create: { data: { a: 1, list: [] } } }),
      fc.jsonValue().map((value) => ({ ...base, op: [{ p: ['a'], oi: value }] })),
      fc.jsonValue().map((value) => ({ ...base, op: [{ p: ['list', 0], li: value }] })),
      fc.constant({ ...base, op: [{ p: ['list', 0], ld: null }] }),
      fc.constant({ ...base, op: [{ p: ['a'], na: 1 }] }),
      fc.constant({ ...base, del: true }),
    ),
  )

type Frame =
  | { kind: 'object'; value: Record<string, unknown>; withId: boolean }
  | { kind: 'raw'; text: string }
  | { kind: 'binary'; bytes: Uint8Array }
const frame: fc.Arbitrary<Frame> = fc.oneof(
  {
    weight: 3,
    arbitrary: validWrite.map((value) => ({ kind: 'object' as const, value, withId: true })),
  },
  {
    weight: 6,
    arbitrary: fc
      .tuple(message, fc.boolean())
      .map(([value, withId]) => ({ kind: 'object' as const, value, withId })),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.dictionary(fc.string(), fc.jsonValue()), fc.boolean())
      .map(([value, withId]) => ({ kind: 'object' as const, value, withId })),
  },
  {
    weight: 1,
    arbitrary: fc
      .oneof(
        fc.string({ unit: 'binary' }),
        fc.string({ unit: 'grapheme' }),
        fc.jsonValue().map((v) => JSON.stringify(v) ?? 'x'),
      )
      .map((text) => ({ kind: 'raw' as const, text })),
  },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 1, max: 3000 }).map((n) => ({
      kind: 'raw' as const,
      text: `{"type":"ping","id":"deep","x":${'['.repeat(n)}${']'.repeat(n)}}`,
    })),
  },
  {
    weight: 1,
    arbitrary: fc
      .uint8Array({ maxLength: 64 })
      .map((bytes) => ({ kind: 'binary' as const, bytes })),
  },
)

test('thousands of random and mutated frames: one reply per id, the server stays up, a bystander misses nothing, history stays valid', async () => {
  const bystander = await TestClient.connect(server, { user_id: 'bystander' })
  await bystander.ok({ type: 'subscribe', collection: 'side' })
  const fuzzer = await TestClient.connect(server, { user_id: 'fuzzer' })
  let nextId = 0
  let sideSent = 0
  let framesSent = 0

  await fc.assert(
    fc.asyncProperty(fc.array(frame, { minLength: 10, maxLength: 50 }), async (frames) => {
      const ids: string[] = []
      for (const f of frames) {
        if (f.kind === 'binary') fuzzer.socket.send(new Uint8Array(f.bytes))
        else if (f.kind === 'raw') fuzzer.socket.send(f.text)
        else {
          const value = { ...f.value }
          if (f.withId) {
            const id = `f${nextId++}`
            value.id = id
            ids.push(id)
          } else delete value.id
          if (value.type === 'disconnect') value.type = 'ping'
          fuzzer.socket.send(JSON.stringify(value))
        }
        framesSent++
      }
      await postJson(server, '/api/ws/broadcast/channel', { channel: 'side', message: sideSent++ })
      // A submit's ack follows its commit, and a later ping's reply need not
      // wait for it (on PostgreSQL it does not): wait for each reply, then
      // for whatever else was sent before a last round trip.
      for (const id of ids) await fuzzer.next((m) => m.id === id, 10_000)
      await fuzzer.settle()
      for (const id of ids) expect(fuzzer.all((m) => m.id === id)).toHaveLength(1)
      expect(fuzzer.closeCode).toBeUndefined()
    }),
    { numRuns: 250 },
  )
  expect(framesSent).toBeGreaterThanOrEqual(2500)

  // The server is up and a well-behaved client saw every side message, in order.
  expect((await getJson(server, '/api/ws/stats')).status).toBe(200)
  const side = await bystander.collect(sideSent, (m) => m.type === 'message')
  expect(side.map((m) => m.data.message)).toEqual(Array.from({ length: sideSent }, (_, i) => i))
  expect(({} as Record<string, unknown>).polluted).toBeUndefined()

  let stored = 0
  // Nothing invalid reached the history: every op is well formed, and every
  // snapshot equals its history replayed.
  for (const collection of ['fuzz', 'fuzz_b', 'record_x']) {
    const { messages } = (await getJson(server, `/api/ws/history?channel=${collection}&limit=1000`))
      .body as {
      messages: ServerMessage[]
    }
    stored += messages.length
    const snapshots = new Map<string, unknown>()
    for (const entry of messages) {
      if (entry.type !== 'op') continue
      const document = entry.document as string
      if (entry.data.op) {
        expect(() => normalizeOp(entry.data.op)).not.toThrow()
        if (snapshots.get(document) != null)
          snapshots.set(document, json0.apply(snapshots.get(document), entry.data.op))
      } else if (entry.data.create) snapshots.set(document, structuredClone(entry.data.create.data))
      else if (entry.data.del) snapshots.set(document, null)
    }
    for (const [document, data] of snapshots) {
      const stored = (await getJson(server, `/api/ws/documents/${collection}/${document}`)).body
      expect(stored.data).toEqual(data)
    }
  }
  // The fuzz did write: valid frames among the random ones were applied.
  expect(stored).toBeGreaterThan(0)
  await Promise.all([bystander.close(), fuzzer.close()])
}, 60_000) // on PostgreSQL every commit is a round trip to the database

/** Integers the socket must refuse: numeric strings, and numbers out of the field's range. */
const asString = fc.oneof(
  fc.integer({ min: -10, max: 10_000 }).map(String),
  fc.constantFrom('1e3', ' 7', '0x10', '1.5', '', 'Infinity'),
)
const notIndex = fc.oneof(
  fc.integer({ min: -1000, max: -1 }),
  fc.double({ min: 0.1, max: 1000, noInteger: true, noNaN: true }),
  fc.constant(2 ** 53),
)
const strictCase = fc.oneof(
  fc.oneof(asString, notIndex).map((v) => ({
    field: 'v',
    message: { type: 'submit', collection: 'strict', document: 'd', v, op: [{ p: ['n'], na: 1 }] },
  })),
  fc.oneof(asString, notIndex).map((seq) => ({
    field: 'seq',
    message: {
      type: 'submit',
      collection: 'strict',
      document: 'd',
      src: 'fuzz',
      seq,
      op: [{ p: ['n'], na: 1 }],
    },
  })),
  fc.oneof(asString, notIndex).map((offset) => ({
    field: 'since.offset',
    message: { type: 'subscribe', collection: 'strict', since: { epoch: 'e', offset } },
  })),
  fc.oneof(asString, notIndex).map((v) => ({
    field: 'since.v',
    message: { type: 'subscribe', collection: 'strict', document: 'd', since: { v } },
  })),
  fc
    .oneof(asString, notIndex, fc.integer({ min: 1001, max: 1e9 }), fc.constant(0))
    .map((limit) => ({
      field: 'data.limit',
      message: { type: 'query', collection: 'strict', data: { limit } },
    })),
  notIndex.map((index) => ({
    field: 'op.0.p.1',
    message: {
      type: 'submit',
      collection: 'strict',
      document: 'd',
      op: [{ p: ['list', index], li: 1 }],
    },
  })),
  fc.oneof(asString, notIndex).map((lm) => ({
    field: 'op.0',
    message: {
      type: 'submit',
      collection: 'strict',
      document: 'd',
      op: [{ p: ['list', 0], lm }],
    },
  })),
)

test('integers as strings or out of range: a 400 naming the field, never applied, never a subscription', async () => {
  const client = await TestClient.connect(server, { user_id: 'strict' })
  await client.ok({
    type: 'submit',
    collection: 'strict',
    document: 'd',
    create: { data: { n: 0, list: ['a', 'b'] } },
  })
  await fc.assert(
    fc.asyncProperty(fc.array(strictCase, { minLength: 1, maxLength: 20 }), async (cases) => {
      for (const { field, message } of cases) {
        const reply = await client.request(message)
        expect({ field, message, reply: reply.error }).toMatchObject({
          reply: { code: 400, details: { field } },
        })
      }
    }),
    { numRuns: 100 },
  )
  await client.settle()
  expect(client.all((m) => m.type === 'subscribe' || m.type === 'op')).toHaveLength(0)
  expect((await client.ok({ type: 'query', collection: 'strict', document: 'd' })).data).toEqual({
    v: 1,
    data: { n: 0, list: ['a', 'b'] },
  })
  await client.close()
})
