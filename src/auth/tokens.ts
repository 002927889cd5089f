import {
  createHmac,
  createPublicKey,
  createSecretKey,
  type KeyObject,
  timingSafeEqual,
} from 'node:crypto'
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
  private readonly hs256: boolean

  constructor(options: { secret?: string; publicKey?: string }) {
    if (options.secret !== undefined) {
      this.key = createSecretKey(Buffer.from(options.secret))
      this.algorithms = ['HS256']
      this.hs256 = true
    } else if (options.publicKey !== undefined) {
      this.key = createPublicKey(options.publicKey)
      this.algorithms = ['RS256', 'ES256']
      this.hs256 = false
    } else throw new Error('TokenVerifier needs a secret or a public key')
  }

  async verify(token: string): Promise<Identity> {
    let payload = this.hs256 ? plainHs256(token, this.key) : undefined
    if (payload === undefined)
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
    // Finite too: `1e400` parses as Infinity, a token that would never expire.
    if (typeof payload.exp !== 'number' || !Number.isFinite(payload.exp))
      throw unauthenticated('the token has no exp')
    return {
      userId: sub,
      expiresAt: payload.exp * 1000,
      grants: grantsFor(patterns(payload.channels), patterns(payload.publish)),
    }
  }
}

/**
 * Grants are immutable and tokens of one app repeat the same claims: one
 * compiled Grants per distinct claim set, shared by the connections holding
 * it (~0.5-3 KB each, regexes included, instead of one per connection).
 * Bounded by count and by the claims' size (per-user claims make every set
 * distinct, and a claim set can be ~16 KB): past either, it starts over.
 */
const GRANTS_CACHE = 10_000
const GRANTS_CACHE_CHARS = 4 * 1024 * 1024
const grantsCache = new Map<string, Grants>()
let grantsCacheChars = 0

function grantsFor(channels: string[], publish: string[]): Grants {
  const key = JSON.stringify([channels, publish])
  let grants = grantsCache.get(key)
  if (grants === undefined) {
    if (grantsCache.size >= GRANTS_CACHE || grantsCacheChars + key.length > GRANTS_CACHE_CHARS) {
      grantsCache.clear()
      grantsCacheChars = 0
    }
    grants = new Grants(channels, publish)
    grantsCache.set(key, grants)
    grantsCacheChars += key.length
  }
  return grants
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** The bytes of a base64url segment, or undefined unless it is the canonical spelling of them. */
function segment(text: string): Buffer | undefined {
  const bytes = Buffer.from(text, 'base64url')
  return bytes.toString('base64url') === text ? bytes : undefined
}

function jsonObject(bytes: Buffer): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(utf8.decode(bytes))
    return typeof value === 'object' && value !== null && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined
  } catch {
    return undefined
  }
}

const PLAIN_HEADER = new Set(['alg', 'typ', 'kid'])

/**
 * The common HS256 token, verified synchronously (an HMAC and two JSON
 * parses, ~4 µs) instead of through jose's asynchronous WebCrypto path
 * (~36 µs and a chain of promises per connect). It decides only what it can
 * decide exactly as jose does (jose 6 `jwtVerify` with `algorithms:
 * ['HS256']` and no other option): a canonical token whose header is only
 * `alg` HS256 (and `typ`, `kid`), whose signature matches, whose claims set
 * is an object with numeric `iat`/`nbf`/`exp` where present. It returns the
 * claims, or throws for `nbf` in the future (invalid) or `exp` past (expired),
 * checked in jose's order. Anything else (a bad signature included) returns
 * undefined and goes to jose for its verdict.
 */
function plainHs256(token: string, key: KeyObject): Record<string, unknown> | undefined {
  const parts = token.split('.')
  if (parts.length !== 3) return undefined
  const [h, p, s] = parts as [string, string, string]
  const headerBytes = segment(h)
  const header = headerBytes && jsonObject(headerBytes)
  if (header?.alg !== 'HS256') return undefined
  for (const name in header) if (!PLAIN_HEADER.has(name)) return undefined
  if (header.typ !== undefined && typeof header.typ !== 'string') return undefined
  if (header.kid !== undefined && typeof header.kid !== 'string') return undefined
  // Constant time: an early-exit string compare would leak how much of a forged signature matches.
  const signature = segment(s)
  const expected = createHmac('sha256', key).update(`${h}.${p}`).digest()
  if (!signature || signature.length !== expected.length || !timingSafeEqual(signature, expected))
    return undefined
  const payloadBytes = segment(p)
  const claims = payloadBytes && jsonObject(payloadBytes)
  if (!claims) return undefined
  for (const name of ['iat', 'nbf', 'exp'])
    if (claims[name] !== undefined && typeof claims[name] !== 'number') return undefined
  const now = Math.floor(Date.now() / 1000)
  if (typeof claims.nbf === 'number' && claims.nbf > now) throw unauthenticated('invalid token')
  if (typeof claims.exp === 'number' && claims.exp <= now) throw unauthenticated('token expired')
  return claims
}

function patterns(claim: unknown): string[] {
  if (!Array.isArray(claim)) return []
  return claim.filter((item): item is string => typeof item === 'string' && item.length <= 300)
}
