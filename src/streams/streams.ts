import type { ChannelRef } from '../protocol/channels.ts'
import { badRequest } from '../protocol/errors.ts'
import type { CommitQueue } from './commit-queue.ts'
import type { StreamEntry } from './entry.ts'
import type { StreamStore } from './stream-store.ts'

/** What a subscriber missed: `entries` when `recovered`, nothing stale otherwise. */
export interface Replay {
  recovered: boolean
  entries: StreamEntry[]
}

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

  /** Entries of the collection after `offset`, when the history still reaches back to it. */
  replayCollection(collection: string, since: { epoch: string; offset: number }): Replay {
    const head = this.store.head(collection)
    if (since.epoch !== this.store.epoch || since.offset > head)
      return { recovered: false, entries: [] }
    if (since.offset === head) return { recovered: true, entries: [] }
    const first = this.store.firstHeld(collection)
    if (first === undefined || first > since.offset + 1) return { recovered: false, entries: [] }
    return {
      recovered: true,
      entries: this.store.readRange(collection, since.offset, head, head - since.offset),
    }
  }

  /**
   * A document's ops from version `v` on, plus its channel messages published
   * after the op that made `v`. Not recovered when an op in between is no
   * longer held, or `v` is ahead of the document.
   */
  replayDocument(
    collection: string,
    document: string,
    v: number,
    position: { v: number; lastOffset: number | null },
  ): Replay {
    if (v > position.v) return { recovered: false, entries: [] }
    // Back to the change applied at v-1 (what the client last saw), if held.
    const changes = this.store.changesBack(collection, position.lastOffset, Math.max(0, v - 1))
    const missed = changes.filter((change) => (change.v ?? -1) >= v)
    if (missed.length !== position.v - v) return { recovered: false, entries: [] }
    const seen = changes.find((change) => change.v === v - 1)
    const after =
      seen?.offset ?? (missed[0] ? missed[0].offset - 1 : v === 0 ? 0 : this.store.head(collection))
    const messages = this.store.documentMessagesAfter(collection, document, after)
    const entries = [...missed, ...messages].sort((a, b) => a.offset - b.offset)
    return { recovered: true, entries }
  }

  /** History API: stored entries after `since` (exclusive), oldest first. */
  history(ref: ChannelRef, since: number, limit: number): StreamEntry[] {
    return this.store.history(ref.collection, ref.document, since, limit)
  }
}
