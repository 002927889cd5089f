import type Redis from 'ioredis'

/**
 * A Lua script run by its SHA (EVALSHA), loaded with EVAL the first time a
 * Redis answers NOSCRIPT (a fresh or restarted server). Scripts are how the
 * registry's read-check-write steps stay atomic; they take Redis' own clock
 * (TIME), so processes with skewed clocks agree on who is silent.
 */
export class Lua {
  private readonly sha: string

  constructor(private readonly source: string) {
    this.sha = new Bun.CryptoHasher('sha1').update(source).digest('hex')
  }

  async run(redis: Redis, keys: readonly string[], args: ReadonlyArray<string | number> = []) {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args)
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error
      return redis.eval(this.source, keys.length, ...keys, ...args)
    }
  }
}

/** Redis' clock in ms, from inside a script. */
export const NOW_MS =
  "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/**
 * Leases (a key holding its holder's id, with a TTL): KEYS[1] the lease,
 * ARGV[1] the holder. RENEW extends it by ARGV[2] ms while ARGV[1] holds it
 * (1), else 0; RELEASE deletes it only if ARGV[1] holds it.
 */
export const RENEW = new Lua(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`)

export const RELEASE = new Lua(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1`)
