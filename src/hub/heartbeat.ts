import type { Hub } from './hub.ts'
import type { Replays } from './replay.ts'

/**
 * Time-based checks of every connection, in one sweep: pings each
 * HEARTBEAT_INTERVAL, closes the ones silent (no message, no pong) for
 * CONNECTION_TIMEOUT, the ones whose token expired, and the ones that do not
 * read (send buffer past MAX_SEND_BUFFER) so that nothing is dropped
 * silently on their way (Bun would drop past its own limit).
 */
export class Heartbeat {
  private timer: ReturnType<typeof setInterval> | undefined

  constructor(
    private readonly hub: Hub,
    private readonly intervalMs: number,
    private readonly timeoutMs: number,
    private readonly maxSendBuffer: number,
    /**
     * A history replay is paced by the socket, so its buffer never grows: a
     * client that took none of its backlog for a HEARTBEAT_INTERVAL is the
     * slow consumer instead.
     */
    private readonly replays: Pick<Replays, 'stalled'>,
  ) {}

  start(): void {
    const sweepMs = Math.max(10, Math.min(100, this.intervalMs / 2, this.timeoutMs / 4))
    this.timer = setInterval(() => this.sweep(performance.now(), Date.now()), sweepMs)
  }

  stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** `now` is monotonic (activity, pings); token expiry (`exp`) is wall-clock by definition. */
  private sweep(now: number, wallNow: number): void {
    for (const connection of this.hub.connections()) {
      if (!connection.open) continue
      if (
        connection.socket.getBufferedAmount() > this.maxSendBuffer ||
        this.replays.stalled(connection, now - this.intervalMs)
      ) {
        this.hub.disconnect(connection, 'slow_consumer')
      } else if (connection.expiresAt !== undefined && wallNow >= connection.expiresAt) {
        this.hub.disconnect(connection, 'token_expired')
      } else if (now - connection.lastActive >= this.timeoutMs) {
        this.hub.disconnect(connection, 'timeout')
      } else if (now - connection.lastPing >= this.intervalMs) {
        connection.lastPing = now
        connection.socket.ping()
      }
    }
  }
}
