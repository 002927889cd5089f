import type { Connection } from '../hub/connection.ts'
import type { ConnectionListener } from '../hub/hub.ts'
import type { Logger } from '../observability/logger.ts'
import type { EndReason } from '../protocol/close.ts'
import {
  isPromise,
  type Maybe,
  type SessionBackend,
  type SessionRecord,
  type SessionWrite,
  then,
} from '../store/store.ts'

export type SessionRow = SessionRecord

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
  private queue: SessionWrite[] = []
  private timers: Array<ReturnType<typeof setInterval>> = []
  /** A flush in flight (asynchronous stores): the next one waits for it. */
  private flushing: Promise<void> | undefined
  /** Rows in the table, counted once at start and kept up to date by every write. */
  private rows = 0

  constructor(
    private readonly backend: SessionBackend,
    private readonly limits: SessionLimits,
    private readonly live: () => Iterable<Connection>,
    private readonly logger: Logger,
    /** This process's NODE_ID, recorded with each session. */
    private readonly nodeId: string,
    /** Whether this process runs the pruning now (one process of a cluster does). */
    private readonly prunes: () => boolean = () => true,
  ) {
    const rows = backend.count()
    if (isPromise(rows)) rows.then((n) => (this.rows += n)).catch(() => {})
    else this.rows = rows
  }

  /**
   * At start: this node's sessions that a crash left open are closed as
   * `server_restart`, at their last_seen (other processes' live sessions are
   * theirs; a lost process's are ended by the survivors).
   */
  closeDangling(): Maybe<number> {
    return this.backend.closeNode(this.nodeId, 'server_restart')
  }

  start(): void {
    this.timers = [
      setInterval(() => void this.flush(), FLUSH_MS),
      setInterval(() => this.touchLive(), TOUCH_MS),
      setInterval(() => void this.prune(Date.now() - this.limits.retentionMs), PRUNE_MS),
    ]
    void this.prune(Date.now() - this.limits.retentionMs)
  }

  async stop(): Promise<void> {
    for (const timer of this.timers) clearInterval(timer)
    await this.flush()
  }

  onOpen(connection: Connection): void {
    const { id, userId, sessionId, userAgent, remoteAddress, connectedAt, client } = connection
    this.queue.push({
      kind: 'open',
      record: {
        connectionId: id,
        userId,
        sessionId,
        client: client ?? null,
        userAgent,
        remoteAddress,
        nodeId: this.nodeId,
        connectedAt,
        lastSeen: connectedAt,
        endedAt: null,
        endReason: null,
      },
    })
    this.rows++
  }

  onClose(connection: Connection, reason: EndReason): void {
    const { id, lastSeen } = connection
    this.queue.push({ kind: 'end', connectionId: id, endedAt: Date.now(), reason, lastSeen })
  }

  /** The client named itself in `connect`. */
  named(connection: Connection): void {
    this.queue.push({
      kind: 'name',
      connectionId: connection.id,
      client: connection.client ?? null,
    })
  }

  /** Commits queued writes in one transaction, then holds the table to SESSION_MAX_ROWS. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing.then(() => this.flush())
    if (this.queue.length === 0) return Promise.resolve()
    const queue = this.queue
    this.queue = []
    const failed = (error: unknown) =>
      // Counted for readiness by the store; the writes are dropped (sessions are a record, not data).
      this.logger.error({ err: error, writes: queue.length }, 'session writes failed')
    let applied: Maybe<void>
    try {
      applied = this.backend.apply(queue)
    } catch (error) {
      failed(error)
      return Promise.resolve()
    }
    const capped = () => {
      if (this.rows > this.limits.maxRows && this.prunes()) return this.pruneToCap()
    }
    if (!isPromise(applied)) {
      const pruned = capped()
      return isPromise(pruned) ? pruned : Promise.resolve()
    }
    this.flushing = applied.then(capped, failed).finally(() => {
      this.flushing = undefined
    })
    return this.flushing
  }

  /** Deletes the sessions that ended first until the table is back at SESSION_MAX_ROWS. */
  private async pruneToCap(): Promise<void> {
    let budget = Math.min(this.rows - this.limits.maxRows, PRUNE_PER_FLUSH)
    try {
      while (budget > 0) {
        const deleted = await this.backend.pruneOldest(Math.min(budget, PRUNE_CHUNK))
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
      this.queue.push({ kind: 'touch', connectionId: id, lastSeen })
      connection.lastSeenStored = lastSeen
    }
    void this.flush()
  }

  /** Drops ended sessions that ended before `before` (ms), a chunk at a time. */
  async prune(before: number): Promise<number> {
    await this.flush()
    if (!this.prunes()) return 0
    let total = 0
    // Runs from a timer: a store failure is logged (and seen by readiness), never thrown.
    try {
      for (;;) {
        const deleted = await this.backend.pruneEnded(before, PRUNE_CHUNK)
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
  list(userId: string, limit: number): Promise<SessionRow[]> {
    return this.flush().then(() => then(this.backend.list(userId, limit), (rows) => rows))
  }
}
