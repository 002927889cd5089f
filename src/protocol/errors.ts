/** HTTP-like error codes of the wire contract. */
export const ErrorCode = {
  BadRequest: 400,
  Unauthenticated: 401,
  Forbidden: 403,
  NotFound: 404,
  Conflict: 409,
  TooLarge: 413,
  RateLimited: 429,
  Internal: 500,
  Unavailable: 503,
} as const

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode]

export interface ErrorBody {
  code: ErrorCodeValue
  message: string
  details?: Record<string, unknown>
}

/** An expected refusal: becomes a protocol `error` (socket) or an HTTP error (REST). */
export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCodeValue,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message)
    this.name = 'ProtocolError'
  }

  toBody(): ErrorBody {
    return this.details
      ? { code: this.code, message: this.message, details: this.details }
      : { code: this.code, message: this.message }
  }
}

export const badRequest = (message: string, details?: Record<string, unknown>) =>
  new ProtocolError(ErrorCode.BadRequest, message, details)
