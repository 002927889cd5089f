/**
 * A connection's logical channels. Most connections follow one channel: it
 * is held as a plain string, and a Set (~290 bytes with its table) is made
 * only for a second one. Iterates in insertion order, like a Set, over a
 * snapshot (deleting while iterating is safe).
 */
export class ChannelSet implements Iterable<string> {
  private items: string | Set<string> | undefined

  get size(): number {
    const { items } = this
    return items === undefined ? 0 : typeof items === 'string' ? 1 : items.size
  }

  has(channel: string): boolean {
    const { items } = this
    return typeof items === 'string' ? items === channel : (items?.has(channel) ?? false)
  }

  add(channel: string): void {
    const { items } = this
    if (items === undefined) this.items = channel
    else if (typeof items === 'string') {
      if (items !== channel) this.items = new Set([items, channel])
    } else items.add(channel)
  }

  /** Returns whether it was there. */
  delete(channel: string): boolean {
    const { items } = this
    if (typeof items === 'string') {
      if (items !== channel) return false
      this.items = undefined
      return true
    }
    if (!items?.delete(channel)) return false
    if (items.size === 0) this.items = undefined
    return true
  }

  *[Symbol.iterator](): Iterator<string> {
    const { items } = this
    if (typeof items === 'string') yield items
    else if (items) yield* [...items]
  }
}
