import type { NodeBroker } from '../broker/broker.ts'
import type { Position } from '../documents/documents.ts'
import type { ChannelRef } from '../protocol/channels.ts'
import { badRequest, ErrorCode, ProtocolError } from '../protocol/errors.ts'
import { isPromise, type Maybe, type Store, then } from '../store/store.ts'
import type { CommitQueue } from './commit-queue.ts'
import type { StreamEntry } from './entry.ts'
import type { NewEntry, StreamStore } from './stream-store.ts'

/**
 * Where a resuming subscriber's backlog starts: the entries after `after`
 * (of one document, for a document channel), up to the head. Not recovered
 * when the history no longer holds all of them.
 */
export type ResumePoint = { recovered: false } | { recovered: true; after: number }

const NOT_RECOVERED: ResumePoint = { recovered: false }

export interface PublishResult {
  offset: number
  delivered: number
}

/**
 * Collection streams: publishing channel messages, and reading what a
 * returning subscriber missed. "The head" here is what this process has
 * delivered of a collection (the broker's `delivered`): reading history up
 * to it and then subscribing in one synchronous step has no gap and no
 * overlap, whichever process committed the entries.
 */
export class Streams {
  /** Local holds per followed collection (subscriptions and replays). */
  private readonly holds = new Map<string, number>()
  /** Told when a collection's last local hold goes. */
  onIdle: ((collection: string) => void) | undefined

  constructor(
    private readonly store: Store,
    private readonly cache: StreamStore,
    private readonly queue: CommitQueue,
    private readonly broker: NodeBroker,
  ) {}

  get epoch(): string {
    return this.store.epoch
  }

  /**
   * Follows the collection on this process (a subscriber arrives); resolves
   * (or returns at once) when `delivered` is known. Pair with `unfollow`.
   */
  follow(collection: string): Maybe<void> {
    this.holds.set(collection, (this.holds.get(collection) ?? 0) + 1)
    const following = this.broker.follow(collection)
    // A follow that failed holds nothing: only the local count is given back.
    const failed = (error: unknown): never => {
      this.release(collection)
      if (error instanceof ProtocolError) throw error
      throw new ProtocolError(
        ErrorCode.Unavailable,
        `cannot follow ${collection} now (store or Redis unavailable); retry`,
      )
    }
    if (following !== undefined) return following.catch(failed)
    if (this.broker.delivered(collection) !== undefined) return
    // The memory broker reports the commit path's head: load it when an asynchronous store has not.
    const loaded = this.cache.loadHead(collection)
    return isPromise(loaded) ? loaded.then(() => undefined, failed) : undefined
  }

  private release(collection: string): void {
    const holds = (this.holds.get(collection) ?? 1) - 1
    if (holds > 0) this.holds.set(collection, holds)
    else {
      this.holds.delete(collection)
      this.onIdle?.(collection)
    }
  }

  unfollow(collection: string): void {
    this.release(collection)
    this.broker.unfollow(collection)
  }

  /** The last offset of a followed collection delivered on this process. */
  delivered(collection: string): number {
    const delivered = this.broker.delivered(collection)
    if (delivered === undefined) throw new Error(`${collection} is not followed here`)
    return delivered
  }

  /** Resolves once everything up to `offset` of a followed collection is delivered here. */
  reached(collection: string, offset: number): Promise<void> {
    return this.broker.reached(collection, offset)
  }

  /** `delivered`, following the collection for the moment it takes (list replies). */
  head(collection: string): Maybe<number> {
    const known = this.broker.delivered(collection)
    if (known !== undefined) return known
    return then(this.follow(collection), () => {
      const delivered = this.delivered(collection)
      this.unfollow(collection)
      return delivered
    })
  }

  /** A REST channel broadcast: numbered and stored like an op, then fanned out. */
  publishMessage(
    ref: ChannelRef,
    message: unknown,
    exclude: readonly string[] | undefined,
  ): Promise<PublishResult> {
    if (message === undefined)
      return Promise.reject(badRequest('message is required', { field: 'message' }))
    return this.queue
      .run({ collection: ref.collection }, (batch) => {
        const entry: NewEntry = {
          collection: ref.collection,
          kind: 'message',
          payload: message,
          source: 'server',
          createdAt: Date.now(),
        }
        // Set, not spread in: a spread per broadcast showed in bench:fanout's profile.
        if (ref.document !== undefined) entry.document = ref.document
        return batch.append(entry, exclude)
      })
      .then((appended) => ({ offset: appended.entry.offset, delivered: appended.delivered }))
  }

  /** Where a collection resume starts, when the history still reaches back to `since`. Followed collections only. */
  resumeCollection(
    collection: string,
    since: { epoch: string; offset: number },
  ): Maybe<ResumePoint> {
    if (since.epoch !== this.store.epoch) return NOT_RECOVERED
    if (since.offset > this.delivered(collection))
      // Seen on another process, not delivered here yet (its Redis message late or lost):
      // when the store has it, wait until it is (the broker reads the store behind Redis).
      return then(this.store.head(collection), (stored) =>
        stored < since.offset
          ? NOT_RECOVERED
          : this.reached(collection, since.offset).then(() =>
              this.resumeCollection(collection, since),
            ),
      )
    return then(this.heldAfter(collection, since.offset), (held) =>
      held ? { recovered: true, after: since.offset } : NOT_RECOVERED,
    )
  }

  /**
   * Where a document resume from version `v` starts: after the change that
   * made `v` (what the client last saw), so its ops from `v` on and the
   * channel messages published since follow. Not recovered when an op in
   * between is no longer held, or `v` is ahead of the document. Walks the
   * document's chain without reading payloads.
   */
  resumeDocument(collection: string, v: number, position: Position): Maybe<ResumePoint> {
    if (v > position.v) return NOT_RECOVERED
    return then(this.store.chainLinks(collection, position.lastOffset, v), (links) => {
      let missed = 0
      let firstMissed: number | undefined
      let seen: number | undefined
      for (const link of links) {
        if (link.v === null) break
        if (link.v < v) {
          if (link.v === v - 1) seen = link.offset
          break
        }
        missed++
        firstMissed = link.offset
      }
      if (missed !== position.v - v) return NOT_RECOVERED
      const after =
        seen ??
        (firstMissed !== undefined ? firstMissed - 1 : v === 0 ? 0 : this.delivered(collection))
      return { recovered: true, after }
    })
  }

  /**
   * Whether every entry after `after` is still held (retention prunes the
   * oldest first, so the oldest held one tells).
   */
  heldAfter(collection: string, after: number): Maybe<boolean> {
    if (after >= this.delivered(collection)) return true
    return then(
      this.store.firstHeld(collection),
      (first) => first !== undefined && first <= after + 1,
    )
  }

  /** Up to `limit` entries of the channel after `after`, up to what is delivered here, oldest first. */
  readAfter(ref: ChannelRef, after: number, limit: number): Maybe<StreamEntry[]> {
    const head = this.delivered(ref.collection)
    if (after >= head) return []
    return ref.document === undefined
      ? this.store.readRange(ref.collection, after, head, limit)
      : this.store.readDocumentRange(ref.collection, ref.document, after, head, limit)
  }

  /** History API: stored entries after `since` (exclusive), oldest first. */
  history(ref: ChannelRef, since: number, limit: number): Maybe<StreamEntry[]> {
    return this.store.history(ref.collection, ref.document, since, limit)
  }
}
