import type Redis from 'ioredis'
import type { Gate } from '../auth/gate.ts'
import type { Connection } from '../hub/connection.ts'
import type { Hub } from '../hub/hub.ts'
import type { Logger } from '../observability/logger.ts'
import type { Presence } from '../presence/presence.ts'
import type { Readiness, SessionBackend } from '../store/store.ts'
import type { Bus } from './bus.ts'
import { RedisPresenceLink } from './presence-link.ts'
import { type NodeInfo, Registry } from './registry.ts'

/** How long GET /api/ws/online waits for the other nodes' answers. */
const GATHER_MS = 1500

/** A live connection as /online and /sessions show it. */
export interface LiveSession {
  connection_id: string
  session_id: string
  client: string | null
  user_agent: string | null
  remote_address: string | null
  connected_at: string
  last_seen: string
  node_id: string
}

export interface OnlineUser {
  user_id: string
  sessions: LiveSession[]
}

const iso = (ms: number) => new Date(ms).toISOString()

export function liveSession(connection: Connection, nodeId: string): LiveSession {
  return {
    connection_id: connection.id,
    session_id: connection.sessionId,
    client: connection.client ?? null,
    user_agent: connection.userAgent,
    remote_address: connection.remoteAddress,
    connected_at: iso(connection.connectedAt),
    last_seen: iso(connection.lastSeen),
    node_id: nodeId,
  }
}

/** This process's online users, as /online shows them. */
export function localOnline(hub: Hub, nodeId: string): OnlineUser[] {
  return [...hub.users()].map(([user_id, connections]) => ({
    user_id,
    sessions: [...connections].map((connection) => liveSession(connection, nodeId)),
  }))
}

export interface ClusterParts {
  /** The RedisBus: pub/sub, and `commands` for keys and scripts. */
  bus: Bus & { readonly commands: Redis }
  hub: Hub
  presence: Presence
  /** Admission counts MAX_CONNECTIONS_PER_USER over the cluster through it. */
  gate: Gate
  sessions: Pick<SessionBackend, 'closeNode'>
  logger: Logger
}

/** What server.ts, the routes and the gate use of the cluster. */
export interface ClusterNode {
  readonly nodeId: string
  /**
   * Registers this node: a NODE_ID that a live process uses is refused (a
   * ConfigError naming NODE_ID); one that a process which just died used is
   * taken over once that one missed a heartbeat (its presence entries leave,
   * its sessions end `node_lost`). Then ends this NODE_ID's sessions still
   * open in the store (`server_restart`: a crash Redis knew nothing of).
   * Upgrades are refused (503) until it resolves.
   */
  start(): Promise<void>
  /** Holds the leader lease: runs history retention and session pruning now. */
  readonly leader: boolean
  /** Live nodes with their counters (one heartbeat old) and the cluster's distinct users. */
  nodes(): Promise<{ nodes: NodeInfo[]; users: number }>
  /**
   * Every node's online users, asked of each node now (exact, not a
   * heartbeat old); `incomplete` when a node did not answer within 1.5 s.
   * Redis away: this node's users, with `redis: 'down'`.
   */
  online(): Promise<OnlineAnswer>
  /**
   * Sends a frame to a user's connections on every node: `delivered` on this
   * one, `nodes` the processes holding the user's connections it was handed
   * to (this one included when it delivered any). Redis away: this node's
   * connections only, with `redis: 'down'`.
   */
  sendToUser(userId: string, frame: string): Promise<UserDelivery>
  /** A user's connections over the cluster (this node's exact, the others' as Redis has them). */
  connectionsOf(userId: string): Promise<number>
  /** Why upgrades are refused now (declared lost, NODE_ID taken), or undefined. */
  refusal(): string | undefined
  readiness(): Readiness
  /** Leaves the cluster: after the sockets are closed, before the bus. */
  stop(): Promise<void>
}

export interface OnlineAnswer {
  users: OnlineUser[]
  incomplete: boolean
  redis?: 'down'
}

export interface UserDelivery {
  delivered: number
  nodes: number
  redis?: 'down'
}

/** A node's own channel: user deliveries and answers to its questions. */
const inbox = (nodeId: string) => `inbox:${nodeId}`

type Ask = { id: string; from: string }
type InboxMessage =
  | { kind: 'user'; user_id: string; frame: string }
  | { kind: 'online'; id: string; users: OnlineUser[] }

interface Gathering {
  replies: OnlineUser[][]
  expected: number
  done: () => void
}

class Cluster implements ClusterNode {
  readonly nodeId: string
  readonly registry: Registry
  private readonly link: RedisPresenceLink
  /** start() is done: upgrades are admitted. */
  private open = false
  private readonly gatherings = new Map<string, Gathering>()
  private readonly inboxHandler = (message: string) =>
    this.received(JSON.parse(message) as InboxMessage)
  private readonly askHandler = (message: string) => this.answer(JSON.parse(message) as Ask)

  constructor(private readonly parts: ClusterParts) {
    const { bus, hub, presence, gate, sessions, logger } = parts
    this.nodeId = bus.nodeId
    this.registry = new Registry(
      bus.commands,
      bus.nodeId,
      bus.prefix,
      {
        counters: () => ({
          connections: hub.connectionCount,
          users: hub.userCount,
          channels: hub.channelCount,
          subscriptions: hub.totalSubscriptions,
          messagesIn: hub.stats.messagesIn,
          messagesOut: hub.stats.messagesOut,
          errors: hub.stats.errors,
        }),
        cleanup: async (nodeId, endSessions) => {
          await this.link.dropNode(nodeId)
          if (!endSessions) return
          const ended = await sessions.closeNode(nodeId, 'node_lost')
          logger.info({ node_id: nodeId, sessions: ended }, 'sessions of a lost node ended')
        },
        declaredLost: () => {
          for (const connection of [...hub.connections()]) hub.disconnect(connection, 'shutdown')
        },
        resync: async () => {
          await this.registry.replaceUsers(hub.userCounts())
          await presence.resync()
        },
        listening: async (nodeId) => {
          const [, subscribers] = (await bus.commands.pubsub(
            'NUMSUB',
            `${bus.prefix}${inbox(nodeId)}`,
          )) as [string, number]
          return subscribers > 0
        },
      },
      logger,
    )
    this.link = new RedisPresenceLink(bus, bus.commands, this.registry, logger)
    presence.connect(this.link)
    gate.useCluster(this)
    const note = (connection: Connection) =>
      this.registry.noteUser(connection.userId, hub.connectionsOf(connection.userId))
    hub.listen({ onOpen: note, onClose: note })
    // Messages published while Redis was away are lost: the next heartbeat reads everything again.
    bus.onReconnect(() => this.registry.markDirty())
  }

  get leader(): boolean {
    return this.registry.leader
  }

  async start(): Promise<void> {
    const { bus, sessions, logger } = this.parts
    // Registered first: until then the inbox tells whether another process has this NODE_ID.
    await this.registry.start()
    await bus.subscribe(inbox(this.nodeId), this.inboxHandler)
    await bus.subscribe('ask', this.askHandler)
    // Only now is it known that no live process has these sessions.
    const dangling = await sessions.closeNode(this.nodeId, 'server_restart')
    if (dangling > 0) logger.warn({ sessions: dangling }, 'closed sessions left open by a crash')
    this.open = true
  }

  async stop(): Promise<void> {
    await this.registry.stop()
    this.unsubscribe()
  }

  nodes(): Promise<{ nodes: NodeInfo[]; users: number }> {
    return this.registry.live()
  }

  async online(): Promise<OnlineAnswer> {
    const { bus, hub } = this.parts
    const here = localOnline(hub, this.nodeId)
    if (!bus.up) return { users: here, incomplete: false, redis: 'down' }
    const id = crypto.randomUUID()
    const gathering: Gathering = { replies: [], expected: Number.POSITIVE_INFINITY, done: () => {} }
    const done = new Promise<void>((resolve) => {
      gathering.done = resolve
    })
    this.gatherings.set(id, gathering)
    let timer: ReturnType<typeof setTimeout> | undefined
    try {
      const ask: Ask = { id, from: this.nodeId }
      // Every node listens to `ask`, this one too: the others are the receivers but one.
      gathering.expected = (await bus.publish('ask', JSON.stringify(ask))) - 1
      if (gathering.replies.length < gathering.expected)
        await Promise.race([
          done,
          new Promise((resolve) => (timer = setTimeout(resolve, GATHER_MS))),
        ])
    } catch {
      return { users: here, incomplete: false, redis: 'down' }
    } finally {
      clearTimeout(timer)
      this.gatherings.delete(id)
    }
    const byUser = new Map<string, OnlineUser>()
    for (const user of [here, ...gathering.replies].flat()) {
      const known = byUser.get(user.user_id)
      if (known) known.sessions.push(...user.sessions)
      else byUser.set(user.user_id, { user_id: user.user_id, sessions: [...user.sessions] })
    }
    return {
      users: [...byUser.values()],
      incomplete: gathering.replies.length < gathering.expected,
    }
  }

  async sendToUser(userId: string, frame: string): Promise<UserDelivery> {
    const { bus, hub } = this.parts
    const delivered = hub.publishToUser(userId, 'message', frame)
    let nodes = delivered > 0 ? 1 : 0
    if (!bus.up) return { delivered, nodes, redis: 'down' }
    const message: InboxMessage = { kind: 'user', user_id: userId, frame }
    const text = JSON.stringify(message)
    try {
      for (const nodeId of await this.registry.holders(userId))
        if (nodeId !== this.nodeId) nodes += await bus.publish(inbox(nodeId), text)
    } catch {
      return { delivered, nodes, redis: 'down' }
    }
    return { delivered, nodes }
  }

  async connectionsOf(userId: string): Promise<number> {
    const here = this.parts.hub.connectionsOf(userId)
    if (!this.parts.bus.up || this.registry.status !== 'live') return here
    try {
      const inRedis = await this.registry.userConnections(userId)
      return inRedis.total - inRedis.here + here
    } catch {
      return here // Redis away: this node's count is all it knows
    }
  }

  refusal(): string | undefined {
    const status = this.registry.status
    if (status === 'starting' || !this.open) return 'this node is joining the cluster; retry'
    if (status === 'lost') return 'this node is rejoining the cluster; retry'
    if (status === 'taken') return `another process uses NODE_ID ${this.nodeId}`
    return undefined
  }

  readiness(): Readiness {
    const reason = this.refusal()
    return reason === undefined ? { ok: true } : { ok: false, reason }
  }

  private received(message: InboxMessage): void {
    if (message.kind === 'user') {
      this.parts.hub.publishToUser(message.user_id, 'message', message.frame)
      return
    }
    const gathering = this.gatherings.get(message.id)
    if (!gathering) return // answered after the wait ended
    gathering.replies.push(message.users)
    if (gathering.replies.length >= gathering.expected) gathering.done()
  }

  private answer(ask: Ask): void {
    if (ask.from === this.nodeId) return
    const reply: InboxMessage = {
      kind: 'online',
      id: ask.id,
      users: localOnline(this.parts.hub, this.nodeId),
    }
    this.parts.bus.publish(inbox(ask.from), JSON.stringify(reply)).catch((error: unknown) => {
      this.parts.logger.debug({ err: error }, 'answering an online query failed')
    })
  }

  private unsubscribe(): void {
    this.parts.bus.unsubscribe(inbox(this.nodeId), this.inboxHandler)
    this.parts.bus.unsubscribe('ask', this.askHandler)
  }
}

/**
 * Cluster mode's one entry point: presence, user counts, stats and
 * admission go through Redis from here on (built with the server's parts,
 * before it listens); `start()` then registers the node, which heartbeats,
 * holds or waits for the leader lease, and cleans up after nodes that go
 * silent. `stop()` after the sockets are closed, before the bus.
 */
export function createCluster(parts: ClusterParts): ClusterNode {
  return new Cluster(parts)
}
