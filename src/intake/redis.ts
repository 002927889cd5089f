import Redis, { type RedisOptions } from 'ioredis'

/** How long opening the intake's connections may take (ms). */
const START_TIMEOUT = 5000
/** Reconnection backoff cap (ms). */
const MAX_BACKOFF = 1000

/**
 * The intake's two Redis connections. `reader` carries the blocking
 * XREADGROUP and has no socket timeout (a read blocks up to its BLOCK time,
 * longer than the bus's 3 s timeout would allow); `commands` carries the
 * rest (lease, XACK, XAUTOCLAIM, the API). Commands fail at once while Redis
 * is away (the loop retries), as on the bus.
 */
export async function openIntakeRedis(
  url: string,
  name: string,
): Promise<{ commands: Redis; reader: Redis }> {
  const options = (role: string): RedisOptions => ({
    lazyConnect: true,
    connectTimeout: START_TIMEOUT,
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) => Math.min(50 * 2 ** attempt, MAX_BACKOFF),
    connectionName: `${name}:intake-${role}`.replace(/\s/g, '_'),
  })
  const commands = new Redis(url, options('commands'))
  const reader = new Redis(url, options('reader'))
  let failure: Error | undefined
  const remember = (error: Error) => {
    failure ??= error
  }
  // Kept: ioredis prints errors nobody listens to; the loop logs what matters.
  commands.on('error', remember)
  reader.on('error', remember)
  try {
    await Promise.all([commands.connect(), reader.connect()])
  } catch (error) {
    commands.disconnect()
    reader.disconnect()
    const reason = (failure ?? (error as Error)).message
    throw new Error(`REDIS_URL: cannot connect to Redis for INTAKE_STREAM (${reason})`)
  }
  return { commands, reader }
}
