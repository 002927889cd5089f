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
const PRUNE_MS = 60_000
/** Rows deleted by one statement, so a large prune never holds the write lock for long. */
const PRUNE_CHUNK = 5_000
/** Rows SESSION_MAX_ROWS pruning deletes in one flush at most; the rest go at the next. */
const PRUNE_PER_FLUSH = 50_000

export interface SessionLimits {
  /** How long an ended session is kept, ms (SESSION_RETENTION). */
  retentionMs: number
  /** Most rows kept (SESSION_MAX_ROWS): the oldest ended sessions go first, live ones never. */
  maxRows: number
}

/**
 * Sessions, persisted: a row per connection, written cheaply: opens, ends
 * and client names are queued and committed together about once a second,
 * last_seen of live connections every few seconds, never once per message.
 * Bounded by age (SESSION_RETENTION) and by count (SESSION_MAX_ROWS, checked
 * after every flush), so connection churn cannot grow the file without end.
 */
export class SessionStore implements ConnectionListener {
  private queue: Array<() => void> = []
  private timers: Array<ReturnType<typeof setInterval>> = []
  private readonly insert: Statement
  private readonly end: Statement
  private readonly name: Statement
  private readonly touch: Statement
  private readonly deleteEnded: Statement
  private readonly deleteOldest: Statement
  /** Rows in the table, counted once at start and kept up to date by every write. */
  private rows: number

  constructor(
    private readonly store: Store,
    private readonly limits: SessionLimits,
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
    // Both walk the ended_at index from the oldest end, a chunk at a time.
    this.deleteEnded = sqlite.prepare(
      'DELETE FROM sessions WHERE connection_id IN (SELECT connection_id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ? ORDER BY ended_at LIMIT ?)',
    )
    this.deleteOldest = sqlite.prepare(
      'DELETE FROM sessions WHERE connection_id IN (SELECT connection_id FROM sessions WHERE ended_at IS NOT NULL ORDER BY ended_at LIMIT ?)',
    )
    this.rows = (sqlite.query('SELECT count(*) AS n FROM sessions').get() as { n: number }).n
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
      setInterval(() => this.prune(Date.now() - this.limits.retentionMs), PRUNE_MS),
    ]
    this.prune(Date.now() - this.limits.retentionMs)
  }

  stop(): void {
    for (const timer of this.timers) clearInterval(timer)
    this.flush()
  }

  onOpen(connection: Connection): void {
    const { id, userId, sessionId, userAgent, remoteAddress, connectedAt } = connection
    this.queue.push(() => {
      this.insert.run(id, userId, sessionId, userAgent, remoteAddress, connectedAt, connectedAt)
      this.rows++
    })
  }

  onClose(connection: Connection, reason: EndReason): void {
    const { id, lastSeen } = connection
    const endedAt = Date.now()
    this.queue.push(() => this.end.run(endedAt, reason, lastSeen, id))
  }

  /** The client named itself in `connect`. */
  named(connection: Connection): void {
    const { id, client } = connection
    this.queue.push(() => this.name.run(client ?? null, id))
  }

  /** Commits queued writes in one transaction, then holds the table to SESSION_MAX_ROWS. */
  flush(): void {
    if (this.queue.length === 0) return
    const queue = this.queue
    this.queue = []
    const rowsBefore = this.rows
    const { health } = this.store
    // Not into a deleted or replaced file (logged by the health check): the next start would not see them.
    if (health.fileProblem() !== undefined) {
      health.refused()
      return
    }
    try {
      this.store.sqlite.transaction(() => {
        for (const write of queue) write()
      })()
      health.succeeded()
    } catch (error) {
      this.rows = rowsBefore // rolled back
      health.failed(error) // counts for readiness like any other write
      this.logger.error({ err: error, writes: queue.length }, 'session writes failed')
    }
    if (this.rows > this.limits.maxRows) this.pruneToCap()
  }

  /** Deletes the sessions that ended first until the table is back at SESSION_MAX_ROWS. */
  private pruneToCap(): void {
    let budget = Math.min(this.rows - this.limits.maxRows, PRUNE_PER_FLUSH)
    try {
      while (budget > 0) {
        const deleted = this.deleteOldest.run(Math.min(budget, PRUNE_CHUNK)).changes
        this.rows -= deleted
        budget -= deleted
        if (deleted === 0) break // only live sessions are left
      }
    } catch (error) {
      this.logger.error({ err: error }, 'session pruning failed')
    }
  }

  private touchLive(): void {
    for (const connection of this.live()) {
      const { id, lastSeen } = connection
      if (!connection.open || lastSeen <= connection.lastSeenStored) continue
      this.queue.push(() => this.touch.run(lastSeen, id))
      connection.lastSeenStored = lastSeen
    }
    this.flush()
  }

  /** Drops ended sessions that ended before `before` (ms), a chunk at a time. */
  prune(before: number): number {
    this.flush()
    let total = 0
    // Runs from a timer: a store failure is logged (and seen by readiness), never thrown.
    try {
      for (;;) {
        const deleted = this.deleteEnded.run(before, PRUNE_CHUNK).changes
        total += deleted
        this.rows -= deleted
        if (deleted < PRUNE_CHUNK) break
      }
    } catch (error) {
      this.logger.error({ err: error }, 'session pruning failed')
    }
    return total
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
