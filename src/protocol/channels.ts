import { badRequest } from './errors.ts'

/**
 * Channel names. A collection is `[A-Za-z0-9_:-]{1,128}`; a document channel is
 * `{collection}.{documentId}` with the same grammar for the id, so the first
 * dot always separates the two.
 */
export const NAME_PATTERN = '^[A-Za-z0-9_:-]{1,128}$'
const NAME = new RegExp(NAME_PATTERN)

export interface ChannelRef {
  collection: string
  document?: string
}

export function isValidName(name: string): boolean {
  return NAME.test(name)
}

export function channelName(collection: string, document?: string): string {
  return document === undefined ? collection : `${collection}.${document}`
}

/** Parses `coll` or `coll.doc`; throws 400 naming the bad part. */
export function parseChannel(channel: string): ChannelRef {
  const dot = channel.indexOf('.')
  const collection = dot === -1 ? channel : channel.slice(0, dot)
  const document = dot === -1 ? undefined : channel.slice(dot + 1)
  if (!isValidName(collection))
    throw badRequest(`invalid collection name in channel "${truncate(channel)}"`, {
      field: 'channel',
      expected: NAME_PATTERN,
    })
  if (document !== undefined && !isValidName(document))
    throw badRequest(`invalid document id in channel "${truncate(channel)}"`, {
      field: 'channel',
      expected: NAME_PATTERN,
    })
  return document === undefined ? { collection } : { collection, document }
}

function truncate(s: string): string {
  return s.length > 64 ? `${s.slice(0, 64)}…` : s
}
