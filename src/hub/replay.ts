import type { Position } from '../documents/documents.ts'
import { type ChannelRef, channelName } from '../protocol/channels.ts'
import { encode } from '../protocol/envelope.ts'
import type { ProtocolError } from '../protocol/errors.ts'
import type { MessageOf } from '../protocol/messages.ts'
import { isPromise, type Maybe, then } from '../store/store.ts'
import { entryMessage, type StreamEntry } from '../streams/entry.ts'
import type { Streams } from '../streams/streams.ts'
import type { Connection } from './connection.ts'
import type { Hub } from './hub.ts'

/** Entries read from the store per step of a replay. */
const PAGE = 64

/** Offsets (from, to] of the replayed channel that another subscription delivered live. */
interface LiveRange {
  channel: string
  from: number
  to: number
}

/** One subscription still sending its backlog. */
interface Replay {
  readonly ref: ChannelRef
  readonly channel: string
  /** Answered when the channel goes live. */
  readonly request: MessageOf<'subscribe'>
  /** Offset of the last entry sent (or skipped). */
  cursor: number
  /** A document's version whose op is to be sent next. */
  nextV: number | undefined
  /** performance.now() when the socket last took more of the backlog. */
  progressAt: number
  readonly live: LiveRange[]
  /** The connection's own ops not reached yet, by offset: their acks are sent in their place. */
  readonly acks: Map<number, () => void>
  /** A store read is in flight (asynchronous stores): the pump goes on when it is back. */
  reading: boolean
  /**
   * Queued behind a replay of an overlapping channel of the same connection
   * (a collection and one of its documents): the two would interleave their
   * pages, so the document's entries would reach the collection's listener
   * out of offset order. It starts when that one has gone live.
   */
  waiting: boolean
}

/** What a replay needs from the socket handler. */
export interface ReplayOwner {
  /** Joins the channel now and returns the subscribe reply. */
  goLive(
    connection: Connection,
    ref: ChannelRef,
    recovered: boolean,
    v: number | undefined,
  ): { type: string; data: unknown }
  reply(
    connection: Connection,
    request: MessageOf<'subscribe'>,
    reply: { type: string; data: unknown },
  ): void
  fail(connection: Connection, request: MessageOf<'subscribe'>, error: unknown): void
  /** The replay ended without going live: its hold on the collection is let go. */
  abandoned(ref: ChannelRef): void
}

/**
 * History replays paced by the socket: a `subscribe` with `since` sends the
 * backlog from the store a page at a time while the socket's send buffer
 * stays under half of MAX_SEND_BUFFER, and goes on when it drains. The
 * channel is not followed live meanwhile: what is published is read from the
 * store behind the backlog. The last page, the subscription and the reply
 * happen in one synchronous step (commits fan out in their own turn), so
 * nothing is lost or doubled. Replays are rare: they live here, not on every
 * Connection.
 */
export class Replays {
  private readonly active = new Map<Connection, Map<string, Replay>>()
  private readonly highWater: number

  constructor(
    private readonly hub: Hub,
    private readonly streams: Streams,
    /** A document's version and latest change, as delivered on this process. */
    private readonly position: (collection: string, document: string) => Maybe<Position>,
    maxSendBuffer: number,
    private readonly owner: ReplayOwner,
  ) {
    this.highWater = maxSendBuffer / 2
  }

  /** Replays running on the connection. */
  count(connection: Connection): number {
    return this.active.get(connection)?.size ?? 0
  }

  has(connection: Connection, channel: string): boolean {
    return this.active.get(connection)?.has(channel) === true
  }

  channels(connection: Connection): string[] {
    return [...(this.active.get(connection)?.keys() ?? [])]
  }

  /** Starts sending the entries after `after` (for a document, from version `nextV` on). */
  start(
    connection: Connection,
    request: MessageOf<'subscribe'>,
    ref: ChannelRef,
    after: number,
    nextV: number | undefined,
  ): void {
    const channel = channelName(ref.collection, ref.document)
    const replay: Replay = {
      ref,
      channel,
      request,
      cursor: after,
      nextV,
      progressAt: performance.now(),
      live: [],
      acks: new Map(),
      reading: false,
      waiting: false,
    }
    let replays = this.active.get(connection)
    if (!replays) {
      replays = new Map()
      this.active.set(connection, replays)
    }
    replay.waiting = [...replays.values()].some((other) => overlaps(ref, other.channel))
    replays.set(channel, replay)
    if (!replay.waiting) this.begin(connection, replay)
  }

  /** Starts sending: entries another live subscription carries from now on are not sent twice. */
  private begin(connection: Connection, replay: Replay): void {
    replay.waiting = false
    replay.progressAt = performance.now()
    const head = this.streams.delivered(replay.ref.collection)
    replay.live.length = 0
    for (const other of connection.channels)
      if (overlaps(replay.ref, other))
        replay.live.push({ channel: other, from: head, to: Infinity })
    this.pump(connection, replay)
  }

  /** The socket took what was buffered: go on with its replays. */
  drain(connection: Connection): void {
    const replays = this.active.get(connection)
    if (replays) for (const replay of [...replays.values()]) this.pump(connection, replay)
  }

  /**
   * Stops a replay the client no longer wants (or may no longer read): its
   * subscribe is answered with `error`; acks held for it go out now.
   */
  cancel(connection: Connection, channel: string, error: ProtocolError): void {
    const replay = this.active.get(connection)?.get(channel)
    if (!replay) return
    this.remove(connection, replay)
    this.owner.abandoned(replay.ref)
    this.owner.fail(connection, replay.request, error)
  }

  /** The connection closed: its replays' holds are let go. */
  forget(connection: Connection): void {
    const replays = this.active.get(connection)
    if (!replays) return
    this.active.delete(connection)
    for (const replay of replays.values()) this.owner.abandoned(replay.ref)
  }

  /** Whether a replay of the connection has taken nothing since `since` (performance.now()). */
  stalled(connection: Connection, since: number): boolean {
    if (this.active.size === 0) return false // checked for every connection, every sweep
    const replays = this.active.get(connection)
    if (!replays) return false
    for (const replay of replays.values())
      if (!replay.waiting && replay.progressAt < since) return true
    return false
  }

  /**
   * A subscription of the connection went live (`on`) or was dropped: a
   * replay it overlaps (a collection and one of its documents) skips the
   * entries it delivered live.
   */
  followed(connection: Connection, ref: ChannelRef, on: boolean): void {
    const replays = this.active.get(connection)
    if (!replays) return
    const channel = channelName(ref.collection, ref.document)
    const head = this.streams.delivered(ref.collection)
    for (const replay of replays.values()) {
      if (!overlaps(replay.ref, channel)) continue
      if (on) replay.live.push({ channel, from: head, to: Infinity })
      else
        for (const range of replay.live)
          if (range.channel === channel && range.to === Infinity) range.to = head
    }
  }

  /**
   * A submit of the connection was committed at `offset`. When a replay
   * covering its document has not reached it yet, the ack waits to be sent
   * in the op's place (an OT client must see every op before its ack first);
   * returns false when it can go now.
   */
  holdAck(
    connection: Connection,
    ref: { collection: string; document: string },
    offset: number,
    send: () => void,
  ): boolean {
    const replays = this.active.get(connection)
    if (!replays) return false
    for (const replay of replays.values()) {
      if (replay.ref.collection !== ref.collection || replay.cursor >= offset) continue
      if (replay.ref.document !== undefined && replay.ref.document !== ref.document) continue
      if (this.skipped(replay, ref.document, offset)) continue
      replay.acks.set(offset, send)
      return true
    }
    return false
  }

  private pump(connection: Connection, replay: Replay): void {
    if (replay.reading || replay.waiting) return
    const failed = (error: unknown) => {
      replay.reading = false
      if (!this.isActive(connection, replay)) return
      this.remove(connection, replay)
      this.owner.abandoned(replay.ref)
      this.owner.fail(connection, replay.request, error)
    }
    try {
      const running = this.run(connection, replay)
      if (isPromise(running)) {
        replay.reading = true
        running.then(() => {
          replay.reading = false
        }, failed)
      }
    } catch (error) {
      failed(error)
    }
  }

  private isActive(connection: Connection, replay: Replay): boolean {
    return connection.open && this.active.get(connection)?.get(replay.channel) === replay
  }

  /** Pages through the backlog while the socket takes it; asynchronous where the store is. */
  private run(connection: Connection, replay: Replay): Maybe<void> {
    while (this.isActive(connection, replay)) {
      if (connection.socket.getBufferedAmount() >= this.highWater) return
      const until = this.streams.delivered(replay.ref.collection)
      const read = this.streams.readAfter(replay.ref, replay.cursor, PAGE)
      const next = isPromise(read)
        ? read.then((entries) => this.step(connection, replay, entries, until))
        : this.step(connection, replay, read, until)
      if (isPromise(next))
        return next.then((more) => (more ? this.run(connection, replay) : undefined))
      if (!next) return
    }
  }

  /**
   * Sends a page read up to `until` (what was delivered when the read
   * began); false when the replay is over (live, cut short or gone).
   */
  private step(
    connection: Connection,
    replay: Replay,
    entries: StreamEntry[],
    until: number,
  ): Maybe<boolean> {
    if (!this.isActive(connection, replay)) return false
    return then(this.prunedBehind(replay, entries, until), (pruned) => {
      if (!this.isActive(connection, replay)) return false
      if (pruned) return then(this.finish(connection, replay, false), () => false)
      if (entries.length === 0) {
        // Read asynchronously: more may have been delivered meanwhile.
        if (this.streams.delivered(replay.ref.collection) > until) return true
        return then(this.finish(connection, replay, true), () => false)
      }
      for (const entry of entries) {
        this.send(connection, replay, entry)
        if (connection.socket.getBufferedAmount() >= this.highWater) break
      }
      replay.progressAt = performance.now()
      return true
    })
  }

  private send(connection: Connection, replay: Replay, entry: StreamEntry): void {
    replay.cursor = entry.offset
    if (entry.kind !== 'message' && replay.ref.document !== undefined)
      replay.nextV = (entry.v ?? 0) + 1
    const ack = replay.acks.get(entry.offset)
    if (ack) {
      replay.acks.delete(entry.offset)
      ack()
      return
    }
    if (this.skipped(replay, entry.document, entry.offset)) return
    const fields = entryMessage(entry, this.streams.epoch)
    this.hub.send(connection, fields.type, encode(fields, entry.createdAt))
  }

  /** Whether another subscription of the connection delivered this entry live. */
  private skipped(replay: Replay, document: string | undefined, offset: number): boolean {
    if (replay.live.length === 0) return false
    const channel =
      replay.ref.document === undefined
        ? document === undefined
          ? undefined
          : channelName(replay.ref.collection, document)
        : replay.ref.collection
    return replay.live.some(
      (range) => range.channel === channel && offset > range.from && offset <= range.to,
    )
  }

  /**
   * Whether retention removed part of the backlog not yet sent. A
   * collection's oldest held entry tells. A document's ops must go on at the
   * version expected next (its channel messages are kept as its collection's
   * are: a document quiet for longer than the retention still resumes).
   */
  private prunedBehind(
    replay: Replay,
    next: readonly StreamEntry[],
    until: number,
  ): Maybe<boolean> {
    const { collection, document } = replay.ref
    if (document === undefined || replay.nextV === undefined)
      return then(this.streams.heldAfter(collection, replay.cursor), (held) => !held)
    const op = next.find((entry) => entry.kind !== 'message')
    if (op) return op.v !== replay.nextV
    if (next.length > 0) return false
    // A change delivered after the read began (past `until`) is the next read's, not a gap.
    return then(
      this.position(collection, document),
      (position) => (position.lastOffset ?? 0) <= until && position.v !== replay.nextV,
    )
  }

  /**
   * Goes live. A document replay that reached the end knows the version as
   * delivered here (`nextV`); one cut short reads it (the client reloads anyway).
   */
  private finish(connection: Connection, replay: Replay, recovered: boolean): Maybe<void> {
    this.remove(connection, replay)
    const { ref } = replay
    const live = (v: number | undefined) => {
      if (!connection.open) {
        this.owner.abandoned(ref)
        return
      }
      this.owner.reply(connection, replay.request, this.owner.goLive(connection, ref, recovered, v))
    }
    if (ref.document === undefined) return live(undefined)
    if (recovered && replay.nextV !== undefined) return live(replay.nextV)
    const failed = (error: unknown) => {
      this.owner.abandoned(ref)
      if (connection.open) this.owner.fail(connection, replay.request, error)
    }
    try {
      const read = this.position(ref.collection, ref.document)
      if (!isPromise(read)) return live(read.v)
      return read.then((position) => live(position.v), failed)
    } catch (error) {
      failed(error)
    }
  }

  /** Forgets the replay; acks it held (when cut short) go out in offset order. */
  private remove(connection: Connection, replay: Replay): void {
    const replays = this.active.get(connection)
    replays?.delete(replay.channel)
    if (replays?.size === 0) this.active.delete(connection)
    for (const offset of [...replay.acks.keys()].sort((a, b) => a - b)) replay.acks.get(offset)?.()
    // A replay queued behind this one starts once nothing running overlaps it (after this one went live).
    if (!replays || !connection.open) return
    queueMicrotask(() => {
      for (const queued of [...replays.values()]) {
        if (!queued.waiting || this.active.get(connection)?.get(queued.channel) !== queued) continue
        const running = [...replays.values()].some(
          (other) => !other.waiting && overlaps(queued.ref, other.channel),
        )
        if (!running) this.begin(connection, queued)
      }
    })
  }
}

/** A collection and one of its documents overlap: each carries the document's entries. */
function overlaps(ref: ChannelRef, channel: string): boolean {
  if (ref.document === undefined) return channel.startsWith(`${ref.collection}.`)
  return channel === ref.collection
}
