import type { DocumentStore } from '../documents/document-store.ts'
import type { Position } from '../documents/documents.ts'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'
import { isPromise, type Maybe } from '../store/store.ts'
import type { CommitQueue } from './commit-queue.ts'
import type { StreamEntry } from './entry.ts'
import type { Streams } from './streams.ts'

const toPosition = (state: { v: number; lastOffset: number | null } | undefined): Position => ({
  v: state?.v ?? 0,
  lastOffset: state?.lastOffset ?? null,
})

/** Delivered entries remembered per collection (offset and document only). */
const REMEMBERED = 512
/** Reads of a document's position before a busy document is refused with 503. */
const ATTEMPTS = 8

interface Recent {
  offsets: number[]
  documents: Array<string | undefined>
  /** Next slot to overwrite. */
  next: number
}

/**
 * A document's version as of what this process has delivered of its
 * collection: what a subscriber is told before it goes live, so that the
 * first op it is sent live is the one at that version.
 *
 * One process (any store): the commit path's cache is that version. Several
 * processes: the document is read from the store, which may be ahead of
 * delivery (committed elsewhere, not yet here) or behind it (changed after
 * the read, delivered before the answer): the read is kept only when its
 * latest change is delivered and nothing delivered since the read began
 * touched the document, else it is read again.
 */
export class LivePositions {
  private readonly recent = new Map<string, Recent>()

  constructor(
    private readonly documents: DocumentStore,
    private readonly streams: Streams,
    private readonly shared: boolean,
    private readonly queue: Pick<CommitQueue, 'busy' | 'commits' | 'idle'>,
  ) {}

  /** Called for every entry delivered on this process (cluster mode only keeps them). */
  delivered(entry: StreamEntry): void {
    if (!this.shared) return
    let recent = this.recent.get(entry.collection)
    if (!recent) {
      recent = { offsets: [], documents: [], next: 0 }
      this.recent.set(entry.collection, recent)
    }
    if (recent.offsets.length < REMEMBERED) {
      recent.offsets.push(entry.offset)
      recent.documents.push(entry.document)
    } else {
      recent.offsets[recent.next] = entry.offset
      recent.documents[recent.next] = entry.document
      recent.next = (recent.next + 1) % REMEMBERED
    }
  }

  /** The collection has no follower here any more. */
  forget(collection: string): void {
    this.recent.delete(collection)
  }

  /** The document's position as delivered here; the collection must be followed. */
  position(collection: string, document: string): Maybe<Position> {
    if (!this.shared) {
      const read = this.documents.read(collection, document)
      // SQLite: read between batches. Otherwise see alone.
      if (!isPromise(read)) return toPosition(read)
      return this.alone(collection, document)
    }
    return this.attempt(collection, document, ATTEMPTS)
  }

  /**
   * One process on an asynchronous store: its batches commit and are
   * delivered in one step, so a read that no batch overlapped is what was
   * delivered; one that a batch overlapped is read again after it.
   */
  private async alone(collection: string, document: string): Promise<Position> {
    for (let left = ATTEMPTS; left > 0; left--) {
      await this.queue.idle()
      const commits = this.queue.commits
      const state = await this.documents.read(collection, document)
      if (!this.queue.busy && this.queue.commits === commits) return toPosition(state)
    }
    throw new ProtocolError(
      ErrorCode.Unavailable,
      `${collection}.${document} changes too fast to read its version; retry`,
    )
  }

  private async attempt(collection: string, document: string, left: number): Promise<Position> {
    for (; left > 0; left--) {
      const from = this.streams.delivered(collection)
      const state = await this.documents.read(collection, document)
      const position = { v: state?.v ?? 0, lastOffset: state?.lastOffset ?? null }
      const last = position.lastOffset ?? 0
      if (last > this.streams.delivered(collection)) {
        await this.streams.reached(collection, last).catch(() => {
          throw new ProtocolError(
            ErrorCode.Unavailable,
            `${collection} stopped being followed here; retry`,
          )
        })
        continue
      }
      if (this.untouched(collection, document, Math.max(from, last))) return position
    }
    throw new ProtocolError(
      ErrorCode.Unavailable,
      `${collection}.${document} changes too fast to read its version; retry`,
    )
  }

  /** Whether no entry of the document was delivered after `after` (false when that is not remembered). */
  private untouched(collection: string, document: string, after: number): boolean {
    const delivered = this.streams.delivered(collection)
    if (delivered <= after) return true
    const recent = this.recent.get(collection)
    if (!recent) return false
    let oldest = Number.POSITIVE_INFINITY
    for (let i = 0; i < recent.offsets.length; i++) {
      const offset = recent.offsets[i] as number
      oldest = Math.min(oldest, offset)
      if (offset > after && recent.documents[i] === document) return false
    }
    return oldest <= after + 1
  }
}
