import type { ServerMessageFields } from '../protocol/envelope.ts'

export type EntryKind = 'op' | 'create' | 'del' | 'message'
export type EntrySource = 'client' | 'server'

/** One numbered message of a collection stream. */
export interface StreamEntry {
  collection: string
  offset: number
  document?: string
  /** The version an op/create/del was applied at. */
  v?: number
  kind: EntryKind
  /** The op list, `{type, data}` of a create, `true` for a del, or the message. */
  payload: unknown
  source: EntrySource
  src?: string
  seq?: number
  createdAt: number
  /** The offset of the document's previous op/create/del (not sent on the wire). */
  prevOffset?: number
}

/**
 * The wire form of an entry, the same live, on replay and in the history API
 * (its timestamp is the entry's, not the send time).
 */
export function entryMessage(entry: StreamEntry, epoch: string): ServerMessageFields {
  if (entry.kind === 'message') {
    return {
      type: 'message',
      collection: entry.collection,
      ...(entry.document !== undefined ? { document: entry.document } : {}),
      data: { message: entry.payload, offset: entry.offset, epoch },
    }
  }
  const data: Record<string, unknown> = {}
  data[entry.kind] = entry.payload
  data.v = entry.v
  data.offset = entry.offset
  data.epoch = epoch
  data.source = entry.source
  if (entry.src !== undefined) data.src = entry.src
  if (entry.seq !== undefined) data.seq = entry.seq
  return { type: 'op', collection: entry.collection, document: entry.document, data }
}
