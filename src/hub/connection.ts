import type { ServerWebSocket } from 'bun'
import type { EndReason } from '../protocol/close.ts'

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
  | 'remoteAddress'
>

/** One live WebSocket: who it is and which logical channels it follows. */
export class Connection {
  /** Logical channels (`coll` or `coll.doc`) this connection is subscribed to. */
  readonly channels = new Set<string>()
  lastSeen: number
  lastPing: number
  /** Set once the server decided to close it, so it is closed only once. */
  endReason: EndReason | undefined
  /** The client's name, from `connect` `{data:{client}}`. */
  client: string | undefined

  constructor(
    readonly socket: Socket,
    readonly id: string,
    readonly userId: string,
    readonly sessionId: string,
    readonly connectedAt: number,
    readonly userAgent: string | null,
    readonly remoteAddress: string | null,
  ) {
    this.lastSeen = connectedAt
    this.lastPing = connectedAt
  }

  get open(): boolean {
    return this.endReason === undefined
  }
}
