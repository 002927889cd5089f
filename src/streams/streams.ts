import type { ChannelRef } from '../protocol/channels.ts'
import { badRequest } from '../protocol/errors.ts'
import type { CommitQueue } from './commit-queue.ts'
import type { StreamEntry } from './entry.ts'
import type { StreamStore } from './stream-store.ts'

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
 * returning subscriber missed. Reads run synchronously, between batches, so
 * "read history up to the head, then subscribe" has no gap and no overlap.
 */
export class Streams {
  constructor(
    private readonly store: StreamStore,
    private readonly queue: CommitQueue,
  ) {}

  get epoch(): string {
    return this.store.epoch
  }

  head(collection: string): number {
    return this.store.head(collection)
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
      .run((batch) => {
        const appended = batch.append(
          {
            collection: ref.collection,
            ...(ref.document !== undefined ? { document: ref.document } : {}),
            kind: 'message',
            payload: message,
            source: 'server',
            createdAt: Date.now(),
          },
          exclude,
        )
        return appended
      })
      .then((appended) => ({ offset: appended.entry.offset, delivered: appended.delivered }))
  }

  /** Where a collection resume starts, when the history still reaches back to `since`. */
  resumeCollection(collection: string, since: { epoch: string; offset: number }): ResumePoint {
    const head = this.store.head(collection)
    if (since.epoch !== this.store.epoch || since.offset > head) return NOT_RECOVERED
    if (!this.heldAfter(collection, since.offset)) return NOT_RECOVERED
    return { recovered: true, after: since.offset }
  }

  /**
   * Where a document resume from version `v` starts: after the change that
   * made `v` (what the client last saw), so its ops from `v` on and the
   * channel messages published since follow. Not recovered when an op in
   * between is no longer held, or `v` is ahead of the document. Walks the
   * document's chain without reading payloads.
   */
  resumeDocument(
    collection: string,
    v: number,
    position: { v: number; lastOffset: number | null },
  ): ResumePoint {
    if (v > position.v) return NOT_RECOVERED
    let missed = 0
    let firstMissed: number | undefined
    let seen: number | undefined
    for (let offset = position.lastOffset; offset !== null; ) {
      const link = this.store.link(collection, offset)
      if (!link || link.v === null) break
      if (link.v < v) {
        if (link.v === v - 1) seen = offset
        break
      }
      missed++
      firstMissed = offset
      offset = link.prevOffset
    }
    if (missed !== position.v - v) return NOT_RECOVERED
    const after =
      seen ??
      (firstMissed !== undefined ? firstMissed - 1 : v === 0 ? 0 : this.store.head(collection))
    return { recovered: true, after }
  }

  /**
   * Whether every entry after `after` is still held (retention prunes the
   * oldest first, so the oldest held one tells).
   */
  heldAfter(collection: string, after: number): boolean {
    if (after >= this.store.head(collection)) return true
    const first = this.store.firstHeld(collection)
    return first !== undefined && first <= after + 1
  }

  /** Up to `limit` entries of the channel after `after`, up to the head, oldest first. */
  readAfter(ref: ChannelRef, after: number, limit: number): StreamEntry[] {
    const head = this.store.head(ref.collection)
    if (after >= head) return []
    return ref.document === undefined
      ? this.store.readRange(ref.collection, after, head, limit)
      : this.store.readDocumentRange(ref.collection, ref.document, after, head, limit)
  }

  /** History API: stored entries after `since` (exclusive), oldest first. */
  history(ref: ChannelRef, since: number, limit: number): StreamEntry[] {
    return this.store.history(ref.collection, ref.document, since, limit)
  }
}
