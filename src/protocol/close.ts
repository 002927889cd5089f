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
} as const

export type CloseReason = keyof typeof closeCodes

/** Reasons recorded for connections that the client or the network ended. */
export type EndReason = CloseReason | 'client_close' | 'error'
