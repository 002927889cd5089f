import type { ServerWebSocket } from 'bun'
import type { TokenBucket } from '../auth/limits.ts'
import type { Grants } from '../auth/permissions.ts'
import type { EndReason } from '../protocol/close.ts'
import type { ClientMessage } from '../protocol/messages.ts'
import { ChannelSet } from './channel-set.ts'

/** The parts of Bun's ServerWebSocket the server uses (Elysia re-declares the type). */
export type Socket = Pick<
  ServerWebSocket<unknown>,
  | 'send'
  | 'close'
  | 'terminate'
  | 'ping'
  | 'subscribe'
  | 'unsubscribe'
  | 'isSubscribed'
  | 'getBufferedAmount'
> & {
  /** Bun's per-socket slot: the hub keeps the socket's Connection there (hub.ts). */
  data: unknown
}

/** One live WebSocket: who it is and which logical channels it follows. */
export class Connection {
  /** Logical channels (`coll` or `coll.doc`) this connection is subscribed to. */
  readonly channels = new ChannelSet()
  /**
   * performance.now() of the last message or pong: what CONNECTION_TIMEOUT
   * measures. Monotonic, so a wall clock stepped forward closes nobody.
   */
  lastActive: number
  /** performance.now() of the last server ping. */
  lastPing: number
  /** performance.now() at connect, anchoring the monotonic times to connectedAt. */
  private readonly openedAt: number
  /** Set once the server decided to close it, so it is closed only once. */
  endReason: EndReason | undefined
  /** The client's name, from `connect` `{data:{client}}`. */
  client: string | undefined
  /** What the token allows; undefined in open mode (everything). */
  grants: Grants | undefined
  /** When the token expires (ms); undefined when there is none or no expiry. */
  expiresAt: number | undefined
  /**
   * MESSAGE_RATE, per connection; made at the first message (a full bucket
   * then is the same as one made at open), so an idle connection has none.
   */
  messageBucket: TokenBucket | undefined
  /** Messages refused for rate in the current window, and when it started. */
  refused = 0
  refusedSince = Number.NEGATIVE_INFINITY
  /** `last_seen` as the sessions table has it (presence/sessions.ts): a field, not a map entry. */
  lastSeenStored: number
  /**
   * Messages that arrived while one was being handled asynchronously (a
   * subscribe reading PostgreSQL): handled in order after it, so an
   * unsubscribe or a limit never overtakes a pending subscribe.
   */
  waiting: ClientMessage[] | undefined = undefined

  constructor(
    readonly socket: Socket,
    readonly id: string,
    readonly userId: string,
    readonly sessionId: string,
    readonly connectedAt: number,
    readonly userAgent: string | null,
    readonly remoteAddress: string | null,
  ) {
    this.openedAt = performance.now()
    this.lastActive = this.openedAt
    this.lastPing = this.openedAt
    this.lastSeenStored = connectedAt
  }

  get open(): boolean {
    return this.endReason === undefined
  }

  /**
   * Wall-clock ms of the last sign of life, for people (REST last_seen, the
   * sessions table): connectedAt plus the monotonic time since.
   */
  get lastSeen(): number {
    return this.connectedAt + Math.round(this.lastActive - this.openedAt)
  }
}
