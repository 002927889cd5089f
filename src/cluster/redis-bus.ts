import Redis, { type RedisOptions } from 'ioredis'
import type { Logger } from '../observability/logger.ts'
import type { Bus } from './bus.ts'

/** How long the first connection may take before start gives up (ms). */
const START_TIMEOUT = 5000
/** Longest wait between two reconnection attempts (ms). */
const MAX_BACKOFF = 1000
/**
 * A connection with a command out and nothing read for this long is dropped
 * and reconnected (ms). Needed under Bun 1.3.14: a socket written to just as
 * Redis closes it may never report the close, leaving every later command
 * pending for good.
 */
const SOCKET_TIMEOUT = 3000
/** How often an idle connection is pinged, so such a dead one is noticed (ms). */
const HEARTBEAT = 2000

type Handler = (message: string) => void

interface Subscription {
  readonly handlers: Set<Handler>
  /** Settles when Redis answered this channel's SUBSCRIBE. */
  readonly confirmed: Promise<void>
}

/**
 * The bus over two ioredis connections: `commands` (PUBLISH, and whatever
 * else the cluster keeps in Redis) and one subscriber connection carrying
 * every channel this process listens to.
 *
 * After a loss, ioredis reconnects by itself. The subscriber's channels are
 * subscribed again by this class rather than by ioredis' autoResubscribe:
 * ioredis would also restore channels unsubscribed while Redis was away,
 * and only here is it known when the new subscriptions are confirmed, which
 * is when the reconnect listeners must run (messages published before that
 * are lost, and the listeners fetch them from the store).
 */
export class RedisBus implements Bus {
  private readonly channels = new Map<string, Subscription>()
  private readonly reconnectListeners: Array<() => void> = []
  /** The subscriber connection closed since it was last ready. */
  private lost = false
  /** An outage was logged and its end was not yet. */
  private outage = false
  private closed = false
  private readonly heartbeat: ReturnType<typeof setInterval>

  constructor(
    readonly commands: Redis,
    private readonly subscriber: Redis,
    readonly prefix: string,
    readonly nodeId: string,
    private readonly logger: Logger,
  ) {
    subscriber.on('message', (channel: string, message: string) => this.dispatch(channel, message))
    subscriber.on('close', () => {
      this.lost = true
    })
    subscriber.on('ready', () => {
      if (!this.lost) return
      this.lost = false
      void this.resubscribe()
    })
    for (const connection of [commands, subscriber]) {
      connection.on('error', (error: Error) => this.down(error))
      connection.on('close', () => this.down(undefined))
      connection.on('ready', () => this.back())
    }
    this.heartbeat = setInterval(() => {
      for (const connection of [commands, subscriber])
        if (connection.status === 'ready') connection.ping().catch(() => {})
    }, HEARTBEAT)
    this.heartbeat.unref()
  }

  get up(): boolean {
    return this.commands.status === 'ready' && this.subscriber.status === 'ready'
  }

  subscribe(channel: string, handler: Handler): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the Redis bus is closed'))
    const name = this.prefix + channel
    const existing = this.channels.get(name)
    if (existing) {
      existing.handlers.add(handler)
      return existing.confirmed
    }
    const confirmed = this.subscriber.subscribe(name).then(() => undefined)
    const subscription: Subscription = { handlers: new Set([handler]), confirmed }
    this.channels.set(name, subscription)
    // Not confirmed (Redis away): nobody listens, nothing to restore later.
    confirmed.catch(() => {
      if (this.channels.get(name) === subscription) this.channels.delete(name)
    })
    return confirmed
  }

  unsubscribe(channel: string, handler: Handler): void {
    const name = this.prefix + channel
    const subscription = this.channels.get(name)
    if (!subscription?.handlers.delete(handler) || subscription.handlers.size > 0) return
    this.channels.delete(name)
    // Failing while Redis is away is fine: a reconnection subscribes only
    // what `channels` still holds.
    this.subscriber.unsubscribe(name).catch(() => {})
  }

  publish(channel: string, message: string): Promise<number> {
    // A command sent after QUIT may never be answered (see SOCKET_TIMEOUT).
    if (this.closed) return Promise.reject(new Error('the Redis bus is closed'))
    return this.commands.publish(this.prefix + channel, message)
  }

  onReconnect(listener: () => void): void {
    this.reconnectListeners.push(listener)
  }

  async close(): Promise<void> {
    this.closed = true
    clearInterval(this.heartbeat)
    this.channels.clear()
    // Not QUIT: with Redis just gone its reply may never come (see
    // SOCKET_TIMEOUT). Commands already written still reach a live Redis,
    // and whatever a lost PUBLISH carried, the other processes read from the store.
    this.commands.disconnect()
    this.subscriber.disconnect()
  }

  private dispatch(channel: string, message: string): void {
    const subscription = this.channels.get(channel)
    if (!subscription) return
    for (const handler of subscription.handlers) {
      try {
        handler(message)
      } catch (error) {
        this.logger.error({ err: error, channel }, 'a Redis message handler failed')
      }
    }
  }

  private async resubscribe(): Promise<void> {
    const names = [...this.channels.keys()]
    if (names.length > 0) {
      try {
        await this.subscriber.subscribe(...names)
      } catch (error) {
        // Lost again before Redis answered: the next `ready` tries again.
        this.logger.warn({ err: error }, 'subscribing again after a Redis reconnection failed')
        return
      }
    }
    if (this.closed) return
    for (const listener of this.reconnectListeners) {
      try {
        listener()
      } catch (error) {
        this.logger.error({ err: error }, 'a Redis reconnection listener failed')
      }
    }
  }

  private down(error: Error | undefined): void {
    if (this.closed || this.outage) return
    this.outage = true
    this.logger.warn({ err: error }, 'Redis connection lost; reconnecting')
  }

  private back(): void {
    if (!this.outage || !this.up) return
    this.outage = false
    this.logger.info('Redis connection back')
  }
}

/** The URL for messages: the password replaced. */
function redact(url: URL): string {
  if (url.password === '') return url.href
  const shown = new URL(url.href)
  shown.password = '***'
  return shown.href
}

/**
 * Connects both connections of the bus. Redis unreachable (or not answering
 * within a few seconds) at start: an Error naming REDIS_URL, meant to be
 * shown as it is.
 */
export async function openRedisBus(
  url: string,
  prefix: string,
  nodeId: string,
  logger: Logger,
): Promise<RedisBus> {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new Error('REDIS_URL must look like redis://host:port[/db]')
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:')
    throw new Error(`REDIS_URL ${redact(parsed)} must start with redis:// or rediss://`)
  const options = (role: string): RedisOptions => ({
    lazyConnect: true,
    connectTimeout: START_TIMEOUT,
    // While Redis is away, a command fails at the next failed reconnection
    // attempt (within MAX_BACKOFF) instead of queueing: callers (a PUBLISH, a
    // presence write) carry on without it. One sent during a short blip
    // still goes through once the connection is back.
    maxRetriesPerRequest: 0,
    retryStrategy: (attempt: number) => Math.min(50 * 2 ** attempt, MAX_BACKOFF),
    socketTimeout: SOCKET_TIMEOUT,
    // For CLIENT LIST (and for killing one in tests); names allow no spaces.
    connectionName: `${prefix}${nodeId}:${role}`.replace(/\s/g, '_'),
  })
  const commands = new Redis(url, options('commands'))
  const subscriber = new Redis(url, { ...options('subscriber'), autoResubscribe: false })
  let failure: Error | undefined
  const remember = (error: Error) => {
    failure ??= error
  }
  commands.on('error', remember)
  subscriber.on('error', remember)
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    await Promise.race([
      Promise.all([commands.connect(), subscriber.connect()]),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer within ${START_TIMEOUT / 1000} s`)),
          START_TIMEOUT,
        )
      }),
    ])
  } catch (error) {
    // `remember` stays attached: ioredis prints errors nobody listens to.
    commands.disconnect()
    subscriber.disconnect()
    const reason = (failure ?? (error as Error)).message
    throw new Error(`REDIS_URL ${redact(parsed)}: cannot connect to Redis (${reason})`)
  } finally {
    clearTimeout(timer)
  }
  commands.off('error', remember)
  subscriber.off('error', remember)
  return new RedisBus(commands, subscriber, prefix, nodeId, logger)
}
