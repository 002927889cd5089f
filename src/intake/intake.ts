import type Redis from 'ioredis'
import { RELEASE, RENEW } from '../cluster/lua.ts'
import {
  checkBody,
  isPublishRoute,
  type PublishActions,
  type PublishBody,
  type PublishRoute,
  publishTarget,
} from '../http/publish-bodies.ts'
import type { Logger } from '../observability/logger.ts'
import { type ErrorBody, ErrorCode, ProtocolError } from '../protocol/errors.ts'
import { parseJsonBody } from '../protocol/validate.ts'
import type { IntakeMark, Store } from '../store/store.ts'
import type { CommitQueue } from '../streams/commit-queue.ts'

export interface IntakeSettings {
  /** INTAKE_STREAM: the stream key (no REDIS_PREFIX). */
  stream: string
  /** INTAKE_GROUP */
  group: string
  /** INTAKE_MAX_ATTEMPTS */
  maxAttempts: number
  /** INTAKE_RETRY_AFTER, in ms. */
  retryAfterMs: number
  /** NODE_ID: the consumer's name and the lease's value. */
  nodeId: string
  /** MAX_REQUEST_SIZE and MAX_JSON_DEPTH: a body gets the REST route's limits. */
  maxRequestSize: number
  maxJsonDepth: number
}

export interface IntakeTimings {
  /** The consumer lease's life: a dead holder's entries are taken over this long after its last renewal. */
  leaseMs: number
  /** How often the holder renews it and a standby tries to take it. */
  renewMs: number
  /** XREADGROUP BLOCK: how long one read waits for new entries. */
  blockMs: number
  /** Entries per read (and so at most per store transaction). */
  batch: number
}

export const INTAKE_TIMINGS: IntakeTimings = {
  leaseMs: 6000,
  renewMs: 1500,
  blockMs: 1000,
  batch: 1000,
}

/** Marks are kept at least this long (see pruneMarks). */
const MARK_RETENTION_MS = 24 * 3600_000
/** How far before the oldest pending entry's XADD time marks are kept (clock skew between Redis and this process). */
const MARK_SKEW_MS = 3600_000
const PRUNE_EVERY_MS = 3600_000
const PRUNE_BATCH = 10_000
/** Past this many undelivered entries the lag is reported as this (a fallback count, see lag()). */
const LAG_COUNT_CAP = 100_000

export interface IntakeCounters {
  /** Entries acknowledged after their effect (or found already applied). */
  processed: number
  /** Times an entry was left pending after a passing failure, to be tried again. */
  retried: number
  deadLettered: number
}

export interface IntakeStatus {
  stream: string
  group: string
  length: number
  pending: number
  dead: number
  lag: number
}

export interface DeadLetter {
  id: string
  source_id: string
  route: string
  body: string
  error: ErrorBody
  attempts: number
  failed_at: string
}

type RawEntry = [id: string, fields: string[]]

/** One entry of a read, with what became of it. */
interface Item {
  id: string
  route: string
  body: string
  attempts: number
}

type Failure = { item: Item; error: ProtocolError }

const noRoute = () => new ProtocolError(ErrorCode.NotFound, 'no such route')

/** A failure that may pass (store unavailable, a commit that failed): tried again. */
const passing = (error: ProtocolError) =>
  error.code === ErrorCode.Unavailable || error.code === ErrorCode.Internal

function fieldsOf(flat: readonly string[]): Map<string, string> {
  const fields = new Map<string, string>()
  for (let i = 0; i + 1 < flat.length; i += 2) fields.set(flat[i] as string, flat[i + 1] as string)
  return fields
}

function asProtocolError(error: unknown): ProtocolError {
  if (error instanceof ProtocolError) return error
  return new ProtocolError(
    ErrorCode.Internal,
    error instanceof Error ? error.message : 'internal error',
  )
}

/**
 * The intake queue: applies the entries of INTAKE_STREAM as the REST routes
 * of their names would, exactly once, in stream order.
 *
 * Order: one process consumes at a time, the holder of a Redis lease
 * (`{stream}:lease:{group}`, renewed every `renewMs`, lost after `leaseMs`
 * without renewal); the others stand by and take it over when the holder
 * dies. A read's entries are queued on the commit queue in one event-loop
 * turn, so they commit in one store transaction, in stream order.
 *
 * Exactly once: each entry's id is written to `intake_applied` in the
 * transaction of its effect; the ids of a read are looked up first, and an
 * entry already there is only acknowledged. A second mark for an id fails
 * its transaction (a plain INSERT), so not even two holders (a lease lost
 * mid-batch) can apply one twice.
 *
 * Retries: the pending entries list is worked through (in id order, before
 * anything new is read) whenever it may hold entries: after a take-over
 * (the last holder's) and after a passing failure, which stops the batch
 * there and waits `retryAfterMs` before the next try.
 */
export class Intake {
  readonly counters: IntakeCounters = { processed: 0, retried: 0, deadLettered: 0 }
  private readonly leaseKey: string
  private readonly deadKey: string
  private holdsLease = false
  private leaseUntil = 0
  private running = false
  private loop: Promise<void> | undefined
  private renewer: ReturnType<typeof setInterval> | undefined
  /** The pending list may hold entries to work through before reading new ones. */
  private backlog = true
  /** After a passing failure: the first pending entry waits retryAfterMs since its last try. */
  private retryWait = false
  private lastPrune = 0
  private wake: (() => void) | undefined

  constructor(
    private readonly redis: { commands: Redis; reader: Redis },
    private readonly store: Store,
    private readonly queue: CommitQueue,
    private readonly actions: PublishActions,
    readonly settings: IntakeSettings,
    private readonly logger: Logger,
    private readonly timings: IntakeTimings = INTAKE_TIMINGS,
  ) {
    this.leaseKey = `${settings.stream}:lease:${settings.group}`
    this.deadKey = `${settings.stream}:dead`
  }

  /** Creates the group if missing and starts consuming (or standing by). */
  async start(): Promise<void> {
    await this.createGroup()
    this.running = true
    await this.lease()
    this.renewer = setInterval(() => void this.lease(), this.timings.renewMs)
    this.loop = this.run()
  }

  /** Finishes the batch in hand (its entries are acknowledged), releases the lease, closes. */
  async stop(): Promise<void> {
    if (!this.running) return
    this.running = false
    clearInterval(this.renewer)
    this.wake?.()
    // Ends a blocking read at once; a batch being applied still finishes.
    this.redis.reader.disconnect()
    await this.loop
    try {
      if (this.holdsLease)
        await RELEASE.run(this.redis.commands, [this.leaseKey], [this.settings.nodeId])
    } catch (error) {
      this.logger.warn({ err: error }, 'intake: releasing the lease failed')
    }
    this.redis.commands.disconnect()
  }

  /** Whether this process is the one consuming now. */
  get active(): boolean {
    return this.holdsLease && performance.now() < this.leaseUntil
  }

  private async createGroup(): Promise<void> {
    try {
      await this.redis.commands.xgroup(
        'CREATE',
        this.settings.stream,
        this.settings.group,
        '0',
        'MKSTREAM',
      )
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('BUSYGROUP')) throw error
    }
  }

  /** Takes or renews the lease (compare-and-set: only the holder extends it). */
  private async lease(): Promise<void> {
    if (!this.running) return
    const sent = performance.now()
    const { commands } = this.redis
    try {
      if (this.holdsLease) {
        const renewed = await RENEW.run(
          commands,
          [this.leaseKey],
          [this.settings.nodeId, this.timings.leaseMs],
        )
        if (renewed === 1) this.leaseUntil = sent + this.timings.leaseMs
        else {
          this.holdsLease = false
          this.logger.warn({ stream: this.settings.stream }, 'intake: consumer lease lost')
        }
      } else {
        const taken = await commands.set(
          this.leaseKey,
          this.settings.nodeId,
          'PX',
          this.timings.leaseMs,
          'NX',
        )
        if (taken === 'OK') {
          this.holdsLease = true
          this.leaseUntil = sent + this.timings.leaseMs
          // The last holder's unacknowledged entries come first.
          this.backlog = true
          this.retryWait = false
          this.logger.info({ stream: this.settings.stream }, 'intake: consuming')
          this.wake?.()
        }
      }
    } catch (error) {
      // Redis away: a held lease runs out by itself (leaseUntil), as it does in Redis.
      this.logger.debug({ err: error }, 'intake: lease check failed')
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms)
      function done() {
        clearTimeout(timer)
        resolve()
      }
      this.wake = done
    })
  }

  private async run(): Promise<void> {
    while (this.running) {
      try {
        if (!this.active) {
          await this.pause(this.timings.renewMs)
          continue
        }
        if (Date.now() - this.lastPrune > PRUNE_EVERY_MS) await this.pruneMarks()
        if (this.backlog) await this.workPending()
        else await this.readNew()
      } catch (error) {
        if (!this.running) break
        // A read may have been delivered and not settled: it is pending now, and comes first.
        this.backlog = true
        if (error instanceof Error && error.message.includes('NOGROUP'))
          await this.createGroup().catch(() => {})
        this.logger.warn({ err: error }, 'intake: read failed; retrying')
        await this.pause(500)
      }
    }
  }

  private async readNew(): Promise<void> {
    const { stream, group, nodeId } = this.settings
    const reply = (await this.redis.reader.xreadgroup(
      'GROUP',
      group,
      nodeId,
      'COUNT',
      this.timings.batch,
      'BLOCK',
      this.timings.blockMs,
      'STREAMS',
      stream,
      '>',
    )) as Array<[string, RawEntry[]]> | null
    const entries = reply?.[0]?.[1] ?? []
    if (entries.length > 0) await this.process(entries.map((entry) => this.item(entry, 1)))
  }

  /** One page of the pending list, oldest first, claimed to this consumer and applied. */
  private async workPending(): Promise<void> {
    const { stream, group, nodeId } = this.settings
    const { commands } = this.redis
    const first = (await commands.xpending(stream, group, '-', '+', 1)) as Array<
      [string, string, number, number]
    >
    const head = first[0]
    if (head === undefined) {
      this.backlog = false
      this.retryWait = false
      return
    }
    if (this.retryWait && head[2] < this.settings.retryAfterMs) {
      await this.pause(this.settings.retryAfterMs - head[2])
      return
    }
    this.retryWait = false
    // Idle time 0: this process is the only consumer; in id order whatever their idle times.
    const claimed = (await commands.xautoclaim(
      stream,
      group,
      nodeId,
      0,
      '0-0',
      'COUNT',
      this.timings.batch,
    )) as [string, RawEntry[], string[]]
    const entries = claimed[1]
    if (entries.length === 0) return
    const last = (entries.at(-1) as RawEntry)[0]
    const counts = (await commands.xpending(
      stream,
      group,
      entries[0]?.[0] as string,
      last,
      entries.length,
    )) as Array<[string, string, number, number]>
    const attempts = new Map(counts.map(([id, , , deliveries]) => [id, deliveries]))
    await this.process(entries.map((entry) => this.item(entry, attempts.get(entry[0]) ?? 1)))
  }

  private item([id, flat]: RawEntry, attempts: number): Item {
    const fields = fieldsOf(flat)
    return { id, route: fields.get('route') ?? '', body: fields.get('body') ?? '', attempts }
  }

  /** The body as the REST route would take it, or the error a REST caller would get. */
  private parse(item: Item): { route: PublishRoute; body: unknown } {
    if (!isPublishRoute(item.route)) throw noRoute()
    const size = Buffer.byteLength(item.body)
    const limit = this.settings.maxRequestSize
    if (size > limit)
      throw new ProtocolError(
        ErrorCode.TooLarge,
        `the request body is ${size} bytes; the limit is ${limit} bytes`,
        { limit, size },
      )
    const value = parseJsonBody(item.body, this.settings.maxJsonDepth)
    return { route: item.route, body: checkBody(item.route, value) }
  }

  /** Queues the entry's effect (synchronously, carrying its mark), as its REST route does. */
  private effect(route: Exclude<PublishRoute, 'broadcast/user'>, body: unknown, mark: IntakeMark) {
    return this.queue.marking([mark], () =>
      route === 'broadcast/channel'
        ? this.actions.broadcastChannel(body as PublishBody<typeof route>)
        : this.actions.publish(publishTarget(route, body as PublishBody<typeof route>)),
    )
  }

  /**
   * Applies a read in stream order: entries already applied are only
   * acknowledged; the others' jobs are all queued in this turn, so they
   * commit in one transaction; user broadcasts (no store effect) are marked
   * in a transaction of their own, then sent (at most once).
   */
  private async process(items: readonly Item[]): Promise<void> {
    const { stream } = this.settings
    let applied: Set<string>
    try {
      applied = await this.store.intake.applied(
        stream,
        items.map((item) => item.id),
      )
    } catch (error) {
      // None is tried; each counts a try, as when its effect fails for the same reason.
      const failure = this.passingFailure(error)
      await this.settle([], this.retryOrDead(items.map((item) => ({ item, error: failure }))))
      return
    }
    const acks: string[] = []
    const dead: Failure[] = []
    const jobs: Array<{ item: Item; done: Promise<unknown> }> = []
    const users: Array<{ item: Item; userId: string; frame: string }> = []
    const now = Date.now()
    for (const item of items) {
      if (applied.has(item.id)) {
        acks.push(item.id)
        continue
      }
      try {
        const { route, body } = this.parse(item)
        if (route === 'broadcast/user') {
          const user = body as PublishBody<typeof route>
          users.push({ item, userId: user.user_id, frame: this.actions.userFrame(user) })
        } else
          jobs.push({
            item,
            done: this.effect(route, body, { stream, entryId: item.id, appliedAt: now }),
          })
      } catch (error) {
        dead.push({ item, error: asProtocolError(error) })
      }
    }
    const retry: Failure[] = []
    const outcomes = await Promise.allSettled(jobs.map((job) => job.done))
    jobs.forEach(({ item }, i) => {
      const outcome = outcomes[i] as PromiseSettledResult<unknown>
      if (outcome.status === 'fulfilled') acks.push(item.id)
      else {
        const error = asProtocolError(outcome.reason)
        ;(passing(error) ? retry : dead).push({ item, error })
      }
    })
    if (users.length > 0) {
      try {
        await this.store.intake.mark(
          users.map(({ item }) => ({ stream, entryId: item.id, appliedAt: now })),
        )
        for (const { item, userId, frame } of users) {
          await this.actions.sendToUser(userId, frame)
          acks.push(item.id)
        }
      } catch (error) {
        const failure = this.passingFailure(error)
        for (const { item } of users) retry.push({ item, error: failure })
      }
    }
    dead.push(...this.retryOrDead(retry))
    await this.settle(acks, dead)
  }

  /** A store failure as an entry's error: 503 when the store is unavailable. */
  private passingFailure(error: unknown): ProtocolError {
    return this.store.isUnavailable(error)
      ? new ProtocolError(ErrorCode.Unavailable, 'store unavailable: retry later')
      : asProtocolError(error)
  }

  /**
   * Entries that failed for a passing reason: those out of tries are
   * returned (to be dead-lettered); the others stay pending, and the
   * pending list is worked through again after retryAfterMs.
   */
  private retryOrDead(retry: readonly Failure[]): Failure[] {
    const dead = retry.filter((failure) => failure.item.attempts >= this.settings.maxAttempts)
    const retried = retry.length - dead.length
    if (retried > 0) {
      this.counters.retried += retried
      this.backlog = true
      this.retryWait = true
      this.logger.warn(
        { stream: this.settings.stream, entries: retried, error: retry[0]?.error.message },
        'intake: entries failed for a passing reason; retrying later',
      )
    }
    return dead
  }

  /** Dead letters and acknowledgements in one MULTI: an entry is never both lost and pending. */
  private async settle(acks: readonly string[], dead: readonly Failure[]): Promise<void> {
    if (acks.length === 0 && dead.length === 0) return
    const { stream, group } = this.settings
    const multi = this.redis.commands.multi()
    const failedAt = new Date().toISOString()
    for (const { item, error } of dead) {
      multi.xadd(
        this.deadKey,
        '*',
        'source_id',
        item.id,
        'route',
        item.route,
        'body',
        item.body,
        'error',
        JSON.stringify({ code: error.code, message: error.message }),
        'attempts',
        String(item.attempts),
        'failed_at',
        failedAt,
      )
      this.logger.warn(
        { stream, entry: item.id, route: item.route, code: error.code, error: error.message },
        'intake: entry dead-lettered',
      )
    }
    multi.xack(stream, group, ...acks, ...dead.map(({ item }) => item.id))
    await multi.exec()
    this.counters.processed += acks.length
    this.counters.deadLettered += dead.length
  }

  /**
   * Marks are deleted once older than a day and than the oldest pending
   * entry (less an hour of clock skew): an entry can be delivered again
   * only while it is pending, and its mark is younger than its XADD time.
   */
  private async pruneMarks(): Promise<void> {
    this.lastPrune = Date.now()
    const { stream, group } = this.settings
    const summary = (await this.redis.commands.xpending(stream, group)) as [
      number,
      string | null,
      string | null,
      unknown,
    ]
    const oldest = summary[1] === null ? Number.POSITIVE_INFINITY : Number(summary[1].split('-')[0])
    const before = Math.min(Date.now() - MARK_RETENTION_MS, oldest - MARK_SKEW_MS)
    let deleted = 0
    for (;;) {
      const n = await this.store.intake.prune(before, PRUNE_BATCH)
      deleted += n
      if (n < PRUNE_BATCH) break
    }
    if (deleted > 0) this.logger.info({ marks: deleted }, 'intake: pruned applied marks')
  }

  /**
   * Entries not yet delivered to the group. XINFO GROUPS gives `lag` on
   * Redis ≥ 7.0 but null after deletions in the stream; then the entries
   * after the group's last delivered id are counted (up to LAG_COUNT_CAP).
   */
  async lag(): Promise<number> {
    const group = await this.groupInfo()
    if (group === undefined) return 0
    if (typeof group.lag === 'number') return group.lag
    const after = (await this.redis.commands.xrange(
      this.settings.stream,
      `(${group.lastDelivered}`,
      '+',
      'COUNT',
      LAG_COUNT_CAP,
    )) as RawEntry[]
    return after.length
  }

  private async groupInfo(): Promise<
    { pending: number; lag: number | null; lastDelivered: string } | undefined
  > {
    let groups: unknown[][]
    try {
      groups = (await this.redis.commands.xinfo('GROUPS', this.settings.stream)) as unknown[][]
    } catch (error) {
      if (error instanceof Error && error.message.includes('no such key')) return undefined
      throw error
    }
    for (const flat of groups) {
      const fields = new Map<string, unknown>()
      for (let i = 0; i + 1 < flat.length; i += 2) fields.set(String(flat[i]), flat[i + 1])
      if (fields.get('name') !== this.settings.group) continue
      const lag = fields.get('lag')
      return {
        pending: Number(fields.get('pending') ?? 0),
        lag: typeof lag === 'number' ? lag : null,
        lastDelivered: String(fields.get('last-delivered-id') ?? '0-0'),
      }
    }
    return undefined
  }

  async status(): Promise<IntakeStatus> {
    const { stream, group } = this.settings
    const [length, dead, info, lag] = await Promise.all([
      this.redis.commands.xlen(stream),
      this.redis.commands.xlen(this.deadKey),
      this.groupInfo(),
      this.lag(),
    ])
    return { stream, group, length, pending: info?.pending ?? 0, dead, lag }
  }

  async deadLetters(limit: number): Promise<DeadLetter[]> {
    const entries = (await this.redis.commands.xrange(
      this.deadKey,
      '-',
      '+',
      'COUNT',
      limit,
    )) as RawEntry[]
    return entries.map(([id, flat]) => deadLetter(id, fieldsOf(flat)))
  }

  /** Puts a dead letter back on the stream as a new entry; its new id, or undefined for an unknown id. */
  async retryDead(id: string): Promise<string | undefined> {
    const [found] = (await this.redis.commands.xrange(this.deadKey, id, id)) as RawEntry[]
    if (found === undefined) return undefined
    const fields = fieldsOf(found[1])
    const replies = await this.redis.commands
      .multi()
      .xadd(
        this.settings.stream,
        '*',
        'route',
        fields.get('route') ?? '',
        'body',
        fields.get('body') ?? '',
      )
      .xdel(this.deadKey, id)
      .exec()
    const added = replies?.[0]
    if (!added || added[0]) throw added?.[0] ?? new Error('the retry was not queued')
    return added[1] as string
  }

  /** Deletes a dead letter; false for an unknown id. */
  async deleteDead(id: string): Promise<boolean> {
    return (await this.redis.commands.xdel(this.deadKey, id)) > 0
  }
}

function deadLetter(id: string, fields: Map<string, string>): DeadLetter {
  let error: ErrorBody = { code: ErrorCode.Internal, message: 'unknown' }
  try {
    error = JSON.parse(fields.get('error') ?? '') as ErrorBody
  } catch {
    // A dead letter written by hand: its error stays unknown.
  }
  return {
    id,
    source_id: fields.get('source_id') ?? '',
    route: fields.get('route') ?? '',
    body: fields.get('body') ?? '',
    error,
    attempts: Number(fields.get('attempts') ?? 0),
    failed_at: fields.get('failed_at') ?? '',
  }
}
