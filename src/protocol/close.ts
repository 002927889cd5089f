/**
 * Why the server ends a connection, and the WebSocket close code it uses.
 * The client is sent `disconnect` `{code, reason}` first, so it can tell a
 * timeout from a shutdown without parsing close frames.
 */
export const closeCodes = {
  /** The client asked (`disconnect` message). */
  client: 1000,
  /** The server is stopping; reconnect to another instance or later. */
  shutdown: 1001,
  /** No message and no pong for CONNECTION_TIMEOUT. */
  timeout: 4408,
  /** A frame over MAX_MESSAGE_SIZE. */
  message_too_big: 1009,
  /** The token's exp passed and no fresh token came with `connect`. */
  token_expired: 4401,
  /** Kept sending past MESSAGE_RATE after being refused (policy violation). */
  rate_limited: 1008,
  /** Did not read: its send buffer passed MAX_SEND_BUFFER. */
  slow_consumer: 1013,
} as const

export type CloseReason = keyof typeof closeCodes

/**
 * Reasons recorded for connections that the client or the network ended, and
 * `node_lost`: the process holding it went silent and another one ended its
 * sessions (a record only: that process could not close anything).
 */
export type EndReason = CloseReason | 'client_close' | 'error' | 'node_lost'
