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
