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
  /** When an update of this member was last sent (rate limit). */
  sentAt: number
  /** A coalesced update waiting for its turn. */
  timer: ReturnType<typeof setTimeout> | undefined
}

interface Room {
  ref: ChannelRef
  mode: PresenceMode
  members: Map<string, Member>
  /** count mode: when the count was last sent, and a pending send. */
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
 * numbers only, so a mass reconnect is not N² messages) or `off`.
 */
export class Presence implements ConnectionListener {
  private readonly rooms = new Map<string, Room>()
  private readonly minGapMs: number

  constructor(
    private readonly hub: Hub,
    private readonly config: Pick<Config, 'presenceMaxSize' | 'presenceRate' | 'presenceModes'>,
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
      room = { ref, mode, members: new Map(), countSentAt: 0, countTimer: undefined }
      this.rooms.set(channel, room)
    }
    if (room.members.has(connection.id)) return
    const member: Member = {
      connection,
      state: null,
      joinedAt: Date.now(),
      sentAt: 0,
      timer: undefined,
    }
    if (mode === 'full') {
      for (const other of room.members.values())
        this.hub.send(connection, 'presence', this.frame(room, other, 'join'))
      this.hub.publishPresence(channel, 'presence', this.frame(room, member, 'join'))
      room.members.set(connection.id, member)
      this.hub.followPresence(connection, channel, true)
    } else {
      room.members.set(connection.id, member)
      this.hub.followPresence(connection, channel, true)
      this.hub.send(connection, 'presence', this.countFrame(room))
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
    const wait = member.sentAt + this.minGapMs - Date.now()
    if (wait <= 0) this.sendUpdate(channel, room, member)
    else member.timer = setTimeout(() => this.sendUpdate(channel, room, member), wait)
    return 'full'
  }

  /** What GET /api/ws/presence returns: the same picture a subscriber gets. */
  view(ref: ChannelRef): PresenceView {
    const channel = channelName(ref.collection, ref.document)
    const mode = this.modeOf(ref.collection)
    const room = this.rooms.get(channel)
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
    member.sentAt = Date.now()
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
      room.countSentAt = Date.now()
      this.hub.publishPresence(channel, 'presence', this.countFrame(room))
    }
    const wait = room.countSentAt + this.minGapMs - Date.now()
    room.countTimer = setTimeout(send, Math.max(0, wait))
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
    const users = new Set<string>()
    for (const member of room.members.values()) users.add(member.connection.userId)
    return encode({
      type: 'presence',
      ...room.ref,
      data: { event: 'count', connections: room.members.size, users: users.size },
    })
  }
}
