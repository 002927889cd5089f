import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createSecretKey } from 'node:crypto'
import { SignJWT } from 'jose'
import {
  getJson,
  postJson,
  type ServerMessage,
  startServerOnTestStore,
  TestClient,
  type TestServer,
  testStore,
  uniqueName,
  upgradeRequest,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore({ MAX_JSON_DEPTH: '32' })
})
afterAll(() => server.close())

/** Sends a frame as raw text (for numbers JSON.stringify cannot write) and awaits its reply. */
async function rawRequest(client: TestClient, id: string, text: string): Promise<ServerMessage> {
  client.send(text)
  return client.next((m) => m.id === id)
}

function expectRefused(reply: ServerMessage, field: string): void {
  expect(reply.type).toBe('error')
  expect(reply.error?.code).toBe(400)
  expect(reply.error?.details?.field).toBe(field)
}

const historyOf = async (channel: string) =>
  (await getJson(server, `/api/ws/history?channel=${channel}&limit=1000`)).body as {
    head: number
    messages: ServerMessage[]
  }

describe('every integer on the socket is a JSON number of the right range', () => {
  test('since.offset as a string after pruning is a 400, not a silent recovered:true', async () => {
    const small = await startServerOnTestStore({
      HISTORY_MAX_PER_COLLECTION: '5',
      HISTORY_PRUNE_INTERVAL: '3600',
    })
    try {
      const collection = uniqueName('record')
      for (let i = 0; i < 25; i++)
        expect(
          (await postJson(small, '/api/ws/broadcast/channel', { channel: collection, message: i }))
            .status,
        ).toBe(200)
      expect(await small.retention.pass()).toBe(20)
      const client = await TestClient.connect(small)
      const epoch = (await client.ok({ type: 'subscribe', collection: 'probe' })).data.epoch

      // The number 5 is answered truthfully: offsets 6–20 are gone.
      const asNumber = await client.ok({
        type: 'subscribe',
        collection,
        since: { epoch, offset: 5 },
      })
      expect(asNumber.data.recovered).toBe(false)
      await client.ok({ type: 'unsubscribe', collection })

      const asString = await client.request({
        type: 'subscribe',
        collection,
        since: { epoch, offset: '5' },
      })
      expectRefused(asString, 'since.offset')
      await client.settle()
      expect(client.all((m) => m.type === 'message')).toHaveLength(0)
      await client.close()
    } finally {
      await small.close()
    }
  })

  test('a collection query limit must be a number up to 1000', async () => {
    const client = await TestClient.connect(server)
    const collection = uniqueName('record')
    await client.ok({ type: 'submit', collection, document: 'd1', create: { data: {} } })
    for (const limit of ['5000', '5', 5000, 0, 2.5])
      expectRefused(
        await client.request({ type: 'query', collection, data: { limit } }),
        'data.limit',
      )
    expect((await client.ok({ type: 'query', collection, data: { limit: 5 } })).data.docs).toEqual([
      { id: 'd1', v: 1, data: {} },
    ])
    await client.close()
  })

  test('seq as a string is refused, so a resubmission cannot be applied twice', async () => {
    const client = await TestClient.connect(server)
    const collection = uniqueName('record')
    await client.ok({ type: 'submit', collection, document: 'd', create: { data: { n: 0 } } })
    const submit = { type: 'submit', collection, document: 'd', src: 'c1', seq: '7' }
    for (let i = 0; i < 2; i++)
      expectRefused(await client.request({ ...submit, op: [{ p: ['n'], na: 1 }] }), 'seq')
    expect((await client.ok({ type: 'query', collection, document: 'd' })).data).toEqual({
      v: 1,
      data: { n: 0 },
    })
    await client.close()
  })

  test('versions, indexes and counters: strings, negatives, fractions and non-finite numbers are 400s naming the field', async () => {
    const client = await TestClient.connect(server)
    const collection = uniqueName('record')
    await client.ok({
      type: 'submit',
      collection,
      document: 'd',
      create: { data: { n: 0, list: ['a', 'b'] } },
    })
    const submit = { type: 'submit', collection, document: 'd' }
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...submit, v: '-5', op: [{ p: ['n'], na: 1 }] }, 'v'],
      [{ ...submit, v: '1', op: [{ p: ['n'], na: 1 }] }, 'v'],
      [{ ...submit, v: -5, op: [{ p: ['n'], na: 1 }] }, 'v'],
      [{ ...submit, v: 0.5, op: [{ p: ['n'], na: 1 }] }, 'v'],
      [{ ...submit, seq: -1, src: 's', op: [{ p: ['n'], na: 1 }] }, 'seq'],
      [{ ...submit, op: [{ p: ['list', -1], li: 'x' }] }, 'op.0.p.1'],
      [{ ...submit, op: [{ p: ['list', 0], lm: -1 }] }, 'op.0'],
      [{ ...submit, op: [{ p: ['list', 0], lm: '1' }] }, 'op.0'],
      [{ ...submit, op: [{ p: ['n'], na: '1' }] }, 'op.0'],
      [{ type: 'subscribe', collection, document: 'd', since: { v: '1' } }, 'since.v'],
      [{ type: 'subscribe', collection, since: { epoch: 'e', offset: -1 } }, 'since.offset'],
    ]
    for (const [message, field] of cases) expectRefused(await client.request(message), field)

    // JSON numbers past the double range parse to Infinity: refused, never applied.
    expectRefused(
      await rawRequest(
        client,
        'inf-na',
        `{"type":"submit","id":"inf-na","collection":"${collection}","document":"d","op":[{"p":["n"],"na":1e999}]}`,
      ),
      'op.0',
    )
    expectRefused(
      await rawRequest(
        client,
        'inf-v',
        `{"type":"submit","id":"inf-v","collection":"${collection}","document":"d","v":1e999,"op":[{"p":["n"],"na":1}]}`,
      ),
      'v',
    )
    expect(client.all((m) => m.type === 'subscribe')).toHaveLength(0)
    expect((await client.ok({ type: 'query', collection, document: 'd' })).data).toEqual({
      v: 1,
      data: { n: 0, list: ['a', 'b'] },
    })
    await client.close()
  })
})

describe('an empty op is refused', () => {
  test('on the socket (op and operation) and on every REST publish route; nothing is stored or sent', async () => {
    const writer = await TestClient.connect(server)
    const watcher = await TestClient.connect(server)
    const table = uniqueName('tbl')
    const collection = `record_${table}`
    await writer.ok({ type: 'submit', collection, document: 'r1', create: { data: { a: 1 } } })
    await watcher.ok({ type: 'subscribe', collection })

    expectRefused(
      await writer.request({ type: 'submit', collection, document: 'r1', op: [] }),
      'op',
    )
    expectRefused(
      await writer.request({ type: 'submit', collection, document: 'r1', v: 1, operation: [] }),
      'operation',
    )
    const document = await postJson(server, '/api/ws/publish/document', {
      collection,
      document: 'r1',
      operation: [],
    })
    expect(document.status).toBe(400)
    expect(document.body.error.details.field).toBe('operation')
    const record = await postJson(server, '/api/ws/publish/record', {
      table_id: table,
      record_id: 'r1',
      operation: [],
    })
    expect(record.status).toBe(400)
    expect(record.body.error.details.field).toBe('operation')

    await watcher.settle()
    expect(watcher.all((m) => m.type === 'op')).toHaveLength(0)
    expect((await writer.ok({ type: 'query', collection, document: 'r1' })).data.v).toBe(1)
    expect((await historyOf(collection)).head).toBe(1)
    await Promise.all([writer.close(), watcher.close()])
  })
})

describe('REST bodies and parameters', () => {
  test('broadcast/user without a message is a 400 naming message', async () => {
    const user = uniqueName('user')
    const client = await TestClient.connect(server, { user_id: user })
    const missing = await postJson(server, '/api/ws/broadcast/user', { user_id: user })
    expect(missing.status).toBe(400)
    expect(missing.body.error).toMatchObject({ code: 400, details: { field: 'message' } })
    // null is a message like any other JSON value.
    const sent = await postJson(server, '/api/ws/broadcast/user', { user_id: user, message: null })
    // In a cluster the reply also counts the nodes it was handed to (CLUSTER.md).
    expect(sent.body).toEqual(
      testStore === 'cluster' ? { delivered: 1, nodes: 1 } : { delivered: 1 },
    )
    expect((await client.next((m) => m.type === 'message')).data).toEqual({ message: null })
    await client.settle()
    expect(client.all((m) => m.type === 'message')).toHaveLength(1)
    await client.close()
  })

  test('integers in a JSON body are JSON numbers: v as a string is a 400 naming it', async () => {
    const collection = uniqueName('record')
    for (const v of ['0', -1, 0.5]) {
      const reply = await postJson(server, '/api/ws/publish/document', {
        collection,
        document: 'd',
        v,
        operation: [{ p: ['a'], oi: 1 }],
      })
      expect(reply).toMatchObject({ status: 400, body: { error: { details: { field: 'v' } } } })
    }
    expect((await historyOf(collection)).head).toBe(0)
  })

  test('a body nested deeper than MAX_JSON_DEPTH is a 400 before anything is stored', async () => {
    const collection = uniqueName('record')
    const deep = (n: number) => `${'['.repeat(n)}${']'.repeat(n)}`
    for (const n of [100_000, 40]) {
      const broadcast = await postJson(
        server,
        '/api/ws/broadcast/channel',
        `{"channel":"${collection}","message":${deep(n)}}`,
      )
      expect(broadcast.status).toBe(400)
      expect(broadcast.body.error.message).toContain('nested deeper than 32')
      const publish = await postJson(
        server,
        '/api/ws/publish/document',
        `{"collection":"${collection}","document":"d","operation":[{"p":["a"],"oi":${deep(n)}}]}`,
      )
      expect(publish.status).toBe(400)
    }
    // Sent as another content type it stays text, and is refused as not an object.
    const asText = await fetch(`${server.url}/api/ws/broadcast/channel`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: `{"channel":"${collection}","message":${deep(100_000)}}`,
    })
    expect(asText.status).toBe(400)
    expect(await historyOf(collection)).toMatchObject({ head: 0, messages: [] })
    // Within the limit it goes through, and malformed JSON is still a plain 400.
    const fits = await postJson(server, '/api/ws/broadcast/channel', {
      channel: collection,
      message: JSON.parse(deep(20)),
    })
    expect(fits).toMatchObject({ status: 200, body: { offset: 1 } })
    const malformed = await postJson(server, '/api/ws/broadcast/channel', '{"channel":')
    expect(malformed).toMatchObject({ status: 400, body: { error: { code: 400 } } })
  })

  test('an op path has at most 1000 steps, so no document can grow too deep to store', async () => {
    // Each op could hang a value nearly MAX_JSON_DEPTH deep below the deepest
    // point so far: ~40 such ops would make a snapshot JSON.stringify cannot
    // write (a 500 for every write batched with it, for good).
    const deep = await startServerOnTestStore({ MAX_JSON_DEPTH: '1000' })
    try {
      const client = await TestClient.connect(deep)
      const collection = uniqueName('record')
      await client.ok({ type: 'submit', collection, document: 'd', create: { data: {} } })
      let value: Record<string, unknown> = {}
      for (let depth = 1; depth < 990; depth++) value = { k: value }
      const below = Array.from({ length: 989 }, () => 'k')
      const submit = (p: string[]) =>
        client.request({ type: 'submit', collection, document: 'd', op: [{ p, oi: value }] })
      expect((await submit(['x'])).type).toBe('submit')
      expect((await submit(['x', ...below, 'x'])).type).toBe('submit') // 991 steps
      expectRefused(await submit(['x', ...below, 'x', ...below, 'x']), 'op.0.p') // 1981 steps
      // The document, 1981 levels deep, is stored and read back whole.
      const { data } = (await client.ok({ type: 'query', collection, document: 'd' })).data
      let level = data as Record<string, unknown>
      for (const step of ['x', ...below, 'x', ...below])
        level = level[step] as Record<string, unknown>
      expect(level).toEqual({})
      await client.ok({ type: 'submit', collection, document: 'd', op: [{ p: ['y'], oi: 1 }] })
      await client.close()
    } finally {
      await deep.close()
    }
  })

  test('query-string errors name the parameter', async () => {
    const cases: Array<[string, string]> = [
      ['/api/ws/history?channel=record_x&since=-1', 'since'],
      ['/api/ws/history?channel=record_x&limit=100000', 'limit'],
      ['/api/ws/history?channel=record_x&limit=0', 'limit'],
      ['/api/ws/history?channel=record_x&since=abc', 'since'],
      ['/api/ws/sessions?user_id=u&limit=0', 'limit'],
      ['/api/ws/sessions?user_id=u&limit=1001', 'limit'],
    ]
    for (const [path, field] of cases) {
      const reply = await getJson(server, path)
      expect({ path, status: reply.status, body: reply.body }).toMatchObject({
        path,
        status: 400,
        body: { error: { code: 400, details: { field, in: 'query' } } },
      })
      expect(reply.body.error.message).toContain(`"${field}"`)
    }
    expect(
      (await getJson(server, '/api/ws/history?channel=record_x&since=0&limit=1000')).status,
    ).toBe(200)
  })
})

describe('tokens must carry exp', () => {
  const SECRET = 'strict-input-secret-long-enough-for-hs256'
  const key = createSecretKey(Buffer.from(SECRET))
  const mint = (exp: boolean) => {
    const jwt = new SignJWT({ channels: ['*'], publish: [] })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('alice')
      .setIssuedAt()
    if (exp) jwt.setExpirationTime('1h')
    return jwt.sign(key)
  }
  let auth: TestServer
  beforeAll(async () => {
    auth = await startServerOnTestStore({ AUTH_SECRET: SECRET })
  })
  afterAll(() => auth.close())

  test('a token without exp is refused at connect and as a fresh token; the CLI mints tokens with exp', async () => {
    const refused = await upgradeRequest(auth, `?token=${await mint(false)}`)
    expect(refused.status).toBe(401)
    expect((await refused.json()).error.message).toBe('the token has no exp')

    const client = await TestClient.connect(auth, { token: await mint(true) })
    const refresh = await client.request({ type: 'connect', data: { token: await mint(false) } })
    expect(refresh.error).toMatchObject({ code: 401, message: 'the token has no exp' })
    expect(client.closeCode).toBeUndefined()
    await client.close()

    const cli = Bun.spawnSync(
      ['bun', 'src/auth/token-cli.ts', '--sub', 'alice', '--channels', '*', '--ttl', '60'],
      { cwd: `${import.meta.dir}/..`, env: { ...process.env, AUTH_SECRET: SECRET } },
    )
    expect(cli.exitCode).toBe(0)
    const token = cli.stdout.toString().trim()
    const claims = JSON.parse(Buffer.from(token.split('.')[1] as string, 'base64url').toString())
    expect(claims.exp - Math.floor(Date.now() / 1000)).toBeWithin(50, 61)
    const fromCli = await TestClient.connect(auth, { token })
    expect(fromCli.connected.data.user_id).toBe('alice')
    await fromCli.close()
  })
})
