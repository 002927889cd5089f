import type { StreamEntry } from '../streams/entry.ts'

/** A committed entry on its way to subscribers, with the connection ids that must not get it. */
export interface Committed {
  entry: StreamEntry
  /** Connection ids (on any process) that must not be sent it live (the submitter). */
  exclude: readonly string[] | undefined
}

/** Delivers one entry to this process's sockets; returns how many it was sent to. */
export type LocalDelivery = (item: Committed) => number

/**
 * Moves committed entries to the subscribers of every process, per
 * collection in offset order, each exactly once. Memory: one process, entries
 * delivered as they commit. Redis: published once per commit, and each
 * process puts what it receives back in offset order, filling gaps from the
 * store (see broker/sequencer.ts).
 */
export interface NodeBroker {
  /**
   * Starts following a collection on this process (its first local
   * subscriber). Resolves when `delivered(collection)` is known: from then
   * on every entry after it is delivered here, in order.
   */
  follow(collection: string): Promise<void> | undefined
  /** Its last local subscriber left (the broker may linger before it lets go). */
  unfollow(collection: string): void
  /** The last offset of the collection delivered here, while followed and ready; undefined otherwise. */
  delivered(collection: string): number | undefined
  /** Resolves once everything up to `offset` of a followed collection is delivered here. */
  reached(collection: string, offset: number): Promise<void>
  /**
   * Entries this process just committed, oldest first. `settle(item,
   * recipients)` is called for each once it is delivered here, in its place
   * in the stream (an ack must follow every earlier entry), synchronously
   * when nothing earlier is missing.
   */
  committed(
    items: readonly Committed[],
    settle: (item: Committed, recipients: number) => void,
  ): void
  close(): Promise<void>
}
