import type { Hub } from './hub.ts'

/**
 * Pings every connection each HEARTBEAT_INTERVAL and closes the ones silent
 * (no message, no pong) for CONNECTION_TIMEOUT. One sweep over all
 * connections, at a fraction of the shorter period, keeps it to one timer.
 */
export class Heartbeat {
  private timer: ReturnType<typeof setInterval> | undefined

  constructor(
    private readonly hub: Hub,
    private readonly intervalMs: number,
    private readonly timeoutMs: number,
  ) {}

  start(): void {
    const sweepMs = Math.max(10, Math.min(1000, this.intervalMs / 2, this.timeoutMs / 4))
    this.timer = setInterval(() => this.sweep(Date.now()), sweepMs)
  }

  stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  private sweep(now: number): void {
    for (const connection of this.hub.connections()) {
      if (!connection.open) continue
      if (now - connection.lastSeen >= this.timeoutMs) {
        this.hub.disconnect(connection, 'timeout')
      } else if (now - connection.lastPing >= this.intervalMs) {
        connection.lastPing = now
        connection.socket.ping()
      }
    }
  }
}
