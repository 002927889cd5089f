import type { Store, StoreHealth } from '../db/database.ts'
import type { Logger } from '../observability/logger.ts'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'
import type { StreamEntry } from './entry.ts'
import type { NewEntry, StreamStore } from './stream-store.ts'

/** Holds state written during a batch: flushed before commit, dropped on rollback. */
export interface BatchParticipant {
  beforeCommit(): void
  rollback(): void
}

/** An entry appended in the running batch; `delivered` is set once it is fanned out. */
export interface Appended {
  readonly entry: StreamEntry
  readonly exclude: readonly string[] | undefined
  delivered: number
}

export interface Batch {
  /** Appends to the entry's collection stream; fanned out only after the batch commits. */
  append(entry: NewEntry, exclude?: readonly string[]): Appended
}

/** Sends a committed entry to its subscribers (except `exclude`, connection ids); returns recipients. */
export type Fanout = (entry: StreamEntry, exclude: readonly string[] | undefined) => number

/** Told the outcome synchronously, right after the job's own entries were fanned out. */
export type Settle<T> = (error: ProtocolError | undefined, value: T | undefined) => void

interface Job {
  run(batch: Batch): unknown
  settle: Settle<unknown>
  /** performance.now() when queued. */
  queuedAt: number
}

/** Timings for metrics, in seconds. */
export interface CommitObserver {
  committed(seconds: number, entries: number): void
  fannedOut(secondsSinceQueued: number): void
}

/**
 * Group commit. Every job queued in one event-loop turn runs, in order, inside
 * one SQLite transaction (jobs are synchronous: nothing is awaited inside it);
 * after COMMIT each job's entries are fanned out and the job is settled, job
 * by job in offset order, so a submitter's ack sits in the same place in its
 * stream as the op does in everyone else's. Nothing is acknowledged or sent
 * before it is durable.
 *
 * A job refusing with a ProtocolError before it appended anything is refused
 * alone; any other failure rolls the whole batch back and answers every job:
 * 503 when the store failed (disk, file, lock: nothing stored, retry later),
 * 500 when the write itself did. While the database file is deleted or
 * replaced, batches are refused with 503 before anything runs: an ack would
 * promise a write into a file the next start will not see.
 */
export class CommitQueue {
  private jobs: Job[] = []
  private scheduled = false
  private readonly participants: BatchParticipant[]
  private readonly sqlite: Store['sqlite']
  private readonly health: StoreHealth

  constructor(
    store: Pick<Store, 'sqlite' | 'health'>,
    private readonly streams: StreamStore,
    private readonly fanout: Fanout,
    private readonly logger: Logger,
    participants: BatchParticipant[],
    private readonly observer: CommitObserver,
  ) {
    this.sqlite = store.sqlite
    this.health = store.health
    this.participants = [
      ...participants,
      { beforeCommit: () => streams.flushHeads(), rollback: () => streams.resetCache() },
    ]
  }

  submit<T>(job: (batch: Batch) => T, settle: Settle<T>): void {
    this.jobs.push({ run: job, settle: settle as Settle<unknown>, queuedAt: performance.now() })
    if (!this.scheduled) {
      this.scheduled = true
      setImmediate(() => this.flush())
    }
  }

  /** `submit` as a promise, for callers with no ordering to keep (REST). */
  run<T>(job: (batch: Batch) => T): Promise<T> {
    return new Promise<T>((resolve, reject) =>
      this.submit(job, (error, value) => (error ? reject(error) : resolve(value as T))),
    )
  }

  /** Commits whatever is queued now (also used at shutdown). */
  flush(): void {
    this.scheduled = false
    const jobs = this.jobs
    if (jobs.length === 0) return
    this.jobs = []
    const lost = this.health.fileProblem()
    if (lost !== undefined) {
      this.health.refused()
      const refusal = new ProtocolError(
        ErrorCode.Unavailable,
        'store unavailable: the database file was deleted or replaced; this server must be restarted',
      )
      for (const job of jobs) this.settle(job, refusal, undefined)
      return
    }
    const appended: Appended[] = []
    const batch: Batch = {
      append: (entry, exclude) => {
        const item: Appended = { entry: this.streams.append(entry), exclude, delivered: 0 }
        appended.push(item)
        return item
      },
    }
    type Outcome = { value?: unknown; error?: ProtocolError; appendedUpTo: number }
    const outcomes: Outcome[] = []
    const started = performance.now()
    try {
      this.sqlite.transaction(() => {
        for (const job of jobs) {
          const before = appended.length
          try {
            const value = job.run(batch)
            outcomes.push({ value, appendedUpTo: appended.length })
          } catch (error) {
            if (!(error instanceof ProtocolError) || appended.length !== before) throw error
            outcomes.push({ error, appendedUpTo: before })
          }
        }
        for (const participant of this.participants) participant.beforeCommit()
      })()
    } catch (error) {
      for (const participant of this.participants) participant.rollback()
      this.logger.error({ err: error, jobs: jobs.length }, 'commit failed; batch rolled back')
      const failure = this.health.failed(error)
        ? new ProtocolError(
            ErrorCode.Unavailable,
            'store unavailable: this write was not stored; retry later',
          )
        : new ProtocolError(ErrorCode.Internal, 'the store could not commit this write')
      for (const job of jobs) this.settle(job, failure, undefined)
      return
    }
    // A batch of refusals wrote nothing: it says nothing about the disk.
    if (appended.length > 0) this.health.succeeded()
    this.observer.committed((performance.now() - started) / 1000, appended.length)
    let next = 0
    jobs.forEach((job, i) => {
      const outcome = outcomes[i] as Outcome
      for (; next < outcome.appendedUpTo; next++) {
        this.publish(appended[next] as Appended)
        this.observer.fannedOut((performance.now() - job.queuedAt) / 1000)
      }
      this.settle(job, outcome.error, outcome.value)
    })
  }

  private publish(item: Appended): void {
    try {
      item.delivered = this.fanout(item.entry, item.exclude)
    } catch (error) {
      this.logger.error({ err: error, collection: item.entry.collection }, 'fan-out failed')
    }
  }

  private settle(job: Job, error: ProtocolError | undefined, value: unknown): void {
    try {
      job.settle(error, value)
    } catch (failure) {
      this.logger.error({ err: failure }, 'settling a write failed')
    }
  }
}
