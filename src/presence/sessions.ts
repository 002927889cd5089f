import type { Statement } from 'bun:sqlite'
import { desc, eq } from 'drizzle-orm'
import type { Store } from '../db/database.ts'
import { sessions } from '../db/schema.ts'
import type { Connection } from '../hub/connection.ts'
import type { ConnectionListener } from '../hub/hub.ts'
import type { Logger } from '../observability/logger.ts'
import type { EndReason } from '../protocol/close.ts'

export type SessionRow = typeof sessions.$inferSelect

/** How often queued session writes are committed. */
const FLUSH_MS = 1000
/** How often live connections' last_seen is written (REST reads live values from memory). */
const TOUCH_MS = 15_000
/** How often ended sessions past SESSION_RETENTION are pruned. */
const PRUNE_MS = 10 * 60_000

/**
 * Sessions, persisted: a row per connection, written cheaply: opens, ends
 * and client names are queued and committed together about once a second,
 * last_seen of live connections every few seconds, never once per message.
 */
export class SessionStore implements ConnectionListener {
  private queue: Array<() => void> = []
  private readonly lastWritten = new Map<string, number>()
  private timers: Array<ReturnType<typeof setInterval>> = []
  private readonly insert: Statement
  private readonly end: Statement
  private readonly name: Statement
  private readonly touch: Statement
  private readonly deleteEnded: Statement

  constructor(
    private readonly store: Store,
    private readonly retentionMs: number,
    private readonly live: () => Iterable<Connection>,
    private readonly logger: Logger,
  ) {
    const { sqlite } = store
    this.insert = sqlite.prepare(
      'INSERT OR REPLACE INTO sessions (connection_id, user_id, session_id, user_agent, remote_address, connected_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)',
    )
    this.end = sqlite.prepare(
      'UPDATE sessions SET ended_at = ?, end_reason = ?, last_seen = ? WHERE connection_id = ?',
    )
    this.name = sqlite.prepare('UPDATE sessions SET client = ? WHERE connection_id = ?')
    this.touch = sqlite.prepare('UPDATE sessions SET last_seen = ? WHERE connection_id = ?')
    this.deleteEnded = sqlite.prepare(
      'DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?',
    )
  }

  /** At start: sessions a crash left open are closed as `server_restart`, at their last_seen. */
  closeDangling(): number {
    return this.store.sqlite
      .prepare(
        "UPDATE sessions SET ended_at = last_seen, end_reason = 'server_restart' WHERE ended_at IS NULL",
      )
      .run().changes
  }

  start(): void {
    this.timers = [
      setInterval(() => this.flush(), FLUSH_MS),
      setInterval(() => this.touchLive(), TOUCH_MS),
      setInterval(() => this.prune(Date.now() - this.retentionMs), PRUNE_MS),
    ]
    this.prune(Date.now() - this.retentionMs)
  }

  stop(): void {
    for (const timer of this.timers) clearInterval(timer)
    this.flush()
  }

  onOpen(connection: Connection): void {
    const { id, userId, sessionId, userAgent, remoteAddress, connectedAt } = connection
    this.queue.push(() =>
      this.insert.run(id, userId, sessionId, userAgent, remoteAddress, connectedAt, connectedAt),
    )
    this.lastWritten.set(id, connectedAt)
  }

  onClose(connection: Connection, reason: EndReason): void {
    const { id, lastSeen } = connection
    const endedAt = Date.now()
    this.queue.push(() => this.end.run(endedAt, reason, lastSeen, id))
    this.lastWritten.delete(id)
  }

  /** The client named itself in `connect`. */
  named(connection: Connection): void {
    const { id, client } = connection
    this.queue.push(() => this.name.run(client ?? null, id))
  }

  /** Commits queued writes in one transaction. */
  flush(): void {
    if (this.queue.length === 0) return
    const queue = this.queue
    this.queue = []
    try {
      this.store.sqlite.transaction(() => {
        for (const write of queue) write()
      })()
    } catch (error) {
      this.logger.error({ err: error, writes: queue.length }, 'session writes failed')
    }
  }

  private touchLive(): void {
    for (const connection of this.live()) {
      const written = this.lastWritten.get(connection.id)
      if (written === undefined || connection.lastSeen <= written) continue
      const { id, lastSeen } = connection
      this.queue.push(() => this.touch.run(lastSeen, id))
      this.lastWritten.set(id, lastSeen)
    }
    this.flush()
  }

  /** Drops ended sessions that ended before `before` (ms). */
  prune(before: number): number {
    this.flush()
    return this.deleteEnded.run(before).changes
  }

  /** A user's sessions, newest first, as stored (pending writes committed first). */
  list(userId: string, limit: number): SessionRow[] {
    this.flush()
    return this.store.db
      .select()
      .from(sessions)
      .where(eq(sessions.userId, userId))
      .orderBy(desc(sessions.connectedAt))
      .limit(limit)
      .all()
  }
}
