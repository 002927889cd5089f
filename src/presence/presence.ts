import type { Config, PresenceMode } from '../config.ts'
import type { Connection } from '../hub/connection.ts'
import type { ConnectionListener, Hub } from '../hub/hub.ts'
import { type ChannelRef, channelName } from '../protocol/channels.ts'
import type { EndReason } from '../protocol/close.ts'
import { encode } from '../protocol/envelope.ts'
import { badRequest, ErrorCode, ProtocolError } from '../protocol/errors.ts'

interface Member {
  /** The connection id. */
  id: string
  userId: string
  sessionId: string
  /** The process it is connected to. */
  nodeId: string
  /** This process's members only; a member on another node is known from Redis. */
  connection: Connection | undefined
  state: unknown
  joinedAt: number
  /** +1 at every event about this member: orders what arrives from other nodes. */
  seq: number
  /** performance.now() when an update of this member was last sent (rate limit; monotonic). */
  sentAt: number
  /** A coalesced update waiting for its turn. */
  timer: ReturnType<typeof setTimeout> | undefined
}

interface Room {
  ref: ChannelRef
  /** The effective mode: a `full` channel past PRESENCE_MAX_MEMBERS is `count`. */
  mode: PresenceMode
  /** Switched from `full` to `count` by the member cap (and back at half of it). */
  capped: boolean
  /** Every member, on any node (cluster counts, caps and snapshots are over all of them). */
  members: Map<string, Member>
  /**
   * Distinct users among the members, kept as each joins and leaves: whether
   * its user has another member here is read from the hub's connections of
   * that user (local) and `remoteUsers`, not from a map entry per member
   * (~0.1 KiB a connection at 10,000 in one channel).
   */
  users: number
  /** Cluster: members on other nodes per user. */
  remoteUsers: Map<string, number>
  /** Members on this node: the room lives while there is one. */
  local: number
  /** count mode: when the count was last sent (performance.now()), and a pending send. */
  countSentAt: number
  countTimer: ReturnType<typeof setTimeout> | undefined
  /** Cluster: receives the other nodes' events for the channel. */
  handler: ((event: PresenceEvent) => void) | undefined
  /** Cluster: events that arrived while the channel's entries were being read, and that read. */
  pending: PresenceEvent[] | undefined
  loading: Promise<void> | undefined
}

export interface PresenceEntry {
  connection_id: string
  session_id: string
  state: unknown
  joined_at: string
  /** The process the connection is on. */
  node_id: string
}

export interface PresenceView {
  channel: string
  mode: PresenceMode
  connections: number
  users: number
  /** full mode only: every user in the channel, with one entry per connection. */
  members?: Array<{ user_id: string; connections: PresenceEntry[] }>
  /** Cluster: Redis is unreachable; the answer is what this node knows. */
  redis?: 'down'
}

/** A presence entry as every node sees it: the value in the channel's Redis hash. */
export interface PresenceRecord {
  connection_id: string
  user_id: string
  session_id: string
  state: unknown
  /** ms */
  joined_at: number
  node_id: string
  seq: number
}

/** What one node tells the others about a member of a channel. */
export type PresenceEvent =
  | { event: 'join' | 'update'; record: PresenceRecord }
  | { event: 'leave'; connection_id: string; node_id: string }

/**
 * Presence shared between the processes of a cluster (src/cluster/presence-link.ts):
 * every entry in Redis, every change told to the nodes that follow the channel.
 */
export interface PresenceLink {
  /** Stores a local member's entry and tells the other nodes. */
  put(channel: string, event: 'join' | 'update', record: PresenceRecord): void
  /** Removes a local member's entry and tells the other nodes; `last`: none is left here. */
  remove(channel: string, record: PresenceRecord, last: boolean): void
  /**
   * Delivers the other nodes' events for the channel to `handler`, then
   * resolves with the channel's entries (events during the read come after).
   */
  follow(channel: string, handler: (event: PresenceEvent) => void): Promise<PresenceRecord[]>
  unfollow(channel: string, handler: (event: PresenceEvent) => void): void
  /** The channel's entries, on every node. */
  entries(channel: string): Promise<PresenceRecord[]>
  /** Channels where Redis holds entries of this node. */
  ownChannels(): Promise<string[]>
  /** Removes this node's entries of a channel (with `leave` events to the others). */
  dropOwn(channel: string): Promise<void>
  readonly up: boolean
}

/**
 * Who is in which channel now, and what they are doing there. A connection
 * joins a channel's presence by subscribing to it and leaves by
 * unsubscribing, closing or timing out. Per collection-name prefix the mode
 * is `full` (join/update/leave events with states), `count` (coalesced
 * numbers only, so a mass reconnect is not N² messages) or `off`. A `full`
 * channel with more than PRESENCE_MAX_MEMBERS connections counts instead
 * (announced with a `mode` event) until it is back at half of that.
 */
export class Presence implements ConnectionListener {
  private readonly rooms = new Map<string, Room>()
  private readonly minGapMs: number
  private readonly nodeId: string
  private link: PresenceLink | undefined

  constructor(
    private readonly hub: Hub,
    private readonly config: Pick<
      Config,
      'presenceMaxSize' | 'presenceRate' | 'presenceModes' | 'presenceMaxMembers' | 'nodeId'
    >,
  ) {
    this.minGapMs = 1000 / config.presenceRate
    this.nodeId = config.nodeId
  }

  /**
   * Cluster mode: members, events, counts and the cap are over every node
   * (each node keeps a copy of the other nodes' members of the channels it
   * has members in). Set before the first join.
   */
  connect(link: PresenceLink): void {
    this.link = link
  }

  modeOf(collection: string): PresenceMode {
    return this.config.presenceModes.find((m) => collection.startsWith(m.prefix))?.mode ?? 'full'
  }

  /**
   * Called when a connection subscribes: it is sent the channel's current
   * presence, the others learn it joined. Runs before the subscribe reply.
   * In a cluster, the channel's first member on this node learns the other
   * nodes' members once their entries are read from Redis: the promise
   * settles when they were sent (await it to have them before the reply).
   */
  join(connection: Connection, ref: ChannelRef): Promise<void> | undefined {
    const mode = this.modeOf(ref.collection)
    if (mode === 'off') return undefined
    const channel = channelName(ref.collection, ref.document)
    let room = this.rooms.get(channel)
    if (!room) {
      room = {
        ref,
        mode,
        capped: false,
        members: new Map(),
        users: 0,
        remoteUsers: new Map(),
        local: 0,
        countSentAt: Number.NEGATIVE_INFINITY,
        countTimer: undefined,
        handler: undefined,
        pending: undefined,
        loading: undefined,
      }
      this.rooms.set(channel, room)
      if (this.link) this.follow(this.link, channel, room)
    }
    if (room.members.has(connection.id)) return room.loading
    const member: Member = {
      id: connection.id,
      userId: connection.userId,
      sessionId: connection.sessionId,
      nodeId: this.nodeId,
      connection,
      state: null,
      joinedAt: Date.now(),
      seq: 1,
      sentAt: Number.NEGATIVE_INFINITY,
      timer: undefined,
    }
    room.local++
    this.link?.put(channel, 'join', this.record(member))
    if (room.mode === 'full' && room.members.size < this.config.presenceMaxMembers) {
      for (const other of room.members.values())
        this.hub.send(connection, 'presence', this.frame(room, other, 'join'))
      this.hub.publishPresence(channel, 'presence', this.frame(room, member, 'join'))
      this.addMember(room, member)
      this.hub.followPresence(connection, channel, true)
    } else if (room.mode === 'full') {
      this.addMember(room, member)
      this.hub.followPresence(connection, channel, true)
      this.switchToCount(channel, room)
    } else {
      this.addMember(room, member)
      this.hub.followPresence(connection, channel, true)
      // A capped channel's newcomer is told why it sees numbers, as the others were.
      this.hub.send(
        connection,
        'presence',
        room.capped ? this.modeFrame(room) : this.countFrame(room),
      )
      this.scheduleCount(channel, room)
    }
    return room.loading
  }

  /** Called on unsubscribe, and for every channel of a closed connection. */
  leave(connection: Connection, ref: ChannelRef, socketClosed = false): void {
    const channel = channelName(ref.collection, ref.document)
    const room = this.rooms.get(channel)
    const member = room?.members.get(connection.id)
    if (!room || !member?.connection) return
    clearTimeout(member.timer)
    this.removeMember(room, member)
    room.local--
    if (!socketClosed) this.hub.followPresence(connection, channel, false)
    if (room.mode === 'full')
      this.hub.publishPresence(channel, 'presence', this.frame(room, member, 'leave'))
    else this.scheduleCount(channel, room)
    member.seq++
    this.link?.remove(channel, this.record(member), room.local === 0)
    if (room.local === 0) {
      clearTimeout(room.countTimer)
      if (room.handler) this.link?.unfollow(channel, room.handler)
      this.rooms.delete(channel)
    }
  }

  onClose(connection: Connection, _reason: EndReason): void {
    for (const channel of connection.channels) {
      const dot = channel.indexOf('.')
      this.leave(
        connection,
        dot === -1
          ? { collection: channel }
          : { collection: channel.slice(0, dot), document: channel.slice(dot + 1) },
        true,
      )
    }
  }

  /**
   * A `presence` message: sets this connection's state in the channel (null
   * clears it). Others are sent at most PRESENCE_RATE updates a second from
   * it; the latest state always goes out. Returns the channel's mode.
   */
  set(connection: Connection, ref: ChannelRef, state: unknown): PresenceMode {
    const channel = channelName(ref.collection, ref.document)
    if (!connection.channels.has(channel))
      throw badRequest(`not subscribed to ${channel}: subscribe before sending presence`, {
        field: 'collection',
        channel,
      })
    const size = Buffer.byteLength(JSON.stringify(state ?? null))
    if (size > this.config.presenceMaxSize)
      throw new ProtocolError(
        ErrorCode.TooLarge,
        `presence state is ${size} bytes; the limit is ${this.config.presenceMaxSize}`,
        { field: 'data', size, limit: this.config.presenceMaxSize },
      )
    const room = this.rooms.get(channel)
    const member = room?.members.get(connection.id)
    if (!room || !member) return this.modeOf(ref.collection) // off
    member.state = state ?? null
    // A capped channel's states still go to the other nodes, for its return to `full`.
    if (room.mode === 'count' && !(room.capped && this.link)) return 'count'
    if (member.timer) return room.mode // the pending update will carry this state
    const wait = member.sentAt + this.minGapMs - performance.now()
    if (wait <= 0) this.sendUpdate(channel, room, member)
    else member.timer = setTimeout(() => this.sendUpdate(channel, room, member), wait)
    return room.mode
  }

  /**
   * What GET /api/ws/presence returns: the same picture a subscriber gets.
   * In a cluster, read from Redis (every node's entries); with Redis
   * unreachable, this node's picture marked `redis: 'down'`.
   */
  view(ref: ChannelRef): PresenceView | Promise<PresenceView> {
    const channel = channelName(ref.collection, ref.document)
    const room = this.rooms.get(channel)
    const mode = room?.mode ?? this.modeOf(ref.collection)
    const known = [...(room?.members.values() ?? [])].map((member) => this.record(member))
    const link = this.link
    if (!link || mode === 'off') return this.describe(channel, mode, known)
    const local = (): PresenceView => ({ ...this.describe(channel, mode, known), redis: 'down' })
    if (!link.up) return local()
    return link.entries(channel).then((records) => {
      records.sort((a, b) => a.joined_at - b.joined_at)
      // A node with no member here does not know the cap's history: past the cap is `count`.
      const capped = !room && mode === 'full' && records.length > this.config.presenceMaxMembers
      return this.describe(channel, capped ? 'count' : mode, records)
    }, local)
  }

  /**
   * Cluster: writes this node's entries again and reads every followed
   * channel's entries afresh, sending the differences to local members (after
   * Redis came back, or writes were lost).
   */
  async resync(): Promise<void> {
    const link = this.link
    if (!link) return
    for (const channel of await link.ownChannels())
      if (!this.rooms.has(channel)) await link.dropOwn(channel)
    for (const [channel, room] of [...this.rooms]) {
      if (room.pending || !room.handler) continue // being read now
      for (const member of room.members.values())
        if (member.connection) link.put(channel, 'join', this.record(member))
      room.pending = []
      let records: PresenceRecord[] | undefined
      try {
        records = await link.follow(channel, room.handler)
      } finally {
        this.loaded(channel, room, records)
      }
      for (const record of records)
        if (record.node_id === this.nodeId && !room.members.get(record.connection_id)?.connection)
          link.remove(channel, record, false)
    }
  }

  private describe(channel: string, mode: PresenceMode, records: PresenceRecord[]): PresenceView {
    const byUser = new Map<string, PresenceEntry[]>()
    for (const record of records) {
      const entries = byUser.get(record.user_id) ?? []
      entries.push({
        connection_id: record.connection_id,
        session_id: record.session_id,
        state: record.state,
        joined_at: new Date(record.joined_at).toISOString(),
        node_id: record.node_id,
      })
      byUser.set(record.user_id, entries)
    }
    const view: PresenceView = { channel, mode, connections: records.length, users: byUser.size }
    if (mode === 'full')
      view.members = [...byUser.entries()].map(([user_id, connections]) => ({
        user_id,
        connections,
      }))
    return view
  }

  private record(member: Member): PresenceRecord {
    return {
      connection_id: member.id,
      user_id: member.userId,
      session_id: member.sessionId,
      state: member.state,
      joined_at: member.joinedAt,
      node_id: member.nodeId,
      seq: member.seq,
    }
  }

  private sendUpdate(channel: string, room: Room, member: Member): void {
    member.timer = undefined
    member.sentAt = performance.now()
    member.seq++
    if (room.mode === 'full')
      this.hub.publishPresence(
        channel,
        'presence',
        this.frame(room, member, 'update'),
        member.connection,
      )
    this.link?.put(channel, 'update', this.record(member))
  }

  /** Starts receiving the other nodes' events for a new room, then reads their members. */
  private follow(link: PresenceLink, channel: string, room: Room): void {
    const handler = (event: PresenceEvent) => this.remote(channel, room, event)
    room.handler = handler
    room.pending = []
    room.loading = link.follow(channel, handler).then(
      (records) => this.loaded(channel, room, records),
      // Redis away: the link asked for a resync, which reads them later.
      () => this.loaded(channel, room, undefined),
    )
  }

  /**
   * The channel's entries as read from Redis: members on other nodes that
   * are new join, the ones gone leave, then the events that came meanwhile.
   */
  private loaded(channel: string, room: Room, records: PresenceRecord[] | undefined): void {
    const pending = room.pending ?? []
    room.pending = undefined
    room.loading = undefined
    if (this.rooms.get(channel) !== room) return
    if (records) {
      const seen = new Set<string>()
      for (const record of records) {
        if (record.node_id === this.nodeId) continue
        seen.add(record.connection_id)
        this.remoteEntry(channel, room, record)
      }
      for (const member of [...room.members.values()])
        if (!member.connection && !seen.has(member.id)) this.remoteLeave(channel, room, member.id)
    }
    for (const event of pending) this.remote(channel, room, event)
  }

  private remote(channel: string, room: Room, event: PresenceEvent): void {
    if (this.rooms.get(channel) !== room) return
    if (room.pending) room.pending.push(event)
    else if (event.event === 'leave') this.remoteLeave(channel, room, event.connection_id)
    else this.remoteEntry(channel, room, event.record)
  }

  /** A member on another node joined or changed (or is seen for the first time). */
  private remoteEntry(channel: string, room: Room, record: PresenceRecord): void {
    if (record.node_id === this.nodeId) return // our own, back from Redis
    const known = room.members.get(record.connection_id)
    if (known) {
      if (known.connection || record.seq <= known.seq) return
      known.seq = record.seq
      known.state = record.state
      if (room.mode === 'full')
        this.hub.publishPresence(channel, 'presence', this.frame(room, known, 'update'))
      return
    }
    const member: Member = {
      id: record.connection_id,
      userId: record.user_id,
      sessionId: record.session_id,
      nodeId: record.node_id,
      connection: undefined,
      state: record.state,
      joinedAt: record.joined_at,
      seq: record.seq,
      sentAt: Number.NEGATIVE_INFINITY,
      timer: undefined,
    }
    if (room.mode === 'full' && room.members.size < this.config.presenceMaxMembers) {
      this.hub.publishPresence(channel, 'presence', this.frame(room, member, 'join'))
      this.addMember(room, member)
    } else if (room.mode === 'full') {
      this.addMember(room, member)
      this.switchToCount(channel, room)
    } else {
      this.addMember(room, member)
      this.scheduleCount(channel, room)
    }
  }

  private remoteLeave(channel: string, room: Room, connectionId: string): void {
    const member = room.members.get(connectionId)
    if (!member || member.connection) return
    this.removeMember(room, member)
    if (room.mode === 'full')
      this.hub.publishPresence(channel, 'presence', this.frame(room, member, 'leave'))
    else this.scheduleCount(channel, room)
  }

  private scheduleCount(channel: string, room: Room): void {
    if (room.countTimer) return
    const send = () => {
      room.countTimer = undefined
      if (this.restoresFull(channel, room)) return
      room.countSentAt = performance.now()
      this.hub.publishPresence(channel, 'presence', this.countFrame(room))
    }
    const wait = room.countSentAt + this.minGapMs - performance.now()
    room.countTimer = setTimeout(send, Math.max(0, wait))
  }

  private addMember(room: Room, member: Member): void {
    if (!this.userPresent(room, member)) room.users++
    room.members.set(member.id, member)
    if (!member.connection)
      room.remoteUsers.set(member.userId, (room.remoteUsers.get(member.userId) ?? 0) + 1)
  }

  private removeMember(room: Room, member: Member): void {
    room.members.delete(member.id)
    if (!member.connection) {
      const remote = (room.remoteUsers.get(member.userId) ?? 1) - 1
      if (remote === 0) room.remoteUsers.delete(member.userId)
      else room.remoteUsers.set(member.userId, remote)
    }
    if (!this.userPresent(room, member)) room.users--
  }

  /**
   * Whether the room has another member of `member`'s user, on any node;
   * `member` itself is not in the room when this is asked.
   */
  private userPresent(room: Room, member: Member): boolean {
    if (room.remoteUsers.has(member.userId)) return true
    const tabs = this.hub.tabsOf(member.userId)
    if (tabs === undefined) return false
    if (!(tabs instanceof Set)) return this.isMemberHere(room, tabs as Connection, member)
    for (const tab of tabs) if (this.isMemberHere(room, tab, member)) return true
    return false
  }

  private isMemberHere(room: Room, tab: Connection, member: Member): boolean {
    return tab !== member.connection && room.members.get(tab.id)?.connection === tab
  }

  /**
   * The join that takes a `full` channel past PRESENCE_MAX_MEMBERS: from now
   * on numbers only, and every member is told so once (the joiner included,
   * before its subscribe reply). States are kept for a return to `full`.
   */
  private switchToCount(channel: string, room: Room): void {
    room.mode = 'count'
    room.capped = true
    for (const member of room.members.values()) {
      if (!member.timer) continue
      clearTimeout(member.timer)
      // Cluster: the waiting state goes to the other nodes now (no frame in count mode).
      if (this.link) this.sendUpdate(channel, room, member)
      member.timer = undefined
    }
    // The announcement carries the counts: the next count frame waits its turn.
    room.countSentAt = performance.now()
    this.hub.publishPresence(channel, 'presence', this.modeFrame(room))
  }

  /**
   * At a count send: a capped channel down to half the cap or fewer goes back
   * to `full`, each member getting the announcement then every other member
   * as a `join` (with its state), the snapshot a new subscriber gets. Half,
   * not the cap, so a channel at the cap does not flip on every join/leave;
   * at the timer, so a mass disconnect does not pay for a snapshot per leave.
   */
  private restoresFull(channel: string, room: Room): boolean {
    if (!room.capped || room.members.size > this.config.presenceMaxMembers / 2) return false
    room.mode = 'full'
    room.capped = false
    this.hub.publishPresence(channel, 'presence', this.modeFrame(room))
    for (const member of room.members.values())
      this.hub.publishPresence(
        channel,
        'presence',
        this.frame(room, member, 'join'),
        member.connection,
      )
    return true
  }

  private modeFrame(room: Room): string {
    return encode({
      type: 'presence',
      ...room.ref,
      data: {
        event: 'mode',
        mode: room.mode,
        connections: room.members.size,
        users: room.users,
      },
    })
  }

  private frame(room: Room, member: Member, event: 'join' | 'update' | 'leave'): string {
    const data: Record<string, unknown> = {
      user_id: member.userId,
      connection_id: member.id,
      event,
    }
    if (event !== 'leave') data.state = member.state
    return encode({ type: 'presence', ...room.ref, data })
  }

  private countFrame(room: Room): string {
    return encode({
      type: 'presence',
      ...room.ref,
      data: { event: 'count', connections: room.members.size, users: room.users },
    })
  }
}
