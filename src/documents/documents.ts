import { badRequest, ErrorCode, ProtocolError } from '../protocol/errors.ts'
import { type Maybe, then } from '../store/store.ts'
import type { Batch, CommitQueue, Settle } from '../streams/commit-queue.ts'
import type { EntrySource, StreamEntry } from '../streams/entry.ts'
import type { StreamStore } from '../streams/stream-store.ts'
import type { DocumentState, DocumentStore } from './document-store.ts'
import {
  applyOp,
  type Json0Op,
  normalizeOp,
  type OpComponent,
  tooLarge,
  transformOp,
} from './json0.ts'

/** One write to a document: exactly one of `op`, `create`, `del`. */
export interface SubmitRequest {
  collection: string
  document: string
  /** The version the writer saw; omitted means "the current one". */
  v?: number
  op?: readonly OpComponent[]
  create?: { type?: 'json0'; data: unknown }
  del?: true
  src?: string
  seq?: number
  source: EntrySource
  /** Connection ids that must not be sent the op live (the submitter). */
  exclude?: readonly string[]
}

export interface SubmitResult {
  /** The version the op was applied at (the document is now v + 1). */
  v: number
  offset: number
  /** True when src+seq matched an earlier submit: acked again, not re-applied. */
  duplicate?: boolean
}

export interface Position {
  v: number
  lastOffset: number | null
}

export interface Snapshot {
  v: number
  data: unknown
}

/** How far back a resubmission without `v` is looked for. */
const DEDUPE_WINDOW = 100

/**
 * The state one change later, built field by field: the object spreads of
 * the publish path (this one, the appended entry, the commit plan) were
 * together ~12% of its CPU in a bench:record profile.
 */
function successor(
  state: DocumentState,
  type: DocumentState['type'],
  data: unknown,
  size: number,
  deleted = false,
): DocumentState {
  return {
    collection: state.collection,
    id: state.id,
    v: state.v + 1,
    type,
    data,
    deleted,
    lastOffset: state.lastOffset,
    size,
  }
}

const conflict = (message: string, v: number) =>
  new ProtocolError(ErrorCode.Conflict, message, { v })

/**
 * Versioned documents (ShareDB semantics). Every write runs inside the commit
 * queue's transaction, so it sees the writes batched before it, and is
 * stored, then fanned out, then acknowledged.
 */
export class Documents {
  constructor(
    private readonly queue: CommitQueue,
    private readonly streams: StreamStore,
    private readonly store: DocumentStore,
    private readonly maxOpComponents: number,
    /** Bytes of a snapshot's JSON text (MAX_DOCUMENT_SIZE). */
    private readonly maxDocumentSize: number,
    /** The collection's last offset delivered on this process (see Streams.delivered). */
    private readonly head: (collection: string) => Maybe<number>,
  ) {}

  /**
   * Queues a write; `settle` is called synchronously right after the write
   * is fanned out (so a socket ack keeps its place in the stream), or at once
   * for a request refused before it reaches the queue.
   */
  submit(request: SubmitRequest, settle: Settle<SubmitResult>): void {
    let op: Json0Op | undefined
    try {
      const kinds = [request.op, request.create, request.del].filter((x) => x !== undefined).length
      if (kinds !== 1)
        throw badRequest('a submit needs exactly one of op, create, del', { field: 'op' })
      if (request.create && request.create.data === undefined)
        throw badRequest('create needs data', { field: 'create.data' })
      if (request.op && request.op.length > this.maxOpComponents)
        throw new ProtocolError(
          ErrorCode.TooLarge,
          `the op has ${request.op.length} components; the limit is ${this.maxOpComponents}`,
          { field: 'op', limit: this.maxOpComponents },
        )
      op = request.op ? normalizeOp(request.op) : undefined
    } catch (error) {
      settle(error as ProtocolError, undefined)
      return
    }
    const dedupe = request.src !== undefined && request.seq !== undefined
    this.queue.submit(
      {
        collection: request.collection,
        document: request.document,
        ...(request.v !== undefined
          ? { fromV: request.v }
          : dedupe
            ? { window: DEDUPE_WINDOW }
            : {}),
      },
      (batch) => this.write(batch, request, op),
      settle,
    )
  }

  /** `submit` as a promise (REST publishes). */
  publish(request: SubmitRequest): Promise<SubmitResult> {
    return new Promise((resolve, reject) =>
      this.submit(request, (error, result) =>
        error ? reject(error) : resolve(result as SubmitResult),
      ),
    )
  }

  private write(
    batch: Batch,
    request: SubmitRequest,
    normalized: Json0Op | undefined,
  ): SubmitResult {
    const { collection, document } = request
    const state: DocumentState = this.store.get(collection, document) ?? {
      collection,
      id: document,
      v: 0,
      type: null,
      data: null,
      deleted: false,
      lastOffset: null,
      size: 0,
    }
    const base = request.v ?? state.v
    if (base > state.v)
      throw conflict(`version ${base} is ahead of the document (v ${state.v})`, state.v)
    const missed = base < state.v ? this.missedChanges(state, base) : []
    if (request.src !== undefined && request.seq !== undefined) {
      const earlier = this.findResubmission(state, request, missed)
      if (earlier) return { v: earlier.v ?? 0, offset: earlier.offset, duplicate: true }
    }

    let next: DocumentState
    let kind: 'op' | 'create' | 'del'
    let payload: unknown
    if (request.create) {
      if (state.type !== null) throw conflict('document already exists', state.v)
      const text = JSON.stringify(request.create.data)
      const size = Buffer.byteLength(text)
      if (size > this.maxDocumentSize) throw tooLarge(size, this.maxDocumentSize, 'create.data')
      kind = 'create'
      payload = { type: 'json0', data: request.create.data }
      // A copy: ops change the snapshot in place, and the payload is sent after the commit.
      const data: unknown = JSON.parse(text)
      next = successor(state, 'json0', data, size)
    } else if (request.del) {
      if (state.type === null)
        throw new ProtocolError(ErrorCode.NotFound, 'no snapshot of this document to delete', {
          v: state.v,
        })
      kind = 'del'
      payload = true
      next = successor(state, null, null, 0, true)
    } else {
      if (state.deleted)
        throw new ProtocolError(ErrorCode.NotFound, 'document was deleted', { v: state.v })
      let op = normalized ?? []
      for (const change of missed) {
        if (change.kind !== 'op')
          throw conflict(
            `document was ${change.kind === 'create' ? 'created' : 'deleted'} since v ${base}`,
            state.v,
          )
        op = transformOp(op, change.payload as Json0Op)
      }
      kind = 'op'
      payload = op
      // In place: a refusal undoes itself; a failed batch drops the cache (DocumentStore.rollback).
      const applied =
        state.type === 'json0'
          ? applyOp(state.data, state.size, op, this.maxDocumentSize)
          : { data: null, size: 0 }
      next = successor(state, state.type, applied.data, applied.size)
    }

    const entry: Omit<StreamEntry, 'offset'> = {
      collection,
      document,
      v: state.v,
      kind,
      payload,
      source: request.source,
      createdAt: Date.now(),
    }
    if (request.src !== undefined) entry.src = request.src
    if (request.seq !== undefined) entry.seq = request.seq
    if (state.lastOffset !== null) entry.prevOffset = state.lastOffset
    const appended = batch.append(entry, request.exclude)
    next.lastOffset = appended.entry.offset
    this.store.put(next)
    return { v: state.v, offset: appended.entry.offset }
  }

  /** The changes applied at versions base … current-1, or 409 when they are no longer all held. */
  private missedChanges(state: DocumentState, base: number): StreamEntry[] {
    const changes = this.streams.changesBack(state.collection, state.lastOffset, base)
    if (changes.length !== state.v - base || changes[0]?.v !== base)
      throw conflict(
        `version ${base} is too old: history no longer holds the ops since then`,
        state.v,
      )
    return changes
  }

  /**
   * ShareDB's dedupe: a resubmitted op was applied after the version it was
   * based on, so it is among the changes the resubmission missed. Without a
   * `v`, the document's last DEDUPE_WINDOW changes are searched.
   */
  private findResubmission(state: DocumentState, request: SubmitRequest, missed: StreamEntry[]) {
    const candidates =
      request.v !== undefined
        ? missed
        : this.streams.changesBack(
            state.collection,
            state.lastOffset,
            Math.max(0, state.v - DEDUPE_WINDOW),
          )
    return candidates.find((change) => change.src === request.src && change.seq === request.seq)
  }

  /** The document's current version (0 when it has none yet) and the offset of its latest change. */
  position(collection: string, document: string): Maybe<Position> {
    return then(this.store.read(collection, document), (state) => ({
      v: state?.v ?? 0,
      lastOffset: state?.lastOffset ?? null,
    }))
  }

  /** `{v, data}`, or 404 when the document has never had a version. */
  snapshot(collection: string, document: string): Maybe<Snapshot> {
    return then(this.store.read(collection, document), (state) => {
      if (!state)
        throw new ProtocolError(ErrorCode.NotFound, `unknown document ${collection}.${document}`)
      return { v: state.v, data: state.type === null ? null : state.data }
    })
  }

  /**
   * The collection's documents (by id, deleted ones left out) and the stream
   * position they match: `offset` is read first, so every entry after it is
   * sent to a subscriber that lists and then follows from there (a document
   * may already include some of them: a listing client applies by `v`).
   */
  list(
    collection: string,
    ids: readonly string[] | undefined,
    limit: number,
  ): Maybe<{
    docs: Array<{ id: string; v: number; data: unknown }>
    epoch: string
    offset: number
  }> {
    return then(this.head(collection), (offset) =>
      then(this.store.list(collection, ids, limit), (states) => ({
        docs: states.map((state) => ({
          id: state.id,
          v: state.v,
          data: state.type === null ? null : state.data,
        })),
        epoch: this.streams.epoch,
        offset,
      })),
    )
  }
}
