import type { Config, PresenceMode } from '../config.ts'
import type { Connection } from '../hub/connection.ts'
import type { ConnectionListener, Hub } from '../hub/hub.ts'
import { type ChannelRef, channelName } from '../protocol/channels.ts'
import type { EndReason } from '../protocol/close.ts'
import { encode } from '../protocol/envelope.ts'
import { badRequest, ErrorCode, ProtocolError } from '../protocol/errors.ts'

interface Member {
  connection: Connection
  state: unknown
  joinedAt: number
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
  members: Map<string, Member>
  /** Connections per user, so the counts are not a pass over every member. */
  users: Map<string, number>
  /** count mode: when the count was last sent (performance.now()), and a pending send. */
  countSentAt: number
  countTimer: ReturnType<typeof setTimeout> | undefined
}

export interface PresenceEntry {
  connection_id: string
  session_id: string
  state: unknown
  joined_at: string
}

export interface PresenceView {
  channel: string
  mode: PresenceMode
  connections: number
  users: number
  /** full mode only: every user in the channel, with one entry per connection. */
  members?: Array<{ user_id: string; connections: PresenceEntry[] }>
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

  constructor(
    private readonly hub: Hub,
    private readonly config: Pick<
      Config,
      'presenceMaxSize' | 'presenceRate' | 'presenceModes' | 'presenceMaxMembers'
    >,
  ) {
    this.minGapMs = 1000 / config.presenceRate
  }

  modeOf(collection: string): PresenceMode {
    return this.config.presenceModes.find((m) => collection.startsWith(m.prefix))?.mode ?? 'full'
  }

  /**
   * Called when a connection subscribes: it is sent the channel's current
   * presence, the others learn it joined. Runs before the subscribe reply.
   */
  join(connection: Connection, ref: ChannelRef): void {
    const mode = this.modeOf(ref.collection)
    if (mode === 'off') return
    const channel = channelName(ref.collection, ref.document)
    let room = this.rooms.get(channel)
    if (!room) {
      room = {
        ref,
        mode,
        capped: false,
        members: new Map(),
        users: new Map(),
        countSentAt: Number.NEGATIVE_INFINITY,
        countTimer: undefined,
      }
      this.rooms.set(channel, room)
    }
    if (room.members.has(connection.id)) return
    const member: Member = {
      connection,
      state: null,
      joinedAt: Date.now(),
      sentAt: Number.NEGATIVE_INFINITY,
      timer: undefined,
    }
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
  }

  /** Called on unsubscribe, and for every channel of a closed connection. */
  leave(connection: Connection, ref: ChannelRef, socketClosed = false): void {
    const channel = channelName(ref.collection, ref.document)
    const room = this.rooms.get(channel)
    const member = room?.members.get(connection.id)
    if (!room || !member) return
    clearTimeout(member.timer)
    room.members.delete(connection.id)
    const userConnections = (room.users.get(connection.userId) ?? 1) - 1
    if (userConnections === 0) room.users.delete(connection.userId)
    else room.users.set(connection.userId, userConnections)
    if (!socketClosed) this.hub.followPresence(connection, channel, false)
    if (room.mode === 'full')
      this.hub.publishPresence(channel, 'presence', this.frame(room, member, 'leave'))
    else this.scheduleCount(channel, room)
    if (room.members.size === 0) {
      clearTimeout(room.countTimer)
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
    if (room.mode === 'count') return 'count'
    if (member.timer) return 'full' // the pending update will carry this state
    const wait = member.sentAt + this.minGapMs - performance.now()
    if (wait <= 0) this.sendUpdate(channel, room, member)
    else member.timer = setTimeout(() => this.sendUpdate(channel, room, member), wait)
    return 'full'
  }

  /** What GET /api/ws/presence returns: the same picture a subscriber gets. */
  view(ref: ChannelRef): PresenceView {
    const channel = channelName(ref.collection, ref.document)
    const room = this.rooms.get(channel)
    const mode = room?.mode ?? this.modeOf(ref.collection)
    const members = [...(room?.members.values() ?? [])]
    const byUser = new Map<string, PresenceEntry[]>()
    for (const member of members) {
      const entries = byUser.get(member.connection.userId) ?? []
      entries.push({
        connection_id: member.connection.id,
        session_id: member.connection.sessionId,
        state: member.state,
        joined_at: new Date(member.joinedAt).toISOString(),
      })
      byUser.set(member.connection.userId, entries)
    }
    const view: PresenceView = { channel, mode, connections: members.length, users: byUser.size }
    if (mode === 'full')
      view.members = [...byUser.entries()].map(([user_id, connections]) => ({
        user_id,
        connections,
      }))
    return view
  }

  private sendUpdate(channel: string, room: Room, member: Member): void {
    member.timer = undefined
    member.sentAt = performance.now()
    this.hub.publishPresence(
      channel,
      'presence',
      this.frame(room, member, 'update'),
      member.connection,
    )
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
    room.members.set(member.connection.id, member)
    const userId = member.connection.userId
    room.users.set(userId, (room.users.get(userId) ?? 0) + 1)
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
      clearTimeout(member.timer)
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
        users: room.users.size,
      },
    })
  }

  private frame(room: Room, member: Member, event: 'join' | 'update' | 'leave'): string {
    const data: Record<string, unknown> = {
      user_id: member.connection.userId,
      connection_id: member.connection.id,
      event,
    }
    if (event !== 'leave') data.state = member.state
    return encode({ type: 'presence', ...room.ref, data })
  }

  private countFrame(room: Room): string {
    return encode({
      type: 'presence',
      ...room.ref,
      data: { event: 'count', connections: room.members.size, users: room.users.size },
    })
  }
}
