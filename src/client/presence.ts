import type { PresenceEventData, PresenceModeValue } from '../protocol/server-messages.ts'
import { type Deferred, deferred } from './deferred.ts'
import { Emitter } from './emitter.ts'
import { RealtimeError } from './errors.ts'

/** @internal What a ChannelPresence needs of its subscription. */
export interface PresenceChannel {
  send(state: unknown): Promise<PresenceModeValue>
  /** Whether the channel is subscribed on the current connection. */
  live(): boolean
  /** Whether a connection id is (or was) one of this client's own. */
  isOwn(connectionId: string): boolean
  unsubscribe(): Promise<void>
}

/** Another connection present in the channel (never this client itself). */
export interface PresenceMember {
  userId: string
  connectionId: string
  /** What it set with `presence.set` (null until it sets one). */
  state: unknown
}

/** A user and their connections in the channel (a user with two tabs is two connections). */
export interface PresenceUser {
  userId: string
  connections: PresenceMember[]
}

export interface PresenceCounts {
  connections: number
  users: number
}

export interface PresenceEvents {
  join: PresenceMember
  update: PresenceMember
  leave: Omit<PresenceMember, 'state'>
  /** `count` mode (or a capped channel): the numbers changed. */
  count: PresenceCounts
  /** The channel switched mode (its member cap); `full` is followed by joins. */
  mode: PresenceCounts & { mode: 'full' | 'count' }
  /** Anything above happened: redraw from `users()` / `counts`. */
  change: undefined
}

/**
 * Presence in one channel: the other connections present and their states,
 * and this client's own state, which it sets again after every reconnect.
 * This client's own connections (a previous one the server has not timed
 * out yet included) are never members.
 */
export class ChannelPresence extends Emitter<PresenceEvents> {
  /** The mode in effect as last seen (`unknown` until the server said). */
  mode: PresenceModeValue | 'unknown' = 'unknown'
  /** In `count` mode, the numbers (in `full` mode, computed from the members). */
  private countsSeen: PresenceCounts = { connections: 0, users: 0 }
  private members = new Map<string, PresenceMember>()
  /** While (re)subscribing: the joins that make the channel's current picture. */
  private incoming: Map<string, PresenceMember> | undefined
  /** This client's own state; null means none. */
  local: unknown = null
  /** set() calls whose state has not gone out on a live subscription yet. */
  private waiters: Array<Deferred<void>> = []
  /** Why the channel was left for good: set() fails at once from then on. */
  private ended: RealtimeError | undefined

  /** @internal */
  constructor(private readonly channel: PresenceChannel) {
    super()
  }

  /**
   * Sets this connection's state in the channel (a cursor, a selected cell
   * …); kept, and set again after every reconnect. Resolves once the server
   * took it: at once when subscribed, else when the subscription is live
   * (after a reconnect included). Rejects when the server refused it (413
   * over `PRESENCE_MAX_SIZE`) or the channel ended.
   */
  set(state: unknown): Promise<void> {
    if (this.ended) return Promise.reject(this.ended)
    this.local = state ?? null
    const waiter = deferred<void>()
    this.waiters.push(waiter)
    this.flush()
    return waiter.promise
  }

  clear(): Promise<void> {
    return this.set(null)
  }

  /** Lets go of the channel reference `client.presence()` took (the channel is left with the last one). */
  unsubscribe(): Promise<void> {
    return this.channel.unsubscribe()
  }

  /**
   * @internal Sends the own state when the channel is live: the one set()
   * calls wait for, or (`resend`, after a subscribe reply) the kept one.
   */
  flush(resend = false): void {
    if (!this.channel.live()) return
    if (this.waiters.length === 0 && !(resend && this.local !== null)) return
    const waiters = this.waiters.splice(0)
    this.channel.send(this.local).then(
      (mode) => {
        this.mode = mode
        for (const waiter of waiters) waiter.resolve()
      },
      (error: unknown) => {
        if (error instanceof RealtimeError && error.refused)
          for (const waiter of waiters) waiter.reject(error)
        // The connection dropped: sent on the next live subscription.
        else this.waiters.unshift(...waiters)
      },
    )
  }

  /** The other connections present, grouped by user. */
  users(): PresenceUser[] {
    const byUser = new Map<string, PresenceMember[]>()
    for (const member of this.members.values()) {
      const list = byUser.get(member.userId) ?? []
      list.push(member)
      byUser.set(member.userId, list)
    }
    return [...byUser].map(([userId, connections]) => ({ userId, connections }))
  }

  /** How many others are present (from the members in `full` mode). */
  get counts(): PresenceCounts {
    if (this.mode !== 'full' && this.mode !== 'unknown') return this.countsSeen
    return {
      connections: this.members.size,
      users: new Set(this.users().map((u) => u.userId)).size,
    }
  }

  /** @internal A (re)subscribe was sent: the joins before its reply are the whole picture. */
  beginSnapshot(): void {
    this.incoming = new Map()
  }

  /**
   * @internal The subscribe reply: the picture is complete. Differences from
   * what was shown before the reconnect become join/update/leave events.
   */
  endSnapshot(): void {
    const next = this.incoming
    if (!next) return
    this.incoming = undefined
    const previous = this.members
    this.members = next
    for (const [id, member] of previous)
      if (!next.has(id)) this.emit('leave', { userId: member.userId, connectionId: id })
    for (const [id, member] of next) {
      const before = previous.get(id)
      if (!before) this.emit('join', member)
      else if (JSON.stringify(before.state) !== JSON.stringify(member.state))
        this.emit('update', member)
    }
    this.emit('change', undefined)
  }

  /** @internal The channel was left for good: every member leaves, waiting set() calls fail. */
  reset(error: RealtimeError): void {
    this.ended = error
    this.incoming = undefined
    const members = [...this.members.values()]
    this.members.clear()
    this.mode = 'unknown'
    for (const waiter of this.waiters.splice(0)) waiter.reject(error)
    for (const member of members)
      this.emit('leave', { userId: member.userId, connectionId: member.connectionId })
    if (members.length > 0) this.emit('change', undefined)
  }

  /** @internal A `presence` event of this channel. */
  receive(data: PresenceEventData): void {
    if (data.event === 'count') {
      this.countsSeen = { connections: data.connections, users: data.users }
      if (this.mode === 'unknown' || this.mode === 'full') this.mode = 'count'
      this.emit('count', this.countsSeen)
    } else if (data.event === 'mode') {
      this.mode = data.mode
      this.countsSeen = { connections: data.connections, users: data.users }
      // Either way the member list starts over: dropped for counts, or rebuilt by the joins that follow.
      this.members.clear()
      if (this.incoming) this.incoming.clear()
      this.emit('mode', { mode: data.mode, connections: data.connections, users: data.users })
    } else {
      this.mode = 'full'
      // This client's previous connection, not yet timed out by the server: not someone else.
      if (data.event !== 'leave' && this.channel.isOwn(data.connection_id)) return
      const target = this.incoming ?? this.members
      if (data.event === 'leave') {
        const had = target.delete(data.connection_id)
        if (!had) return
        if (!this.incoming)
          this.emit('leave', { userId: data.user_id, connectionId: data.connection_id })
      } else {
        const member = { userId: data.user_id, connectionId: data.connection_id, state: data.state }
        target.set(data.connection_id, member)
        if (!this.incoming) this.emit(data.event, member)
      }
    }
    if (!this.incoming) this.emit('change', undefined)
  }
}
