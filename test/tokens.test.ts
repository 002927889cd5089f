import { describe, expect, test } from 'bun:test'
import { createHmac, createSecretKey } from 'node:crypto'
import { errors, jwtVerify, SignJWT } from 'jose'
import { TokenVerifier } from '../src/auth/tokens.ts'

/**
 * The server verifies plain HS256 tokens itself (synchronously, for connect
 * speed) and hands everything else to jose. Whatever the path, the verdict
 * must be jose's: each token below is judged by both.
 */

const SECRET = 'tokens-test-secret-long-enough-for-hs256'
const key = createSecretKey(Buffer.from(SECRET))
const now = () => Math.floor(Date.now() / 1000)
const b64 = (value: unknown) =>
  Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')
/** A token from raw parts, signed (or not) as given: shapes SignJWT would refuse to make. */
function raw(header: unknown, payload: unknown, sign: (input: string) => string = hmac): string {
  const input = `${b64(header)}.${b64(payload)}`
  return `${input}.${sign(input)}`
}
function hmac(input: string): string {
  return createHmac('sha256', SECRET).update(input).digest('base64url')
}

type Verdict = 'ok' | 'expired' | 'invalid'

async function joseVerdict(token: string): Promise<Verdict> {
  try {
    await jwtVerify(token, key, { algorithms: ['HS256'] })
    return 'ok'
  } catch (error) {
    return error instanceof errors.JWTExpired ? 'expired' : 'invalid'
  }
}

async function ourVerdict(token: string): Promise<Verdict> {
  try {
    await new TokenVerifier({ secret: SECRET }).verify(token)
    return 'ok'
  } catch (error) {
    return (error as Error).message === 'token expired' ? 'expired' : 'invalid'
  }
}

describe('HS256 verification agrees with jose', () => {
  const claims = { sub: 'ann', exp: now() + 3600, channels: ['a'] }
  const valid = () => new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(key)
  const cases: Array<[string, () => string | Promise<string>]> = [
    ['a plain valid token', valid],
    ['typ and kid in the header', () => raw({ alg: 'HS256', typ: 'JWT', kid: 'k1' }, claims)],
    ['an unknown header field', () => raw({ alg: 'HS256', x: 1 }, claims)],
    ['crit in the header', () => raw({ alg: 'HS256', crit: ['x'], x: 1 }, claims)],
    ['alg none', () => raw({ alg: 'none' }, claims, () => '')],
    ['alg HS512', () => raw({ alg: 'HS512' }, claims)],
    ['a wrong signature', () => raw({ alg: 'HS256' }, claims, (i) => hmac(`${i}x`))],
    ['a truncated signature', () => raw({ alg: 'HS256' }, claims, (i) => hmac(i).slice(0, 20))],
    ['a signature with padding', () => raw({ alg: 'HS256' }, claims, (i) => `${hmac(i)}=`)],
    ['expired', () => raw({ alg: 'HS256' }, { ...claims, exp: now() - 10 })],
    ['not yet valid (nbf)', () => raw({ alg: 'HS256' }, { ...claims, nbf: now() + 600 })],
    ['exp as a string', () => raw({ alg: 'HS256' }, { ...claims, exp: String(now() + 60) })],
    ['iat as a string', () => raw({ alg: 'HS256' }, { ...claims, iat: 'yesterday' })],
    ['a payload that is an array', () => raw({ alg: 'HS256' }, [1, 2])],
    ['a payload that is not JSON', () => raw({ alg: 'HS256' }, 'not json')],
    ['a header that is not JSON', () => raw('not json', claims)],
    ['exp equal to now', () => raw({ alg: 'HS256' }, { ...claims, exp: now() })],
    ['exp one second ahead', () => raw({ alg: 'HS256' }, { ...claims, exp: now() + 1 })],
    [
      'a non-canonical payload (padding)',
      () => {
        const [h, p] = raw({ alg: 'HS256' }, claims).split('.') as [string, string]
        const padded = `${p}${'='.repeat((4 - (p.length % 4)) % 4)}`
        return `${h}.${padded}.${hmac(`${h}.${padded}`)}`
      },
    ],
    ['b64 false with crit', () => raw({ alg: 'HS256', b64: false, crit: ['b64'] }, claims)],
    ['two parts', async () => (await valid()).split('.').slice(0, 2).join('.')],
    ['four parts', async () => `${await valid()}.x`],
  ]
  for (const [name, make] of cases)
    test(name, async () => {
      const token = await make()
      expect(await ourVerdict(token)).toBe(await joseVerdict(token))
    })

  test('a token whose exp is 1e400 (Infinity) is refused as having no exp', async () => {
    const token = `${b64({ alg: 'HS256' })}.${Buffer.from('{"sub":"ann","exp":1e400}').toString('base64url')}`
    await expect(
      new TokenVerifier({ secret: SECRET }).verify(`${token}.${hmac(token)}`),
    ).rejects.toThrow('the token has no exp')
  })

  test('the verdicts above are not all the same (the table can fail)', async () => {
    const verdicts = new Set(
      await Promise.all(cases.map(async ([, make]) => joseVerdict(await make()))),
    )
    expect([...verdicts].sort()).toEqual(['expired', 'invalid', 'ok'])
  })
})
