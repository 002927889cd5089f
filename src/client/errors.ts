import type { ErrorBody, ErrorCodeValue } from '../protocol/errors.ts'

/** Why a request failed without a reply from the server. */
export type LocalErrorCode = 'timeout' | 'disconnected' | 'closed' | 'invalid_op' | 'reset'

/**
 * Every failure the client reports. `code` is the protocol's HTTP-like code
 * (400, 403, 409 …) when the server refused, or a local code when it never
 * answered (`timeout`, `disconnected`, `closed`) or the client refused first.
 */
export class RealtimeError extends Error {
  override name = 'RealtimeError'

  constructor(
    readonly code: ErrorCodeValue | LocalErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message)
  }

  /** Whether the server refused it (a protocol error code). */
  get refused(): boolean {
    return typeof this.code === 'number'
  }
}

/** The server answered with `type: "error"`. */
export class RequestError extends RealtimeError {
  override name = 'RequestError'
  declare readonly code: ErrorCodeValue

  constructor(body: ErrorBody) {
    super(body.code, body.message, body.details)
  }
}

/** No reply within the request's timeout (the connection may still be fine). */
export class TimeoutError extends RealtimeError {
  override name = 'TimeoutError'
  declare readonly code: 'timeout'

  constructor(type: string, ms: number) {
    super('timeout', `no reply to ${type} within ${ms} ms`)
  }
}

/** The connection dropped (`disconnected`) or the client was closed (`closed`) before a reply. */
export class ConnectionError extends RealtimeError {
  override name = 'ConnectionError'
  declare readonly code: 'disconnected' | 'closed'
}
