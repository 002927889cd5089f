import type { Logger } from '../observability/logger.ts'
import type { Committed, LocalDelivery, NodeBroker } from './broker.ts'

/**
 * The broker of a single process: every commit happens here, so entries are
 * delivered as they commit, already in offset order, and every collection
 * is always ready.
 */
export class MemoryBroker implements NodeBroker {
  constructor(
    private readonly deliver: LocalDelivery,
    /** The commit path's cached head of a collection (undefined until an asynchronous store loaded it). */
    private readonly head: (collection: string) => number | undefined,
    private readonly logger: Logger,
  ) {}

  follow(): undefined {
    return undefined
  }

  unfollow(): void {}

  delivered(collection: string): number | undefined {
    return this.head(collection)
  }

  reached(): Promise<void> {
    return Promise.resolve()
  }

  committed(
    items: readonly Committed[],
    settle: (item: Committed, recipients: number) => void,
  ): void {
    for (const item of items) {
      let recipients = 0
      try {
        recipients = this.deliver(item)
      } catch (error) {
        this.logger.error({ err: error, collection: item.entry.collection }, 'fan-out failed')
      }
      try {
        settle(item, recipients)
      } catch (error) {
        this.logger.error({ err: error }, 'settling a write failed')
      }
    }
  }

  async close(): Promise<void> {}
}
