import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createSecretKey, type KeyObject } from 'node:crypto'
import { exportSPKI, generateKeyPair, SignJWT } from 'jose'
import {
  getJson,
  postJson,
  type ServerMessage,
  spawnServer,
  startServerOnTestStore,
  TestClient,
  type TestServer,
  uniqueName,
  upgradeRequest,
} from './helpers.ts'

const SECRET = 'test-secret-that-is-long-enough-for-hs256'
const hsKey = createSecretKey(Buffer.from(SECRET))

interface Claims {
  sub?: string
  channels?: string[]
  publish?: string[]
  /** seconds from now; negative for an expired token */
  ttl?: number
}

function sign(claims: Claims, key: KeyObject | CryptoKey = hsKey, alg = 'HS256'): Promise<string> {
  const jwt = new SignJWT({ channels: claims.channels ?? [], publish: claims.publish ?? [] })
    .setProtectedHeader({ alg })
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + (claims.ttl ?? 3600))
  if (claims.sub !== undefined) jwt.setSubject(claims.sub)
  return jwt.sign(key)
}

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore({
    AUTH_SECRET: SECRET,
    HEARTBEAT_INTERVAL: '0.1',
    CONNECTION_TIMEOUT: '30',
  })
})
afterAll(() => server.close())

describe('connection tokens', () => {
  test('no token, a bad one, an expired one and a mismatched user_id are refused before the upgrade', async () => {
    const none = await upgradeRequest(server, '?user_id=alice')
    expect(none.status).toBe(401)
    expect((await none.json()).error).toMatchObject({ code: 401, details: { field: 'token' } })

    const bad = await upgradeRequest(server, '?token=not.a.jwt')
    expect(bad.status).toBe(401)
    expect((await bad.json()).error.message).toBe('invalid token')

    const forged = await sign(
      { sub: 'alice' },
      createSecretKey(Buffer.from('another-secret-of-some-length!!')),
    )
    expect((await upgradeRequest(server, `?token=${forged}`)).status).toBe(401)

    const expired = await sign({ sub: 'alice', ttl: -10 })
    const expiredReply = await upgradeRequest(server, `?token=${expired}`)
    expect(expiredReply.status).toBe(401)
    expect((await expiredReply.json()).error.message).toBe('token expired')

    const noSub = await sign({})
    expect((await upgradeRequest(server, `?token=${noSub}`)).status).toBe(401)

    const alice = await sign({ sub: 'alice' })
    const mismatch = await upgradeRequest(server, `?token=${alice}&user_id=bob`)
    expect(mismatch.status).toBe(403)
    expect((await mismatch.json()).error.details.field).toBe('user_id')
  })

  test('a valid token in the query or the Authorization header connects as its sub', async () => {
    const token = await sign({ sub: 'alice' })
    const viaQuery = await TestClient.connect(server, { token })
    expect(viaQuery.connected.data.user_id).toBe('alice')
    const sameUser = await TestClient.connect(server, { token, user_id: 'alice' })
    expect(sameUser.connected.data.user_id).toBe('alice')
    const viaHeader = await upgradeRequest(server, '', { Authorization: `Bearer ${token}` })
    expect(viaHeader.status).toBe(101)
    await Promise.all([viaQuery.close(), sameUser.close()])
  })

  test.each(['RS256', 'ES256'])('%s tokens verify with AUTH_PUBLIC_KEY', async (alg) => {
    const { publicKey, privateKey } = await generateKeyPair(alg)
    const pem = await exportSPKI(publicKey)
    const own = await startServerOnTestStore({ AUTH_PUBLIC_KEY: pem })
    try {
      const token = await sign({ sub: 'carol' }, privateKey, alg)
      const client = await TestClient.connect(own, { token })
      expect(client.connected.data.user_id).toBe('carol')
      await client.close()
      // An HS256 token signed with anything is not accepted by a public-key server.
      expect((await upgradeRequest(own, `?token=${await sign({ sub: 'carol' })}`)).status).toBe(401)
    } finally {
      await own.close()
    }
  })
})

describe('channel permissions', () => {
  test('channels grant subscribe, query and presence; publish grants submit; the rest is 403 naming the channel', async () => {
    const table = uniqueName('tbl')
    const token = await sign({
      sub: 'dave',
      channels: [`record_${table}`, 'view_*'],
      publish: [`record_${table}.*`],
    })
    const client = await TestClient.connect(server, { token })
    await client.ok({ type: 'subscribe', collection: `record_${table}` })
    await client.ok({ type: 'subscribe', collection: `record_${table}`, document: 'rec1' }) // the collection covers its documents
    await client.ok({ type: 'subscribe', collection: `view_${table}` })
    await client.ok({
      type: 'submit',
      collection: `record_${table}`,
      document: 'rec1',
      op: [{ p: ['f'], oi: 1 }],
    })
    await client.ok({ type: 'query', collection: `record_${table}`, document: 'rec1' })
    await client.ok({ type: 'presence', collection: `record_${table}`, data: { x: 1 } })

    const refusals: Array<[Record<string, unknown>, string]> = [
      [{ type: 'subscribe', collection: `field_${table}` }, `field_${table}`],
      [{ type: 'query', collection: `field_${table}` }, `field_${table}`],
      [{ type: 'query', collection: `field_${table}`, document: 'f1' }, `field_${table}.f1`],
      [{ type: 'presence', collection: `field_${table}`, data: 1 }, `field_${table}`],
      [
        { type: 'submit', collection: `view_${table}`, document: 'v1', op: [{ p: ['a'], oi: 1 }] },
        `view_${table}.v1`,
      ],
      [
        {
          type: 'submit',
          collection: `record_${table}x`,
          document: 'r',
          op: [{ p: ['a'], oi: 1 }],
        },
        `record_${table}x.r`,
      ],
    ]
    for (const [message, channel] of refusals) {
      const reply = await client.request(message)
      expect(reply.type).toBe('error')
      expect(reply.error?.code).toBe(403)
      expect(reply.error?.message).toContain(channel)
      expect(reply.error?.details?.channel).toBe(channel)
    }
    await client.close()
  })

  test('a refused subscribe leaks nothing: no replay, no presence, no snapshot', async () => {
    const secret = uniqueName('record')
    const insider = await TestClient.connect(server, {
      token: await sign({ sub: 'in', channels: [secret], publish: [`${secret}*`] }),
    })
    const { epoch } = (await insider.ok({ type: 'subscribe', collection: secret })).data
    await insider.ok({
      type: 'submit',
      collection: secret,
      document: 'd',
      create: { data: { salary: 1 } },
    })
    await insider.ok({ type: 'presence', collection: secret, data: { here: true } })

    const outsider = await TestClient.connect(server, {
      token: await sign({ sub: 'out', channels: ['other'] }),
    })
    const reply = await outsider.request({
      type: 'subscribe',
      collection: secret,
      since: { epoch, offset: 0 },
    })
    expect(reply.error?.code).toBe(403)
    const docReply = await outsider.request({
      type: 'subscribe',
      collection: secret,
      document: 'd',
      since: { v: 0 },
    })
    expect(docReply.error?.code).toBe(403)
    await outsider.settle()
    const leaked = outsider.all((m: ServerMessage) =>
      ['op', 'presence', 'message'].includes(m.type),
    )
    expect(leaked).toHaveLength(0)
    expect(JSON.stringify(outsider.received)).not.toContain('salary')
    // And the insider never saw the outsider join.
    await insider.settle()
    expect(insider.all((m) => m.type === 'presence' && m.data.user_id === 'out')).toHaveLength(0)
    await Promise.all([insider.close(), outsider.close()])
  })
})

describe('token expiry', () => {
  test('a connection whose token expires is told token_expired and closed with 4401', async () => {
    const client = await TestClient.connect(server, { token: await sign({ sub: 'eve', ttl: 1 }) })
    const notice = await client.next((m) => m.type === 'disconnect', 4000)
    expect(notice.data).toEqual({ code: 4401, reason: 'token_expired' })
    await client.closed
  })

  test('a fresh token sent with connect keeps it open, for the same user only, and drops revoked channels', async () => {
    const table = uniqueName('record')
    const client = await TestClient.connect(server, {
      token: await sign({ sub: 'fay', channels: [table, `${table}_b`], ttl: 1 }),
    })
    await client.ok({ type: 'subscribe', collection: table })
    await client.ok({ type: 'subscribe', collection: `${table}_b` })

    const otherUser = await client.request({
      type: 'connect',
      data: { token: await sign({ sub: 'mallory' }) },
    })
    expect(otherUser.error?.code).toBe(403)
    const invalid = await client.request({ type: 'connect', data: { token: 'junk' } })
    expect(invalid.error?.code).toBe(401)

    const fresh = await client.ok({
      type: 'connect',
      data: { token: await sign({ sub: 'fay', channels: [table], ttl: 60 }) },
    })
    expect(fresh.type).toBe('connected')
    expect(fresh.data.revoked).toEqual([`${table}_b`])
    expect(
      (await postJson(server, '/api/ws/broadcast/channel', { channel: `${table}_b`, message: 1 }))
        .body.delivered,
    ).toBe(0)
    expect(
      (await postJson(server, '/api/ws/broadcast/channel', { channel: table, message: 2 })).body
        .delivered,
    ).toBe(1)

    // Well past the first token's expiry, it is still connected.
    const until = Date.now() + 1500
    while (Date.now() < until) await client.request({ type: 'ping' })
    expect(client.closeCode).toBeUndefined()
    await client.close()
  })

  test('open mode logs a warning at start', async () => {
    const open = await spawnServer({ DB_PATH: ':memory:' })
    open.proc.kill('SIGTERM')
    await open.exited
    expect(
      open.lines.some((line) => line.includes('"level":40') && line.includes('open mode')),
    ).toBe(true)
  })
})

describe('server API auth', () => {
  test('with ADMIN_TOKEN every REST route needs it; health of the docs stays public', async () => {
    const own = await startServerOnTestStore({ ADMIN_TOKEN: 'admin-token-123' })
    try {
      for (const path of [
        '/api/ws/stats',
        '/api/ws/online',
        '/api/ws/history?channel=x',
        '/api/ws/presence?channel=x',
      ]) {
        const anonymous = await getJson(own, path)
        expect(anonymous.status).toBe(401)
        expect(anonymous.body.error.code).toBe(401)
        expect((await getJson(own, path, { Authorization: 'Bearer wrong' })).status).toBe(401)
        expect((await getJson(own, path, { Authorization: 'Bearer admin-token-123' })).status).toBe(
          200,
        )
      }
      const post = await postJson(own, '/api/ws/broadcast/user', { user_id: 'u', message: 1 })
      expect(post.status).toBe(401)
      expect(
        (
          await postJson(
            own,
            '/api/ws/broadcast/user',
            { user_id: 'u', message: 1 },
            { Authorization: 'Bearer admin-token-123' },
          )
        ).status,
      ).toBe(200)
      expect((await fetch(`${own.url}/swagger`)).status).toBe(200)
      expect((await fetch(`${own.url}/swagger/json`)).status).toBe(200)
      // Sockets are not admin routes.
      const client = await TestClient.connect(own)
      await client.close()
    } finally {
      await own.close()
    }
  })

  test('without ADMIN_TOKEN the REST routes answer loopback callers only', async () => {
    const own = await startServerOnTestStore()
    try {
      expect((await getJson(own, '/api/ws/stats')).status).toBe(200)
      const remote = await getJson(own, '/api/ws/stats', {
        'X-Forwarded-For': '203.0.113.7, 10.0.0.1',
      })
      expect(remote.status).toBe(403)
      expect(remote.body.error.message).toContain('ADMIN_TOKEN')
    } finally {
      await own.close()
    }
  })
})
