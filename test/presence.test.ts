import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import {
  eventually,
  getJson,
  type ServerMessage,
  silentSocket,
  spawnServer,
  startServerOnTestStore,
  TestClient,
  type TestServer,
  tempDir,
  uniqueName,
} from './helpers.ts'

let server: TestServer
beforeAll(async () => {
  server = await startServerOnTestStore({
    PRESENCE_MODES: 'count_=count,quiet_=off',
    PRESENCE_RATE: '5',
    PRESENCE_MAX_SIZE: '256',
  })
})
afterAll(() => server.close())

const presenceOf = async (channel: string) =>
  (await getJson(server, `/api/ws/presence?channel=${channel}`)).body
const isPresence = (event: string) => (m: ServerMessage) =>
  m.type === 'presence' && m.data.event === event

describe('full presence', () => {
  test('join, update and leave reach the others, not the sender', async () => {
    const collection = uniqueName('record')
    const alice = await TestClient.connect(server, { user_id: 'alice' })
    const bob = await TestClient.connect(server, { user_id: 'bob' })
    await alice.ok({ type: 'subscribe', collection })
    await bob.ok({ type: 'subscribe', collection })

    const bobJoined = await alice.next(isPresence('join'))
    expect(bobJoined).toMatchObject({
      collection,
      data: { user_id: 'bob', connection_id: bob.connectionId, event: 'join', state: null },
    })

    const reply = await bob.ok({ type: 'presence', collection, data: { cell: ['rec1', 'fld1'] } })
    expect(reply.data).toEqual({ channel: collection, mode: 'full' })
    const update = await alice.next(isPresence('update'))
    expect(update.data).toEqual({
      user_id: 'bob',
      connection_id: bob.connectionId,
      event: 'update',
      state: { cell: ['rec1', 'fld1'] },
    })

    await bob.ok({ type: 'unsubscribe', collection })
    const left = await alice.next(isPresence('leave'))
    expect(left.data).toEqual({ user_id: 'bob', connection_id: bob.connectionId, event: 'leave' })

    await Promise.all([alice.settle(), bob.settle()])
    expect(
      bob.all((m) => m.type === 'presence' && m.data.connection_id === bob.connectionId),
    ).toHaveLength(0)
    expect(
      alice.all((m) => m.type === 'presence' && m.data.connection_id === alice.connectionId),
    ).toHaveLength(0)
    await Promise.all([alice.close(), bob.close()])
  })

  test('a new subscriber gets the current presence as joins before its reply', async () => {
    const collection = uniqueName('record')
    const present = await Promise.all(
      ['u1', 'u2'].map((u) => TestClient.connect(server, { user_id: u })),
    )
    for (const [i, client] of present.entries()) {
      await client.ok({ type: 'subscribe', collection })
      await client.ok({ type: 'presence', collection, data: { n: i } })
    }
    const late = await TestClient.connect(server, { user_id: 'late' })
    await late.ok({ type: 'subscribe', collection })
    const replyAt = late.received.findIndex((m) => m.type === 'subscribe')
    const before = late.received.slice(0, replyAt).filter((m) => m.type === 'presence')
    expect(before.map((m) => [m.data.user_id, m.data.event, m.data.state])).toEqual([
      ['u1', 'join', { n: 0 }],
      ['u2', 'join', { n: 1 }],
    ])
    await Promise.all([...present, late].map((c) => c.close()))
  })

  test('a user with three tabs shows once with three entries and leaves with the last tab', async () => {
    const collection = uniqueName('record')
    const watcher = await TestClient.connect(server, { user_id: 'watcher' })
    await watcher.ok({ type: 'subscribe', collection })
    const tabs = await Promise.all(
      [1, 2, 3].map((i) => TestClient.connect(server, { user_id: 'carol', session_id: `tab${i}` })),
    )
    for (const [i, tab] of tabs.entries()) {
      await tab.ok({ type: 'subscribe', collection })
      await tab.ok({ type: 'presence', collection, data: { tab: i } })
    }
    const view = await presenceOf(collection)
    expect(view).toMatchObject({ channel: collection, mode: 'full', connections: 4, users: 2 })
    const carol = view.members.find((m: { user_id: string }) => m.user_id === 'carol')
    // Ordered by joined_at; in a cluster, tabs that joined in one millisecond come in any order.
    expect(
      carol.connections
        .map((c: { session_id: string; state: unknown }) => [c.session_id, c.state])
        .sort(),
    ).toEqual([
      ['tab1', { tab: 0 }],
      ['tab2', { tab: 1 }],
      ['tab3', { tab: 2 }],
    ])
    await tabs[0]?.close()
    await tabs[1]?.close()
    await eventually(async () => {
      const partial = await presenceOf(collection)
      expect(partial.users).toBe(2)
      expect(partial.connections).toBe(2)
    })
    await tabs[2]?.close()
    await eventually(async () => {
      const gone = await presenceOf(collection)
      expect(gone.members.map((m: { user_id: string }) => m.user_id)).toEqual(['watcher'])
    })
    const leaves = await watcher.collect(3, isPresence('leave'))
    expect(new Set(leaves.map((m) => m.data.connection_id))).toEqual(
      new Set(tabs.map((t) => t.connectionId)),
    )
    await watcher.close()
  })

  test('a document channel has its own presence, apart from its collection', async () => {
    const collection = uniqueName('record')
    const onCollection = await TestClient.connect(server)
    const onDocument = await TestClient.connect(server)
    await onCollection.ok({ type: 'subscribe', collection })
    await onDocument.ok({ type: 'subscribe', collection, document: 'rec1' })
    await onDocument.ok({ type: 'presence', collection, document: 'rec1', data: { typing: true } })
    expect((await presenceOf(`${collection}.rec1`)).connections).toBe(1)
    expect((await presenceOf(collection)).connections).toBe(1)
    await onCollection.settle()
    expect(onCollection.all((m) => m.type === 'presence')).toHaveLength(0)
    await Promise.all([onCollection.close(), onDocument.close()])
  })

  test('leaves on timeout and on an abrupt close without a close frame', async () => {
    const quick = await startServerOnTestStore({
      HEARTBEAT_INTERVAL: '0.1',
      CONNECTION_TIMEOUT: '0.4',
    })
    try {
      const collection = uniqueName('record')
      const watcher = await TestClient.connect(quick, { user_id: 'watcher' })
      await watcher.ok({ type: 'subscribe', collection })
      const sleeper = await silentSocket(quick, 'user_id=sleeper')
      sleeper.sendText(JSON.stringify({ type: 'subscribe', collection }))
      const joined = await watcher.next(isPresence('join'))
      expect(joined.data.user_id).toBe('sleeper')
      const left = await watcher.next(isPresence('leave'), 3000)
      expect(left.data.connection_id).toBe(joined.data.connection_id)
      await sleeper.ended
      expect(sleeper.closeCode()).toBe(4408)

      const dropper = await silentSocket(quick, 'user_id=dropper')
      dropper.sendText(JSON.stringify({ type: 'subscribe', collection }))
      const dropperJoined = await watcher.next(isPresence('join'))
      dropper.destroy() // TCP gone, no close frame
      const dropperLeft = await watcher.next(isPresence('leave'))
      expect(dropperLeft.data.connection_id).toBe(dropperJoined.data.connection_id)
      await watcher.close()
    } finally {
      await quick.close()
    }
  })
})

describe('presence limits', () => {
  test('a state over PRESENCE_MAX_SIZE is 413; null clears the state', async () => {
    const collection = uniqueName('record')
    const client = await TestClient.connect(server)
    await client.ok({ type: 'subscribe', collection })
    const big = await client.request({
      type: 'presence',
      collection,
      data: { blob: 'x'.repeat(300) },
    })
    expect(big.type).toBe('error')
    expect(big.error?.code).toBe(413)
    expect(big.error?.details).toMatchObject({ field: 'data', limit: 256 })
    await client.ok({ type: 'presence', collection, data: { ok: 1 } })
    await client.ok({ type: 'presence', collection, data: null })
    // In a cluster the view is read from Redis, written when the coalesced update goes out.
    await eventually(async () =>
      expect((await presenceOf(collection)).members[0].connections[0].state).toBeNull(),
    )
    await client.close()
  })

  test('presence in a channel the connection has not subscribed to is a 400 naming the channel', async () => {
    const client = await TestClient.connect(server)
    const reply = await client.request({
      type: 'presence',
      collection: 'record_nope',
      data: { x: 1 },
    })
    expect(reply.type).toBe('error')
    expect(reply.error?.code).toBe(400)
    expect(reply.error?.message).toContain('not subscribed to record_nope')
    expect(reply.error?.details).toMatchObject({ field: 'collection', channel: 'record_nope' })
    await client.close()
  })

  test('a burst of 100 updates arrives as a few, and the last state always arrives', async () => {
    const collection = uniqueName('record')
    const sender = await TestClient.connect(server, { user_id: 'burst' })
    const watcher = await TestClient.connect(server, { user_id: 'watch' })
    await sender.ok({ type: 'subscribe', collection })
    await watcher.ok({ type: 'subscribe', collection })
    for (let i = 0; i < 100; i++) sender.send({ type: 'presence', collection, data: { i } })
    await sender.settle()
    const last = await watcher.next((m) => isPresence('update')(m) && m.data.state.i === 99, 3000)
    const updates = watcher.all(isPresence('update'))
    expect(updates.at(-1)).toBe(last)
    expect(updates.length).toBeLessThanOrEqual(3)
    expect(
      (await presenceOf(collection)).members.find((m: { user_id: string }) => m.user_id === 'burst')
        .connections[0].state,
    ).toEqual({ i: 99 })
    await Promise.all([sender.close(), watcher.close()])
  })
})

describe('presence modes', () => {
  test('count mode sends coalesced numbers, not N² events', async () => {
    const collection = uniqueName('count')
    const first = await TestClient.connect(server, { user_id: 'first' })
    const reply = await first.ok({ type: 'subscribe', collection })
    const initial = first.received
      .slice(0, first.received.indexOf(reply))
      .filter((m) => m.type === 'presence')
    expect(initial.map((m) => m.data)).toEqual([{ event: 'count', connections: 1, users: 1 }])

    const crowd = await Promise.all(
      Array.from({ length: 30 }, (_, i) => TestClient.connect(server, { user_id: `c${i % 10}` })),
    )
    await Promise.all(crowd.map((c) => c.ok({ type: 'subscribe', collection })))
    const final = await first.next((m) => m.type === 'presence' && m.data.connections === 31, 3000)
    expect(final.data).toEqual({ event: 'count', connections: 31, users: 11 })
    expect(first.all((m) => m.type === 'presence').length).toBeLessThanOrEqual(6)
    expect(first.all((m) => m.type === 'presence' && m.data.event !== 'count')).toHaveLength(0)

    const stateReply = await first.ok({ type: 'presence', collection, data: { cursor: 1 } })
    expect(stateReply.data.mode).toBe('count')
    const view = await presenceOf(collection)
    expect(view).toEqual({ channel: collection, mode: 'count', connections: 31, users: 11 })

    // A user counts until its last connection leaves, by close or by unsubscribe.
    const c0a = crowd[0] as TestClient
    const c0b = crowd[10] as TestClient
    const c0c = crowd[20] as TestClient
    await Promise.all([c0a.close(), c0b.close()])
    const fewer = await first.next((m) => m.type === 'presence' && m.data.connections === 29, 3000)
    expect(fewer.data).toEqual({ event: 'count', connections: 29, users: 11 })
    await c0c.ok({ type: 'unsubscribe', collection })
    const gone = await first.next((m) => m.type === 'presence' && m.data.connections === 28, 3000)
    expect(gone.data).toEqual({ event: 'count', connections: 28, users: 10 })
    await Promise.all([first, ...crowd.slice(1, 10), ...crowd.slice(11)].map((c) => c.close()))
  })

  test('off mode tracks nothing', async () => {
    const collection = uniqueName('quiet')
    const a = await TestClient.connect(server)
    const b = await TestClient.connect(server)
    await a.ok({ type: 'subscribe', collection })
    await b.ok({ type: 'subscribe', collection })
    expect((await b.ok({ type: 'presence', collection, data: { x: 1 } })).data.mode).toBe('off')
    await Promise.all([a.settle(), b.settle()])
    const events = (m: ServerMessage) => m.type === 'presence' && m.id === undefined
    expect([...a.all(events), ...b.all(events)]).toHaveLength(0)
    expect(await presenceOf(collection)).toEqual({
      channel: collection,
      mode: 'off',
      connections: 0,
      users: 0,
    })
    await Promise.all([a.close(), b.close()])
  })
})

describe('online users and sessions', () => {
  test('the REST routes show what the sockets see, with end reasons', async () => {
    const own = await startServerOnTestStore({
      HEARTBEAT_INTERVAL: '0.1',
      CONNECTION_TIMEOUT: '0.4',
    })
    try {
      const dana = await TestClient.connect(own, { user_id: 'dana', session_id: 's1' })
      await dana.ok({ type: 'connect', data: { client: 'teable-web/2.1' } })
      const dana2 = await TestClient.connect(own, { user_id: 'dana', session_id: 's2' })
      const erin = await TestClient.connect(own, { user_id: 'erin' })
      const online = (await getJson(own, '/api/ws/online')).body
      expect(online.users).toBe(2)
      const danaOnline = online.online.find((u: { user_id: string }) => u.user_id === 'dana')
      expect(danaOnline.sessions.map((s: { session_id: string }) => s.session_id).sort()).toEqual([
        's1',
        's2',
      ])
      const s1 = danaOnline.sessions.find((s: { session_id: string }) => s.session_id === 's1')
      expect(s1).toMatchObject({
        connection_id: dana.connectionId,
        client: 'teable-web/2.1',
        remote_address: '127.0.0.1',
      })
      expect(s1).toHaveProperty('user_agent')

      dana.send({ type: 'disconnect' })
      await dana.closed
      await dana2.close()
      const sleeper = await silentSocket(own, 'user_id=dana&session_id=s3')
      await sleeper.ended
      await eventually(async () => {
        const { body } = await getJson(own, '/api/ws/sessions?user_id=dana')
        expect(body.sessions[0].user_agent).toBe('teable-realtime-tests')
        expect(
          body.sessions.map((s: { session_id: string; live: boolean; end_reason: string }) => [
            s.session_id,
            s.live,
            s.end_reason,
          ]),
        ).toEqual([
          ['s3', false, 'timeout'],
          ['s2', false, 'client_close'],
          ['s1', false, 'client'],
        ])
      })
      const erinSessions = (await getJson(own, '/api/ws/sessions?user_id=erin')).body.sessions
      expect(erinSessions).toHaveLength(1)
      expect(erinSessions[0]).toMatchObject({
        connection_id: erin.connectionId,
        live: true,
        ended_at: null,
        end_reason: null,
      })
      const after = (await getJson(own, '/api/ws/online')).body
      expect(after.online.map((u: { user_id: string }) => u.user_id)).toEqual(['erin'])
      expect((await getJson(own, '/api/ws/sessions')).status).toBe(400)
      await erin.close()
    } finally {
      await own.close()
    }
  })

  test('a restart after a crash closes the sessions left open; old ended sessions are pruned', async () => {
    const dir = tempDir()
    const env = { DB_PATH: join(dir.path, 's.db') }
    const first = await spawnServer(env)
    const client = await TestClient.connect(first, { user_id: 'frank', session_id: 'before-crash' })
    // Sessions are written about once a second; wait for this one to be stored.
    const stored = async () => {
      const probe = (await getJson(first, '/api/ws/sessions?user_id=frank')).body
      expect(probe.sessions).toHaveLength(1)
    }
    await eventually(stored)
    first.proc.kill('SIGKILL')
    await first.exited
    await client.closed

    const second = await spawnServer(env)
    try {
      const { body } = await getJson(second, '/api/ws/sessions?user_id=frank')
      expect(body.sessions).toHaveLength(1)
      expect(body.sessions[0]).toMatchObject({
        session_id: 'before-crash',
        live: false,
        end_reason: 'server_restart',
      })
      expect(typeof body.sessions[0].ended_at).toBe('string')
    } finally {
      second.proc.kill('SIGTERM')
      await second.exited
    }
    // A third start with a retention shorter than the session's age prunes it.
    await Bun.sleep(1100) // the session must be older than SESSION_RETENTION=1
    const third = await spawnServer({ ...env, SESSION_RETENTION: '1' })
    try {
      const { body } = await getJson(third, '/api/ws/sessions?user_id=frank')
      expect(body.sessions).toHaveLength(0)
    } finally {
      third.proc.kill('SIGTERM')
      await third.exited
      dir.remove()
    }
  })
})
