import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { createSecretKey } from 'node:crypto'
import { join } from 'node:path'
import { SignJWT } from 'jose'
import {
  Backoff,
  type ClosedEvent,
  type ConnectionState,
  RealtimeClient,
  type RealtimeError,
  RequestError,
  type ResetEvent,
  TimeoutError,
} from '../src/client/index.ts'
import {
  postJson,
  spawnServer,
  startServerOnTestStore,
  type TestServer,
  tempDir,
  uniqueName,
} from './helpers.ts'

const SECRET = 'client-test-secret-long-enough-for-hs256'
const key = createSecretKey(Buffer.from(SECRET))

function sign(sub: string, ttlSeconds: number, channels = ['*'], publish = ['*']): Promise<string> {
  return new SignJWT({ channels, publish })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
    .sign(key)
}

/** Resolves once the client reaches this state. */
function reach(client: RealtimeClient, state: ConnectionState): Promise<void> {
  if (client.state === state) return Promise.resolve()
  return new Promise((resolve) => {
    const off = client.on('state', (event) => {
      if (event.state !== state) return
      off()
      resolve()
    })
  })
}

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore()
})
afterAll(() => server.close())

describe('backoff', () => {
  test('full jitter under a ceiling that doubles up to the cap, reset after a stable connection', () => {
    let next = 0.999
    const backoff = new Backoff({
      initialDelay: 100,
      maxDelay: 1000,
      stableAfter: 5000,
      random: () => next,
    })
    const highs = Array.from({ length: 6 }, () => backoff.next())
    expect(highs).toEqual([99, 199, 399, 799, 999, 999])
    next = 0
    expect(backoff.next()).toBe(0) // full jitter: anywhere from 0
    backoff.connectionLasted(4999)
    expect(backoff.ceiling).toBe(1000)
    backoff.connectionLasted(5000)
    expect(backoff.ceiling).toBe(100)
  })
})

describe('requests', () => {
  test('replies resolve typed data; refusals reject with the protocol code', async () => {
    const client = new RealtimeClient({ url: server.url, userId: 'req' })
    const collection = uniqueName('record')
    const missing = await client.snapshot(collection, 'nope').catch((error: unknown) => error)
    expect(missing).toBeInstanceOf(RequestError)
    expect((missing as RequestError).code).toBe(404)
    const doc = client.doc(collection, 'd1')
    await doc.subscribe()
    await doc.create({ n: 1 })
    expect(await client.snapshot(collection, 'd1')).toEqual({ v: 1, data: { n: 1 } })
    const listed = await client.query(collection)
    expect(listed.docs).toEqual([{ id: 'd1', v: 1, data: { n: 1 } }])
    expect(await client.ping()).toBeGreaterThanOrEqual(0)
    client.close()
  })

  test('a request without a reply in time rejects with TimeoutError; the connection goes on', async () => {
    const dir = tempDir()
    const proc = await spawnServer({ DB_PATH: join(dir.path, 'r.db') })
    const client = new RealtimeClient({ url: proc.url, userId: 'slow' })
    try {
      await reach(client, 'connected')
      proc.proc.kill('SIGSTOP') // a real server that does not answer
      const error = await client.ping({ timeout: 300 }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(TimeoutError)
      expect((error as TimeoutError).code).toBe('timeout')
      proc.proc.kill('SIGCONT')
      expect(await client.ping()).toBeGreaterThanOrEqual(0)
      expect(client.state).toBe('connected')
    } finally {
      client.close()
      proc.proc.kill('SIGKILL')
      await proc.exited
      dir.remove()
    }
  })

  test('requests made while disconnected wait for the connection; close() rejects them', async () => {
    const client = new RealtimeClient({ url: server.url, userId: 'waiter', autoConnect: false })
    const pong = client.ping()
    client.connect()
    expect(await pong).toBeGreaterThanOrEqual(0)
    client.disconnect()
    const waiting = client.ping({ timeout: 0 })
    client.close()
    expect(await waiting.catch((e: unknown) => (e as RealtimeError).code)).toBe('closed')
  })
})

describe('connection', () => {
  test('a user broadcast arrives as a message event', async () => {
    const user = uniqueName('user')
    const client = new RealtimeClient({ url: server.url, userId: user })
    await reach(client, 'connected')
    const message = client.once('message')
    await postJson(server, '/api/ws/broadcast/user', { user_id: user, message: { hi: 1 } })
    expect((await message).message).toEqual({ hi: 1 })
    client.close()
  })

  test('a server shutdown is survived: disconnected (shutdown), reconnected, resynced', async () => {
    const dir = tempDir()
    const env = { DB_PATH: join(dir.path, 'r.db') }
    let proc = await spawnServer(env)
    const client = new RealtimeClient({
      url: proc.url,
      userId: 'survivor',
      reconnect: { initialDelay: 50, maxDelay: 200 },
    })
    try {
      await client.once('resynced')
      const first = client.connection?.connection_id
      const dropped = client.once('disconnected')
      proc.proc.kill('SIGTERM')
      const event = await dropped
      expect(event).toMatchObject({ reason: 'shutdown', willReconnect: true })
      await proc.exited
      const resynced = client.once('resynced')
      proc = await spawnServer({ ...env, SOCKET_PORT: String(proc.port) })
      await resynced
      expect(client.connection?.connection_id).not.toBe(first)
    } finally {
      client.close()
      proc.proc.kill('SIGKILL')
      await proc.exited
      dir.remove()
    }
  })
})

describe('liveness', () => {
  test('a server that stops answering (half-open) is detected by the heartbeat, and the client reconnects', async () => {
    const dir = tempDir()
    const proc = await spawnServer({
      DB_PATH: join(dir.path, 'r.db'),
      HEARTBEAT_INTERVAL: '0.2',
      CONNECTION_TIMEOUT: '30',
    })
    const client = new RealtimeClient({ url: proc.url, userId: 'patient' })
    try {
      await client.once('resynced')
      const dropped = client.once('disconnected')
      proc.proc.kill('SIGSTOP') // the socket stays open; nothing comes back
      expect(await dropped).toMatchObject({ reason: 'heartbeat', willReconnect: true })
      const back = client.once('resynced')
      proc.proc.kill('SIGCONT')
      await back
      expect(client.state).toBe('connected')
    } finally {
      client.close()
      proc.proc.kill('SIGKILL')
      await proc.exited
      dir.remove()
    }
  }, 15_000)
})

describe('pointless reconnects are not made', () => {
  let auth: TestServer
  beforeAll(async () => {
    auth = await startServerOnTestStore({
      AUTH_SECRET: SECRET,
      HEARTBEAT_INTERVAL: '0.1',
      CONNECTION_TIMEOUT: '30',
    })
  })
  afterAll(() => auth.close())

  async function closedWith(
    client: RealtimeClient,
  ): Promise<{ event: ClosedEvent; attempts: number }> {
    let attempts = 0
    client.on('state', (e) => {
      if (e.state === 'connecting') attempts++
    })
    const event = await client.once('closed')
    return { event, attempts }
  }

  test('a token for another user (403 at the upgrade): closed with the reason, one attempt', async () => {
    const client = new RealtimeClient({
      url: auth.url,
      userId: 'mallory',
      token: await sign('alice', 60),
      autoConnect: false,
    })
    const closed = closedWith(client)
    client.connect()
    const { event, attempts } = await closed
    expect(event).toMatchObject({ code: 403, reason: 'user_id does not match the token' })
    expect(attempts).toBe(1)
    expect(client.state).toBe('closed')
  })

  test('an expired static token (401): closed, not retried', async () => {
    const client = new RealtimeClient({
      url: auth.url,
      token: await sign('alice', -10),
      autoConnect: false,
    })
    const closed = closedWith(client)
    client.connect()
    const { event, attempts } = await closed
    expect(event).toMatchObject({ code: 401, reason: 'token expired' })
    expect(attempts).toBe(1)
  })

  test('a static token that expires while connected: token_expired, closed (no fresh token to get)', async () => {
    // exp is in whole seconds: a ttl of 1 can be nearly 0 ms away; 2 leaves at least 1 s.
    const client = new RealtimeClient({ url: auth.url, token: await sign('alice', 2) })
    await reach(client, 'connected')
    const event = await client.once('closed')
    expect(event).toMatchObject({ reason: 'token_expired', code: 401 })
  })

  test('a channel the token does not grant: the subscription fails with 403 and is not retried', async () => {
    const client = new RealtimeClient({
      url: auth.url,
      token: () => sign('dave', 60, ['record_ok']),
    })
    const refused = client.subscribe('record_secret')
    const error = await refused.ready.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(RequestError)
    expect((error as RequestError).code).toBe(403)
    expect(refused.state).toBe('failed')
    const allowed = client.subscribe('record_ok')
    await allowed.ready
    // A new connection resumes what is live, not what was refused.
    client.disconnect()
    client.connect()
    await client.once('resynced')
    expect(client.subscribe('record_secret')).not.toBe(refused)
    expect(allowed.state).toBe('live')
    client.close()
  })
})

describe('token refresh', () => {
  let auth: TestServer
  beforeAll(async () => {
    auth = await startServerOnTestStore({
      AUTH_SECRET: SECRET,
      HEARTBEAT_INTERVAL: '0.1',
      CONNECTION_TIMEOUT: '30',
    })
  })
  afterAll(() => auth.close())

  test('a short token is refreshed over the open socket: same connection, the subscription keeps receiving', async () => {
    let issued = 0
    const client = new RealtimeClient({
      url: auth.url,
      token: () => {
        issued++
        return sign('erin', 3) // refreshed at half its 2–3 s (whole-second exp), not a fifth
      },
    })
    const collection = uniqueName('record')
    const subscription = client.subscribe(collection)
    await subscription.ready
    const connectionId = client.connection?.connection_id
    // Past the first token's exp, then past the second's.
    await client.once('token')
    await client.once('token')
    expect(issued).toBeGreaterThanOrEqual(3)
    const message = subscription.once('message')
    await postJson(auth, '/api/ws/broadcast/channel', { channel: collection, message: 'after' })
    expect((await message).message).toBe('after')
    expect(client.connection?.connection_id).toBe(connectionId)
    expect(client.state).toBe('connected')
    client.close()
  }, 15_000)

  test('a token that expired anyway (refresh failed): reconnects with a fresh one and resumes, nothing missed', async () => {
    let fail = true
    // The refresh gets the same token again (no later exp): the server closes at exp (4401).
    const short = sign('frank', 2)
    const client = new RealtimeClient({
      url: auth.url,
      token: () => (fail ? short : sign('frank', 60)),
    })
    const collection = uniqueName('record')
    const subscription = client.subscribe(collection)
    const received: unknown[] = []
    subscription.on('message', (m) => received.push(m.message))
    await subscription.ready
    await postJson(auth, '/api/ws/broadcast/channel', { channel: collection, message: 1 })
    const dropped = await client.once('disconnected')
    expect(dropped.reason).toBe('token_expired')
    fail = false
    // The reconnect may resync while the publish below is still committing.
    const resynced = client.once('resynced')
    await postJson(auth, '/api/ws/broadcast/channel', { channel: collection, message: 2 })
    await resynced
    await postJson(auth, '/api/ws/broadcast/channel', { channel: collection, message: 3 })
    while (received.length < 3) await subscription.once('message')
    expect(received).toEqual([1, 2, 3])
    client.close()
  }, 15_000)
})

describe('subscriptions', () => {
  test('history no longer held: a typed reset event, then live again', async () => {
    const small = await startServerOnTestStore({ HISTORY_MAX_PER_COLLECTION: '5' })
    const client = new RealtimeClient({ url: small.url, userId: 'late' })
    const collection = uniqueName('record')
    const subscription = client.subscribe(collection)
    await subscription.ready
    client.disconnect()
    for (let i = 0; i < 20; i++)
      await postJson(small, '/api/ws/broadcast/channel', { channel: collection, message: i })
    await small.retention.pass()
    const reset = subscription.once('reset')
    client.connect()
    const event: ResetEvent = await reset
    expect(event).toMatchObject({ channel: collection, reason: 'history_unavailable', offset: 20 })
    const live = subscription.once('message')
    await postJson(small, '/api/ws/broadcast/channel', { channel: collection, message: 'live' })
    expect(await live).toMatchObject({ message: 'live', offset: 21 })
    client.close()
    await small.close()
  })
})
