import type { Logger } from '../observability/logger.ts'
import type { Store } from '../store/store.ts'
import type { StreamStore } from './stream-store.ts'

/** Rows deleted per statement: small enough that a pass never stalls publishes for long. */
const CHUNK = 2_000

/**
 * Prunes stream entries past HISTORY_MAX_PER_COLLECTION or older than
 * HISTORY_TTL, in small deletes spread over event-loop turns, always from
 * the oldest offset of a collection on (what is held is one run of offsets).
 * Heads and document snapshots are kept, so offsets and versions never go
 * back.
 */
export class Retention {
  private timer: ReturnType<typeof setTimeout> | undefined
  private stopped = false

  constructor(
    private readonly store: Store,
    private readonly cache: StreamStore,
    private readonly maxPerCollection: number,
    private readonly ttlMs: number,
    private readonly intervalMs: number,
    private readonly logger: Logger,
    /** Whether this process prunes now (in a cluster, the lease holder alone does). */
    private readonly prunes: () => boolean = () => true,
  ) {}

  start(): void {
    this.stopped = false
    this.schedule(this.intervalMs)
  }

  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
  }

  /** One full pass; resolves when every chunk is deleted. */
  async pass(): Promise<number> {
    let removed = 0
    if (!this.prunes()) return removed
    const yieldTurn = () => new Promise<void>((resolve) => setImmediate(resolve))
    const collections = await this.store.collections()
    for (const { collection, head } of collections) {
      const upTo = head - this.maxPerCollection
      if (upTo <= 0) continue
      for (let n = CHUNK; n === CHUNK && !this.stopped; await yieldTurn()) {
        n = await this.store.pruneUpTo(collection, upTo, CHUNK)
        removed += n
        this.cache.pruned(n)
      }
    }
    const before = Date.now() - this.ttlMs
    for (const { collection } of collections) {
      if (this.stopped) break
      // A collection with nothing old costs one row read and no turn.
      for (let n = CHUNK; n === CHUNK && !this.stopped; ) {
        n = await this.store.pruneOlderPrefix(collection, before, CHUNK)
        removed += n
        this.cache.pruned(n)
        if (n > 0) await yieldTurn()
      }
    }
    if (removed > 0) this.logger.debug({ removed }, 'history pruned')
    return removed
  }

  private schedule(delay: number): void {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      this.pass()
        .catch((error: unknown) => this.logger.error({ err: error }, 'history pruning failed'))
        .finally(() => this.schedule(this.intervalMs))
    }, delay)
  }
}
