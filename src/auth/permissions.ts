import { type ChannelRef, channelName } from '../protocol/channels.ts'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'

/** A channel pattern: `*` stands for any run of characters. */
function compile(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replaceAll('*', '.*')
  return new RegExp(`^${escaped}$`)
}

/**
 * What a token grants: `channels` patterns allow subscribe, query and
 * presence; `publish` patterns allow submit. A pattern that matches a
 * collection also covers its documents (following the collection delivers
 * them anyway). Everything else is denied.
 */
export class Grants {
  private readonly read: RegExp[]
  private readonly write: RegExp[]

  constructor(channels: readonly string[], publish: readonly string[]) {
    this.read = channels.map(compile)
    this.write = publish.map(compile)
  }

  canRead(ref: ChannelRef): boolean {
    return matches(this.read, ref)
  }

  canWrite(ref: ChannelRef): boolean {
    return matches(this.write, ref)
  }
}

function matches(patterns: readonly RegExp[], ref: ChannelRef): boolean {
  const channel = channelName(ref.collection, ref.document)
  return patterns.some(
    (pattern) =>
      pattern.test(channel) || (ref.document !== undefined && pattern.test(ref.collection)),
  )
}

export function forbidden(ref: ChannelRef, action: 'read' | 'publish'): ProtocolError {
  const channel = channelName(ref.collection, ref.document)
  return new ProtocolError(
    ErrorCode.Forbidden,
    `not allowed to ${action === 'read' ? 'read' : 'publish to'} ${channel}`,
    { channel },
  )
}
