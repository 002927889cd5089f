import { createPublicKey, createSecretKey, type KeyObject } from 'node:crypto'
import { errors, jwtVerify } from 'jose'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'
import { Grants } from './permissions.ts'

/** What a verified token says about its holder. */
export interface Identity {
  userId: string
  /** ms since the epoch (`exp` is required). */
  expiresAt: number
  grants: Grants
}

const unauthenticated = (message: string) => new ProtocolError(ErrorCode.Unauthenticated, message)

/**
 * Verifies connection tokens (JWT): HS256 with AUTH_SECRET, or RS256/ES256
 * with AUTH_PUBLIC_KEY. `sub` is the user; `exp` is required; `channels` and
 * `publish` claims (arrays of patterns) are what it may read and write.
 */
export class TokenVerifier {
  private readonly key: KeyObject
  private readonly algorithms: string[]

  constructor(options: { secret?: string; publicKey?: string }) {
    if (options.secret !== undefined) {
      this.key = createSecretKey(Buffer.from(options.secret))
      this.algorithms = ['HS256']
    } else if (options.publicKey !== undefined) {
      this.key = createPublicKey(options.publicKey)
      this.algorithms = ['RS256', 'ES256']
    } else throw new Error('TokenVerifier needs a secret or a public key')
  }

  async verify(token: string): Promise<Identity> {
    let payload: Record<string, unknown>
    try {
      payload = (await jwtVerify(token, this.key, { algorithms: this.algorithms })).payload
    } catch (error) {
      if (error instanceof errors.JWTExpired) throw unauthenticated('token expired')
      throw unauthenticated('invalid token')
    }
    const sub = payload.sub
    if (typeof sub !== 'string' || sub.length === 0 || sub.length > 256)
      throw unauthenticated('the token has no usable sub (the user id)')
    // Without `exp` a leaked token would work forever (jose checks exp only when present).
    if (typeof payload.exp !== 'number') throw unauthenticated('the token has no exp')
    return {
      userId: sub,
      expiresAt: payload.exp * 1000,
      grants: new Grants(patterns(payload.channels), patterns(payload.publish)),
    }
  }
}

function patterns(claim: unknown): string[] {
  if (!Array.isArray(claim)) return []
  return claim.filter((item): item is string => typeof item === 'string' && item.length <= 300)
}
