import type { Committed, NodeBroker } from '../broker/broker.ts'
import type { DocumentStore } from '../documents/document-store.ts'
import type { Logger } from '../observability/logger.ts'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'
import {
  type CommitPlan,
  type IntakeMark,
  isPromise,
  type Maybe,
  type Store,
  type WriteTransaction,
} from '../store/store.ts'
import type { StreamEntry } from './entry.ts'
import type { NewEntry, StreamStore } from './stream-store.ts'

/** An entry appended in the running batch; `delivered` is set once it is fanned out here. */
export interface Appended extends Committed {
  readonly entry: StreamEntry
  readonly exclude: readonly string[] | undefined
  delivered: number
}

export interface Batch {
  /**
   * Appends to the entry's collection stream; fanned out only after the
   * batch commits. `entry` becomes the stored entry (its offset is set on
   * it): pass a new object each time.
   */
  append(entry: NewEntry, exclude?: readonly string[]): Appended
}

/** Told the outcome right after the job's own entries were fanned out here. */
export type Settle<T> = (error: ProtocolError | undefined, value: T | undefined) => void

/**
 * What a job reads, so that an asynchronous store's batch can load it
 * before the jobs run: the collection it appends to, and a document with
 * its changes from version `fromV` (or its last `window` changes).
 */
export interface Needs {
  collection: string
  document?: string
  fromV?: number
  window?: number
}

interface Job {
  needs: Needs
  run(batch: Batch): unknown
  settle: Settle<unknown>
  /** performance.now() when queued. */
  queuedAt: number
  /** Written with the batch when the job succeeds (see `marking`). */
  marks: readonly IntakeMark[] | undefined
}

/** Timings for metrics, in seconds. */
export interface CommitObserver {
  committed(seconds: number, entries: number): void
  fannedOut(secondsSinceQueued: number): void
}

type Outcome = { value?: unknown; error?: ProtocolError; appendedUpTo: number }

/**
 * Group commit. Every job queued while no batch is being written runs, in
 * order, inside one store transaction (jobs are synchronous: nothing is
 * awaited inside one); after COMMIT each job's entries are fanned out and
 * the job is settled, in offset order, so a submitter's ack sits in the same
 * place in its stream as the op does in everyone else's. Nothing is
 * acknowledged or sent before it is durable.
 *
 * SQLite answers synchronously: a batch is one event-loop turn. PostgreSQL
 * does not: one batch is in flight at a time; it first locks the heads of
 * the collections it writes (no other process commits to them until it
 * ends), drops cached documents another process changed since, loads what
 * its jobs read, runs them, and writes the plan. Jobs queued meanwhile form
 * the next batch.
 *
 * A job refusing with a ProtocolError before it appended anything is refused
 * alone; any other failure rolls the whole batch back and answers every job:
 * 503 when the store failed (unreachable, disk, file, lock: nothing stored,
 * retry later), 500 when the write itself did.
 */
export class CommitQueue {
  private jobs: Job[] = []
  private scheduled = false
  private inFlight: Promise<void> | undefined
  /** Batches committed since start: a read that saw none commit meanwhile saw committed state. */
  commits = 0
  private marks: readonly IntakeMark[] | undefined

  constructor(
    private readonly store: Store,
    private readonly streams: StreamStore,
    private readonly documents: DocumentStore,
    private readonly broker: NodeBroker,
    private readonly logger: Logger,
    private readonly observer: CommitObserver,
  ) {}

  submit<T>(needs: Needs, job: (batch: Batch) => T, settle: Settle<T>): void {
    this.jobs.push({
      needs,
      run: job,
      settle: settle as Settle<unknown>,
      queuedAt: performance.now(),
      marks: this.marks,
    })
    if (!this.scheduled && this.inFlight === undefined) {
      this.scheduled = true
      setImmediate(() => this.flush())
    }
  }

  /**
   * Calls `queue` (which submits synchronously, e.g. Documents.submit) so that
   * the jobs it submits carry `marks`: written in the batch's transaction
   * when the job succeeds, not at all when it is refused (the intake's
   * idempotency keys, committed with the effect).
   */
  marking<T>(marks: readonly IntakeMark[], queue: () => T): T {
    this.marks = marks
    try {
      return queue()
    } finally {
      this.marks = undefined
    }
  }

  /** `submit` as a promise, for callers with no ordering to keep (REST). */
  run<T>(needs: Needs, job: (batch: Batch) => T): Promise<T> {
    return new Promise<T>((resolve, reject) =>
      this.submit(needs, job, (error, value) => (error ? reject(error) : resolve(value as T))),
    )
  }

  /** Commits whatever is queued now; resolves when it is (also used at shutdown). */
  flush(): Promise<void> {
    this.scheduled = false
    if (this.inFlight) return this.inFlight.then(() => this.flush())
    const jobs = this.jobs
    if (jobs.length === 0) return Promise.resolve()
    this.jobs = []
    const done = this.commit(jobs)
    if (!isPromise(done)) return Promise.resolve()
    this.inFlight = done.finally(() => {
      this.inFlight = undefined
      if (this.jobs.length > 0) void this.flush()
    })
    return this.inFlight
  }

  /** Whether a batch is being written now (asynchronous stores). */
  get busy(): boolean {
    return this.inFlight !== undefined
  }

  /** Resolves when no batch is being written. */
  async idle(): Promise<void> {
    while (this.inFlight) await this.inFlight
  }

  private commit(jobs: Job[]): Maybe<void> {
    const appended: Appended[] = []
    const batch: Batch = {
      append: (entry, exclude) => {
        const item: Appended = { entry: this.streams.append(entry), exclude, delivered: 0 }
        appended.push(item)
        return item
      },
    }
    const started = performance.now()
    let outcomes: Outcome[] = []
    const failed = (error: unknown) => {
      this.streams.rollback()
      this.documents.rollback()
      this.logger.error({ err: error, jobs: jobs.length }, 'commit failed; batch rolled back')
      const failure = this.store.isUnavailable(error)
        ? new ProtocolError(
            ErrorCode.Unavailable,
            error instanceof Error && error.name === 'FileLostError'
              ? 'store unavailable: the database file was deleted or replaced; this server must be restarted'
              : 'store unavailable: this write was not stored; retry later',
          )
        : new ProtocolError(ErrorCode.Internal, 'the store could not commit this write')
      for (const job of jobs) this.settle(job, failure, undefined)
    }
    const succeeded = () => {
      this.commits++
      this.streams.committed()
      this.documents.committed()
      this.observer.committed((performance.now() - started) / 1000, appended.length)
      this.fanOut(jobs, outcomes, appended)
    }
    let result: Maybe<void>
    try {
      result = this.store.transaction((tx) => {
        const loaded = this.prepare(tx, jobs)
        const write = () => {
          outcomes = this.runJobs(jobs, batch, appended)
          const { entries, heads } = this.streams.plan()
          const plan: CommitPlan = { entries, heads, documents: this.documents.plan() }
          // A loop, not flatMap: that made an empty array per job (~4% of bench:fanout's CPU).
          const marks: IntakeMark[] = []
          jobs.forEach((job, i) => {
            if (job.marks !== undefined && outcomes[i]?.error === undefined)
              marks.push(...job.marks)
          })
          if (marks.length > 0) plan.marks = marks
          return tx.write(plan)
        }
        return isPromise(loaded) ? loaded.then(write) : write()
      })
    } catch (error) {
      failed(error)
      return
    }
    if (!isPromise(result)) return succeeded()
    return result.then(succeeded, failed)
  }

  /**
   * Synchronous store: chain reads go to its transaction as jobs need them.
   * Asynchronous store: lock the batch's heads, drop cached documents other
   * processes changed since, load the documents and chains the jobs read.
   */
  private prepare(tx: WriteTransaction, jobs: Job[]): Maybe<void> {
    if (this.store.kind === 'sqlite') {
      this.streams.begin(tx)
      return
    }
    this.streams.begin(undefined)
    return this.load(tx, jobs)
  }

  /** `jobs` grows by the queued jobs that the locks it took cover (see below). */
  private async load(tx: WriteTransaction, jobs: Job[]): Promise<void> {
    const collections = [...new Set(jobs.map((job) => job.needs.collection))].sort()
    const heads = await tx.lockHeads(collections)
    // Jobs queued while the locks were awaited join this batch if their
    // collections are locked already: the lock is the cluster's bottleneck, so
    // each hold should commit as much as it can. A prefix keeps the queue's order.
    let joining = 0
    while (joining < this.jobs.length && heads.has((this.jobs[joining] as Job).needs.collection))
      joining++
    if (joining > 0) jobs.push(...this.jobs.splice(0, joining))
    for (const collection of collections) {
      const head = heads.get(collection) ?? 0
      const cached = this.streams.cachedHead(collection)
      if (cached !== undefined && cached !== head) {
        const changed = await tx.changedDocuments(
          collection,
          Math.min(cached, head),
          Math.max(cached, head),
        )
        // Retention removed part of what changed: any cached document of it may be stale.
        if (changed === undefined) this.documents.evictCollection(collection)
        else this.documents.evict(collection, changed)
      }
      this.streams.setHead(collection, head)
    }
    const wanted = new Map<string, { collection: string; id: string }>()
    for (const { needs } of jobs)
      if (needs.document !== undefined && !this.documents.has(needs.collection, needs.document))
        wanted.set(`${needs.collection}\u0000${needs.document}`, {
          collection: needs.collection,
          id: needs.document,
        })
    if (wanted.size > 0) {
      const keys = [...wanted.values()]
      this.documents.load(keys, await tx.documents(keys))
    }
    for (const { needs } of jobs) {
      if (needs.document === undefined) continue
      if (needs.fromV === undefined && needs.window === undefined) continue
      const state = this.documents.has(needs.collection, needs.document)
        ? this.documents.get(needs.collection, needs.document)
        : undefined
      if (!state) continue
      const fromV = needs.fromV ?? Math.max(0, state.v - (needs.window ?? 0))
      if (fromV < state.v)
        this.streams.prefetch(await tx.changesBack(needs.collection, state.lastOffset, fromV))
    }
  }

  private runJobs(jobs: readonly Job[], batch: Batch, appended: Appended[]): Outcome[] {
    const outcomes: Outcome[] = []
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
    return outcomes
  }

  /**
   * Hands the entries to the broker; each job settles once the last entry
   * before or of it is delivered here (a job that appended nothing settles
   * in its place too, right after the entries of the jobs before it).
   */
  private fanOut(jobs: readonly Job[], outcomes: readonly Outcome[], appended: Appended[]): void {
    const after: Array<Array<() => void>> = appended.map(() => [])
    const first: Array<() => void> = []
    jobs.forEach((job, i) => {
      const outcome = outcomes[i] as Outcome
      const settle = () => this.settle(job, outcome.error, outcome.value)
      if (outcome.appendedUpTo === 0) first.push(settle)
      else after[outcome.appendedUpTo - 1]?.push(settle)
    })
    for (const settle of first) settle()
    if (appended.length === 0) return
    const index = new Map<Committed, number>(appended.map((item, i) => [item, i]))
    const queuedAt = new Map<number, number>()
    jobs.forEach((job, i) => {
      const outcome = outcomes[i] as Outcome
      queuedAt.set(outcome.appendedUpTo - 1, job.queuedAt)
    })
    try {
      this.broker.committed(appended, (item, recipients) => {
        const i = index.get(item)
        if (i === undefined) return
        ;(item as Appended).delivered = recipients
        const since = queuedAt.get(i)
        if (since !== undefined) this.observer.fannedOut((performance.now() - since) / 1000)
        for (const settle of after[i] ?? []) settle()
      })
    } catch (error) {
      this.logger.error({ err: error }, 'fan-out failed')
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
