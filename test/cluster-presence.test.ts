import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import {
  eventually,
  getJson,
  postJson,
  runServerExpectingFailure,
  type ServerMessage,
  TestClient,
  uniqueName,
  upgradeRequest,
  within,
} from './helpers.ts'
import { type Cluster, type ClusterNode, startCluster } from './support/cluster.ts'
import { requireServices } from './support/services.ts'

await requireServices()

/** Short liveness so that a killed node's connections are gone within seconds. */
const HEARTBEAT_INTERVAL = 0.5
const CONNECTION_TIMEOUT = 2
/** CLUSTER.md: a lost node's members leave and its sessions end within CONNECTION_TIMEOUT + 10 s. */
const FAILOVER_BOUND_MS = (CONNECTION_TIMEOUT + 10) * 1000

let cluster: Cluster
let a: ClusterNode
let b: ClusterNode
let c: ClusterNode

beforeAll(async () => {
  cluster = await startCluster({
    nodes: 3,
    env: {
      HEARTBEAT_INTERVAL: String(HEARTBEAT_INTERVAL),
      CONNECTION_TIMEOUT: String(CONNECTION_TIMEOUT),
      PRESENCE_MODES: 'count_=count',
      PRESENCE_MAX_MEMBERS: '4',
      MAX_CONNECTIONS_PER_USER: '2',
    },
  })
  ;[a, b, c] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode]
}, 30_000)
afterAll(() => cluster.stop(), 30_000)

const admin = () => cluster.adminHeaders
const isPresence = (event: string) => (m: ServerMessage) =>
  m.type === 'presence' && m.data.event === event
const connect = (node: ClusterNode, query: Record<string, string>) =>
  TestClient.connect(node, query)

describe('presence over the cluster', () => {
  test('a member on one node is seen joining, updating and leaving by a subscriber on another', async () => {
    const collection = uniqueName('record')
    const bob = await connect(b, { user_id: 'bob' })
    await bob.ok({ type: 'subscribe', collection })
    const alice = await connect(a, { user_id: 'alice' })
    await alice.ok({ type: 'subscribe', collection })

    const joined = await bob.next(isPresence('join'))
    expect(joined.data).toEqual({
      user_id: 'alice',
      connection_id: alice.connectionId,
      event: 'join',
      state: null,
    })
    // Alice's node read Bob's entry from Redis: she learns he is there too.
    const bobSeen = await alice.next(isPresence('join'))
    expect(bobSeen.data).toMatchObject({ user_id: 'bob', connection_id: bob.connectionId })

    await alice.ok({ type: 'presence', collection, data: { cell: 'A1' } })
    const update = await bob.next(isPresence('update'))
    expect(update.data).toEqual({
      user_id: 'alice',
      connection_id: alice.connectionId,
      event: 'update',
      state: { cell: 'A1' },
    })

    // A late subscriber on a third node gets both, with their states.
    const carol = await connect(c, { user_id: 'carol' })
    await carol.ok({ type: 'subscribe', collection })
    const seen = await carol.collect(2, isPresence('join'))
    expect(seen.map((m) => [m.data.user_id, m.data.state]).sort()).toEqual([
      ['alice', { cell: 'A1' }],
      ['bob', null],
    ])

    await alice.ok({ type: 'unsubscribe', collection })
    for (const watcher of [bob, carol]) {
      const left = await watcher.next(isPresence('leave'))
      expect(left.data).toEqual({
        user_id: 'alice',
        connection_id: alice.connectionId,
        event: 'leave',
      })
    }
    await Promise.all([alice, bob, carol].map((client) => client.close()))
  })

  test('GET /presence, /online and /stats on a third node show every node', async () => {
    const collection = uniqueName('record')
    const onA = await connect(a, { user_id: 'erin', session_id: 'tab-a' })
    const onB = await connect(b, { user_id: 'erin', session_id: 'tab-b' })
    await onA.ok({ type: 'subscribe', collection })
    await onA.ok({ type: 'presence', collection, data: { at: 'a' } })
    await onB.ok({ type: 'subscribe', collection })
    await onA.next(isPresence('join'))

    const presence = (await getJson(c, `/api/ws/presence?channel=${collection}`, admin())).body
    expect(presence).toMatchObject({ channel: collection, mode: 'full', connections: 2, users: 1 })
    const entries = presence.members[0].connections.map(
      (entry: { session_id: string; node_id: string; state: unknown }) => [
        entry.session_id,
        entry.node_id,
        entry.state,
      ],
    )
    expect(entries).toEqual([
      ['tab-a', a.id, { at: 'a' }],
      ['tab-b', b.id, null],
    ])

    const online = (await getJson(c, '/api/ws/online', admin())).body
    const erin = online.online.find((user: { user_id: string }) => user.user_id === 'erin')
    expect(
      erin.sessions
        .map((s: { connection_id: string; node_id: string }) => [s.connection_id, s.node_id])
        .sort(),
    ).toEqual(
      [
        [onA.connectionId, a.id],
        [onB.connectionId, b.id],
      ].sort(),
    )
    expect(online.incomplete).toBeUndefined()

    // Counters come with each node's heartbeat (HEARTBEAT every 2 s).
    await eventually(async () => {
      const stats = (await getJson(c, '/api/ws/stats', admin())).body
      expect(stats.nodes.map((n: { node_id: string }) => n.node_id).sort()).toEqual(
        [a.id, b.id, c.id].sort(),
      )
      const byNode = Object.fromEntries(
        stats.nodes.map((n: { node_id: string; connections: number }) => [
          n.node_id,
          n.connections,
        ]),
      )
      expect(byNode[a.id]).toBeGreaterThanOrEqual(1)
      expect(byNode[b.id]).toBeGreaterThanOrEqual(1)
      expect(stats.connections).toBe(byNode[a.id] + byNode[b.id] + byNode[c.id])
      expect(stats.users).toBeGreaterThanOrEqual(1)
    }, 5000)
    await Promise.all([onA.close(), onB.close()])
  })

  test('count mode counts, and the member cap applies, over every node', async () => {
    const collection = uniqueName('count')
    const first = await connect(a, { user_id: 'f1' })
    await first.ok({ type: 'subscribe', collection })
    const second = await connect(b, { user_id: 'f2' })
    await second.ok({ type: 'subscribe', collection })
    const counted = await first.next(
      (m) => isPresence('count')(m) && m.data.connections === 2,
      3000,
    )
    expect(counted.data).toEqual({ event: 'count', connections: 2, users: 2 })
    // One user on two nodes is one user until both of its connections left.
    const again = await connect(b, { user_id: 'f1' })
    await again.ok({ type: 'subscribe', collection })
    const three = await second.next((m) => isPresence('count')(m) && m.data.connections === 3, 3000)
    expect(three.data).toEqual({ event: 'count', connections: 3, users: 2 })
    await first.close()
    const left = await second.next((m) => isPresence('count')(m) && m.data.connections === 2, 3000)
    expect(left.data).toEqual({ event: 'count', connections: 2, users: 2 })
    await again.close()
    const alone = await second.next((m) => isPresence('count')(m) && m.data.connections === 1, 3000)
    expect(alone.data).toEqual({ event: 'count', connections: 1, users: 1 })
    await second.close()

    // PRESENCE_MAX_MEMBERS=4: the fifth member, wherever it joins, switches every node to counts.
    const capped = uniqueName('record')
    const members: TestClient[] = []
    for (const [i, node] of [a, b, c, a].entries()) {
      const member = await connect(node, { user_id: `m${i}` })
      await member.ok({ type: 'subscribe', collection: capped })
      members.push(member)
    }
    await (members[3] as TestClient).collect(3, isPresence('join'))
    const fifth = await connect(b, { user_id: 'm4' })
    await fifth.ok({ type: 'subscribe', collection: capped })
    for (const member of [...members, fifth]) {
      const mode = await member.next(isPresence('mode'))
      expect(mode.data).toEqual({ event: 'mode', mode: 'count', connections: 5, users: 5 })
    }
    await Promise.all([...members, fifth].map((client) => client.close()))
  })
})

describe('users over the cluster', () => {
  test('broadcast/user reaches the user on every node and says where it went', async () => {
    const user = uniqueName('dora')
    const onA = await connect(a, { user_id: user })
    const onB = await connect(b, { user_id: user })
    // Admission counts come from Redis: wait until both nodes' counts are there.
    await eventually(async () => {
      const reply = await postJson(
        c,
        '/api/ws/broadcast/user',
        { user_id: user, message: 0 },
        admin(),
      )
      expect(reply.body).toEqual({ delivered: 0, nodes: 2 })
    })
    const fromA = await postJson(
      a,
      '/api/ws/broadcast/user',
      { user_id: user, message: { n: 1 } },
      admin(),
    )
    expect(fromA.body).toEqual({ delivered: 1, nodes: 2 })
    for (const client of [onA, onB]) {
      const message = await client.next((m) => m.type === 'message' && m.data.message?.n === 1)
      expect(message.data).toEqual({ message: { n: 1 } })
    }
    await Promise.all([onA.close(), onB.close()])
  })

  test('MAX_CONNECTIONS_PER_USER counts connections on every node', async () => {
    const user = uniqueName('max')
    const onA = await connect(a, { user_id: user })
    const onB = await connect(b, { user_id: user })
    // Both nodes' counts are in Redis once a user delivery finds the user on both.
    await eventually(async () => {
      const reply = await postJson(
        c,
        '/api/ws/broadcast/user',
        { user_id: user, message: 0 },
        admin(),
      )
      expect(reply.body.nodes).toBe(2)
    })
    const response = await upgradeRequest(c, `?user_id=${user}`)
    expect(response.status).toBe(429)
    const refused = await response.json()
    expect(refused.error.message).toContain('MAX_CONNECTIONS_PER_USER')
    await onB.close()
    const third = await eventually(() => connect(c, { user_id: user }))
    await Promise.all([onA.close(), third.close()])
  })

  test('a second process with a live NODE_ID is refused at start, naming NODE_ID', async () => {
    const user = uniqueName('kept')
    const kept = await connect(a, { user_id: user })
    await eventually(async () => {
      const { body } = await getJson(a, `/api/ws/sessions?user_id=${user}`, admin())
      expect(body.sessions).toHaveLength(1)
    })
    const { code, stderr } = await runServerExpectingFailure({
      DATABASE_URL: cluster.databaseUrl,
      REDIS_URL: cluster.redis.url,
      REDIS_PREFIX: cluster.redis.prefix,
      NODE_ID: a.id,
      SOCKET_PORT: '0',
    })
    expect(code).toBe(1)
    expect(stderr).toContain('NODE_ID')
    expect(stderr).toContain(`"${a.id}" is in use by a live process`)
    // The live process keeps its NODE_ID, its sessions and its connections.
    const { body } = await getJson(b, `/api/ws/sessions?user_id=${user}`, admin())
    expect(body.sessions[0]).toMatchObject({ live: true, end_reason: null, node_id: a.id })
    await kept.ok({ type: 'ping' })
    const stats = (await getJson(b, '/api/ws/stats', admin())).body
    expect(stats.nodes.map((n: { node_id: string }) => n.node_id)).toContain(a.id)
    await kept.close()
  }, 20_000)
})

describe('a node that dies', () => {
  test(
    'its members leave everywhere and its sessions end node_lost within CONNECTION_TIMEOUT + 10 s',
    async () => {
      const collection = uniqueName('record')
      const watcher = await connect(a, { user_id: 'watcher' })
      await watcher.ok({ type: 'subscribe', collection })
      const doomed = await connect(c, { user_id: 'doomed', session_id: 'on-c' })
      await doomed.ok({ type: 'subscribe', collection })
      const joined = await watcher.next(isPresence('join'))
      expect(joined.data.connection_id).toBe(doomed.connectionId)
      // Sessions are written about once a second: wait until this one is stored.
      await eventually(async () => {
        const { body } = await getJson(a, '/api/ws/sessions?user_id=doomed', admin())
        expect(body.sessions).toHaveLength(1)
        expect(body.sessions[0]).toMatchObject({ live: true, node_id: c.id })
      })

      const killedAt = performance.now()
      c.kill('SIGKILL')
      await c.exited
      const left = await within(
        watcher.next(isPresence('leave'), FAILOVER_BOUND_MS),
        FAILOVER_BOUND_MS,
        'the leave of the dead node member',
      )
      const leftAfter = performance.now() - killedAt
      expect(left.data).toEqual({
        user_id: 'doomed',
        connection_id: doomed.connectionId,
        event: 'leave',
      })
      const ended = await eventually(async () => {
        const { body } = await getJson(b, '/api/ws/sessions?user_id=doomed', admin())
        expect(body.sessions[0]).toMatchObject({
          live: false,
          end_reason: 'node_lost',
          node_id: c.id,
        })
        return performance.now() - killedAt
      }, FAILOVER_BOUND_MS)
      expect(leftAfter).toBeLessThan(FAILOVER_BOUND_MS)
      expect(ended).toBeLessThan(FAILOVER_BOUND_MS)

      const presence = (await getJson(b, `/api/ws/presence?channel=${collection}`, admin())).body
      expect(presence.members.map((m: { user_id: string }) => m.user_id)).toEqual(['watcher'])
      const stats = (await getJson(a, '/api/ws/stats', admin())).body
      expect(stats.nodes.map((n: { node_id: string }) => n.node_id).sort()).toEqual(
        [a.id, b.id].sort(),
      )
      await watcher.close()
    },
    FAILOVER_BOUND_MS + 10_000,
  )

  test(
    'a node paused past the bound is declared lost, drops its connections and rejoins',
    async () => {
      const collection = uniqueName('record')
      const watcher = await connect(a, { user_id: 'watcher' })
      await watcher.ok({ type: 'subscribe', collection })
      const sleeper = await connect(b, { user_id: 'sleeper' })
      await sleeper.ok({ type: 'subscribe', collection })
      await watcher.next(isPresence('join'))

      b.kill('SIGSTOP')
      const left = await watcher.next(isPresence('leave'), FAILOVER_BOUND_MS)
      expect(left.data.connection_id).toBe(sleeper.connectionId)
      const alone = (await getJson(a, '/api/ws/stats', admin())).body
      expect(alone.nodes.map((n: { node_id: string }) => n.node_id)).toEqual([a.id])
      b.kill('SIGCONT')

      // Its connections go (the clients reconnect and resume), and it registers again.
      await within(sleeper.closed, 5000, 'the paused node closing its sockets')
      await eventually(async () => {
        const stats = (await getJson(a, '/api/ws/stats', admin())).body
        expect(stats.nodes.map((n: { node_id: string }) => n.node_id).sort()).toEqual(
          [a.id, b.id].sort(),
        )
      }, 5000)
      expect(b.lines.some((line) => line.includes('declared this node lost'))).toBe(true)
      const back = await eventually(() => connect(b, { user_id: 'sleeper' }), 5000)
      await back.ok({ type: 'subscribe', collection })
      const rejoined = await watcher.next(isPresence('join'))
      expect(rejoined.data.connection_id).toBe(back.connectionId)
      await Promise.all([watcher.close(), back.close()])
    },
    FAILOVER_BOUND_MS + 20_000,
  )
})
