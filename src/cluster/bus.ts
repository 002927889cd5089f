/**
 * Messages between the processes of a cluster (Redis pub/sub). One
 * subscriber connection per process, multiplexed over channels; a handler
 * gets each message as it arrives (pub/sub may drop or reorder: callers that
 * need order and completeness, like the entry sequencer, repair it
 * themselves from the store).
 */
export interface Bus {
  /** This process's NODE_ID. */
  readonly nodeId: string
  /** `REDIS_PREFIX`: every key and channel name starts with it. */
  readonly prefix: string
  /**
   * Subscribes `channel` (the prefix is added here). Resolves once Redis
   * confirmed the subscription: from then on every message published to it
   * reaches `handler` (unless Redis drops it). Several handlers may share a
   * channel; the Redis subscription lives while one does.
   */
  subscribe(channel: string, handler: (message: string) => void): Promise<void>
  unsubscribe(channel: string, handler: (message: string) => void): void
  /** Publishes to `channel` (prefix added); resolves with the receiving processes (Redis' count). */
  publish(channel: string, message: string): Promise<number>
  /** Whether the connections to Redis are up now. */
  readonly up: boolean
  /** Called after Redis came back (ioredis `ready` after a reconnect): followers re-check what they may have missed. */
  onReconnect(listener: () => void): void
  close(): Promise<void>
}
