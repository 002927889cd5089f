import type { ChannelRef } from '../protocol/channels.ts'
import { channelName } from '../protocol/channels.ts'
import { type CloseReason, closeCodes, type EndReason } from '../protocol/close.ts'
import { encode } from '../protocol/envelope.ts'
import type { FanoutBroker } from './broker.ts'
import { Connection, type Socket } from './connection.ts'
import { Stats } from './stats.ts'

/** Longest user agent or address interned (real ones are far shorter). */
const SHARED_MAX_LENGTH = 256

const collectionTopic = (collection: string) => `c:${collection}`
const documentTopic = (collection: string, document: string) => `d:${collection}.${document}`
const presenceTopic = (channel: string) => `p:${channel}`

export interface ConnectionListener {
  onOpen?(connection: Connection): void
  onClose?(connection: Connection, reason: EndReason): void
}

/** Who is on the other end, as the upgrade request told. */
export interface ClientInfo {
  userId: string
  /** The client's session_id; without one, the session is this connection (its id). */
  sessionId: string | undefined
  userAgent: string | null
  remoteAddress: string | null
}

/**
 * Live connections (by socket, id and user), their logical subscriptions and
 * the fan-out. A socket is in the collection topic when it follows the
 * collection, and in a document topic only when it follows that document but
 * not its collection: a document message is published to both topics and so
 * reaches everyone once.
 */
export class Hub {
  readonly stats = new Stats()
  /** Interned user agents and addresses (see shared). */
  private readonly strings = new Map<string, string>()
  /**
   * Live connections by id. A socket's own Connection is kept in its `data`
   * slot (Bun passes the same socket object to every event), so there is no
   * map by socket: each map of every connection costs ~100-200 bytes per
   * entry at 10,000 connections.
   */
  private readonly byId = new Map<string, Connection>()
  /** A user's live connections: the Connection itself while it is the only one (the usual case). */
  private readonly byUser = new Map<string, Connection | Set<Connection>>()
  /** Logical channel → number of subscribed connections. */
  private readonly channelCounts = new Map<string, number>()
  private subscriptionCount = 0
  private broker: FanoutBroker | undefined
  private readonly listeners: ConnectionListener[] = []

  attach(broker: FanoutBroker): void {
    this.broker = broker
  }

  listen(listener: ConnectionListener): void {
    this.listeners.push(listener)
  }

  private get fanout(): FanoutBroker {
    if (!this.broker) throw new Error('hub used before the server was listening')
    return this.broker
  }

  register(socket: Socket, info: ClientInfo, now: number): Connection {
    const { userId, sessionId, userAgent, remoteAddress } = info
    const id = crypto.randomUUID()
    const connection = new Connection(
      socket,
      id,
      userId,
      // The same string, not a second UUID: ~80 bytes less per connection.
      sessionId ?? id,
      now,
      this.shared(userAgent),
      this.shared(remoteAddress),
    )
    socket.data = connection
    this.byId.set(connection.id, connection)
    const tabs = this.byUser.get(userId)
    if (tabs === undefined) this.byUser.set(userId, connection)
    else if (tabs instanceof Connection) this.byUser.set(userId, new Set([tabs, connection]))
    else tabs.add(connection)
    for (const listener of this.listeners) listener.onOpen?.(connection)
    return connection
  }

  /**
   * One string object per distinct value: every header read is a new copy,
   * and thousands of connections share a few user agents and addresses.
   */
  private shared(value: string | null): string | null {
    // Short values only: a client choosing a long unique header must not fill the table.
    if (value === null || value.length > SHARED_MAX_LENGTH) return value
    const known = this.strings.get(value)
    if (known !== undefined) return known
    if (this.strings.size >= 10_000) this.strings.clear() // bounded: many distinct values gain nothing
    this.strings.set(value, value)
    return value
  }

  /** Forgets a closed socket; Bun has already dropped its topics. */
  unregister(socket: object): Connection | undefined {
    const connection = this.get(socket)
    if (!connection) return undefined
    const reason: EndReason = connection.endReason ?? 'client_close'
    connection.endReason = reason
    this.stats.countDisconnect(reason)
    connection.socket.data = undefined
    this.byId.delete(connection.id)
    const tabs = this.byUser.get(connection.userId)
    if (tabs === connection) this.byUser.delete(connection.userId)
    else if (tabs instanceof Set) {
      tabs.delete(connection)
      if (tabs.size === 1)
        this.byUser.set(connection.userId, tabs.values().next().value as Connection)
    }
    for (const channel of connection.channels) this.decrementChannel(channel)
    this.subscriptionCount -= connection.channels.size
    for (const listener of this.listeners) listener.onClose?.(connection, reason)
    return connection
  }

  get(socket: object): Connection | undefined {
    const data = (socket as { data?: unknown }).data
    return data instanceof Connection && data.socket === socket ? data : undefined
  }

  getById(id: string): Connection | undefined {
    return this.byId.get(id)
  }

  connections(): IterableIterator<Connection> {
    return this.byId.values()
  }

  /** Every online user with their live connections. */
  *users(): IterableIterator<[string, ReadonlySet<Connection>]> {
    for (const [userId, tabs] of this.byUser)
      yield [userId, tabs instanceof Connection ? new Set([tabs]) : tabs]
  }

  /** Every online user with how many live connections they have (no per-user allocation). */
  *userCounts(): IterableIterator<[string, number]> {
    for (const [userId, tabs] of this.byUser)
      yield [userId, tabs instanceof Connection ? 1 : tabs.size]
  }

  /**
   * A user's live connections as held: the Connection itself while it is the
   * only one, else their Set (no allocation; for per-join checks).
   */
  tabsOf(userId: string): Connection | ReadonlySet<Connection> | undefined {
    return this.byUser.get(userId)
  }

  /** Live connections of one user. */
  connectionsOf(userId: string): number {
    const tabs = this.byUser.get(userId)
    return tabs === undefined ? 0 : tabs instanceof Connection ? 1 : tabs.size
  }

  get connectionCount(): number {
    return this.byId.size
  }

  get userCount(): number {
    return this.byUser.size
  }

  get channelCount(): number {
    return this.channelCounts.size
  }

  get totalSubscriptions(): number {
    return this.subscriptionCount
  }

  /** Whether anyone here follows the channel (or, for a document, its collection). */
  hasFollowers(ref: ChannelRef): boolean {
    if (this.channelCounts.has(ref.collection)) return true
    return (
      ref.document !== undefined &&
      this.channelCounts.has(channelName(ref.collection, ref.document))
    )
  }

  /** The `limit` channels with the most subscribers. */
  busiestChannels(limit: number): Array<{ channel: string; subscribers: number }> {
    return [...this.channelCounts]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([channel, subscribers]) => ({ channel, subscribers }))
  }

  /** Returns false when the connection already followed the channel. */
  subscribe(connection: Connection, ref: ChannelRef): boolean {
    const channel = channelName(ref.collection, ref.document)
    if (connection.channels.has(channel)) return false
    connection.channels.add(channel)
    this.subscriptionCount++
    this.channelCounts.set(channel, (this.channelCounts.get(channel) ?? 0) + 1)
    const { socket } = connection
    if (ref.document !== undefined) {
      if (!connection.channels.has(ref.collection))
        this.fanout.subscribe(socket, documentTopic(ref.collection, ref.document))
    } else {
      this.fanout.subscribe(socket, collectionTopic(ref.collection))
      for (const document of this.documentsFollowed(connection, ref.collection))
        this.fanout.unsubscribe(socket, documentTopic(ref.collection, document))
    }
    return true
  }

  /** Returns false when the connection did not follow the channel. */
  unsubscribe(connection: Connection, ref: ChannelRef): boolean {
    const channel = channelName(ref.collection, ref.document)
    if (!connection.channels.delete(channel)) return false
    this.subscriptionCount--
    this.decrementChannel(channel)
    const { socket } = connection
    if (ref.document !== undefined) {
      if (!connection.channels.has(ref.collection))
        this.fanout.unsubscribe(socket, documentTopic(ref.collection, ref.document))
    } else {
      this.fanout.unsubscribe(socket, collectionTopic(ref.collection))
      for (const document of this.documentsFollowed(connection, ref.collection))
        this.fanout.subscribe(socket, documentTopic(ref.collection, document))
    }
    return true
  }

  /**
   * Sends one serialised frame to every follower of the channel (and, for a
   * document, of its collection), each once; returns the recipients.
   */
  publish(ref: ChannelRef, type: string, frame: string, exclude?: readonly Connection[]): number {
    const topics =
      ref.document === undefined
        ? [collectionTopic(ref.collection)]
        : [collectionTopic(ref.collection), documentTopic(ref.collection, ref.document)]
    const delivered = this.fanout.publish(
      topics,
      frame,
      exclude?.map((connection) => connection.socket),
    )
    this.stats.countOut(type, delivered)
    return delivered
  }

  /** Joins or leaves the channel's presence topic (members only, exactly that channel). */
  followPresence(connection: Connection, channel: string, on: boolean): void {
    if (on) this.fanout.subscribe(connection.socket, presenceTopic(channel))
    else this.fanout.unsubscribe(connection.socket, presenceTopic(channel))
  }

  /** Sends to the presence members of exactly this channel, optionally not to one of them. */
  publishPresence(channel: string, type: string, frame: string, exclude?: Connection): number {
    const delivered = this.fanout.publish(
      [presenceTopic(channel)],
      frame,
      exclude ? [exclude.socket] : undefined,
    )
    this.stats.countOut(type, delivered)
    return delivered
  }

  /**
   * Sends to every live connection of a user; returns the recipients. From
   * the user map, not a Bun topic per user: a topic with one subscriber is
   * ~0.45 KiB of native memory per connection (bench:memory).
   */
  publishToUser(userId: string, type: string, frame: string): number {
    const tabs = this.byUser.get(userId)
    if (tabs === undefined) return 0
    let delivered = 0
    for (const connection of tabs instanceof Connection ? [tabs] : tabs)
      if (connection.open && connection.socket.send(frame) !== 0) delivered++
    this.stats.countOut(type, delivered)
    return delivered
  }

  send(connection: Connection, type: string, frame: string): void {
    connection.socket.send(frame)
    this.stats.countOut(type, 1)
  }

  /** Tells the client why, then closes; the close handler unregisters it. */
  disconnect(connection: Connection, reason: CloseReason): void {
    if (!connection.open) return
    const code = closeCodes[reason]
    this.send(connection, 'disconnect', encode({ type: 'disconnect', data: { code, reason } }))
    this.close(connection, reason)
  }

  /** Closes without a `disconnect` message (the client was already told). */
  close(connection: Connection, reason: CloseReason): void {
    if (!connection.open) return
    connection.endReason = reason
    connection.socket.close(closeCodes[reason], reason)
  }

  private documentsFollowed(connection: Connection, collection: string): string[] {
    const prefix = `${collection}.`
    const documents: string[] = []
    for (const channel of connection.channels)
      if (channel.startsWith(prefix)) documents.push(channel.slice(prefix.length))
    return documents
  }

  private decrementChannel(channel: string): void {
    const count = (this.channelCounts.get(channel) ?? 0) - 1
    if (count <= 0) this.channelCounts.delete(channel)
    else this.channelCounts.set(channel, count)
  }
}
