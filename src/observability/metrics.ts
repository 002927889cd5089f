import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'
import type { Hub } from '../hub/hub.ts'

const PREFIX = 'teable_realtime_'

/**
 * Prometheus metrics. Nothing on the hot path touches prom-client but the
 * three histograms: counters are read from the hub's exact Stats when
 * scraped, gauges from live state. No label carries a channel or a user.
 */
export class Metrics {
  readonly registry = new Registry()
  /** From a client's submit arriving to its ack being sent. */
  readonly submitAck: Histogram
  /** From a write being queued to its fan-out (the commit in between). */
  readonly publishToFanout: Histogram
  /** One group commit's transaction. */
  readonly commitDuration: Histogram

  constructor(
    hub: Hub,
    historyRows: () => number,
    store: { readonly failures: number; readonly writable: boolean },
  ) {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: PREFIX })
    const gauge = (name: string, help: string, read: () => number) =>
      new Gauge({
        name: PREFIX + name,
        help,
        registers,
        collect() {
          this.set(read())
        },
      })
    gauge('connections', 'Open WebSocket connections', () => hub.connectionCount)
    gauge('users', 'Users with at least one open connection', () => hub.userCount)
    gauge('channels', 'Channels with at least one subscriber', () => hub.channelCount)
    gauge('subscriptions', 'Logical subscriptions', () => hub.totalSubscriptions)
    gauge('history_rows', 'Stream entries held in the store', historyRows)
    gauge(
      'store_writable',
      '1 while the database file is the one opened and the last write succeeded',
      () => (store.writable ? 1 : 0),
    )
    let failuresReported = 0
    new Counter({
      name: `${PREFIX}store_failures_total`,
      help: 'Write transactions the store failed (disk, file, lock) or refused (database file deleted or replaced)',
      registers,
      collect() {
        this.inc(store.failures - failuresReported)
        failuresReported = store.failures
      },
    })

    const { stats } = hub
    const counter = (
      name: string,
      help: string,
      label: string,
      read: () => Record<string, number>,
    ) => {
      const reported = new Map<string, number>()
      return new Counter({
        name: PREFIX + name,
        help,
        labelNames: [label],
        registers,
        collect() {
          for (const [value, total] of Object.entries(read())) {
            const delta = total - (reported.get(value) ?? 0)
            if (delta > 0) this.inc({ [label]: value }, delta)
            reported.set(value, total)
          }
        },
      })
    }
    counter(
      'messages_in_total',
      'Client frames received, by message type',
      'type',
      () => stats.messagesIn,
    )
    counter(
      'messages_out_total',
      'Frames sent, one per recipient, by message type',
      'type',
      () => stats.messagesOut,
    )
    counter('errors_total', 'Error replies sent, by code', 'code', () => stats.errors)
    counter('disconnects_total', 'Connections ended, by reason', 'reason', () => stats.disconnects)
    counter(
      'replays_total',
      'Subscribes with since, by whether history reached back',
      'recovered',
      () => stats.replays,
    )

    const seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]
    this.submitAck = new Histogram({
      name: `${PREFIX}submit_ack_seconds`,
      help: 'Time from a client submit arriving to its ack being sent',
      buckets: seconds,
      registers,
    })
    this.publishToFanout = new Histogram({
      name: `${PREFIX}publish_to_fanout_seconds`,
      help: 'Time from a write being queued to its fan-out (group commit included)',
      buckets: seconds,
      registers,
    })
    this.commitDuration = new Histogram({
      name: `${PREFIX}store_commit_seconds`,
      help: 'Duration of one group-commit transaction',
      buckets: seconds,
      registers,
    })
  }

  /** The intake queue's counters (this process's) and lag (the group's, from Redis). */
  intake(source: {
    readonly counters: { processed: number; retried: number; deadLettered: number }
    lag(): Promise<number>
  }): void {
    const registers = [this.registry]
    const count = (name: string, help: string, read: () => number) => {
      let reported = 0
      new Counter({
        name: PREFIX + name,
        help,
        registers,
        collect() {
          const now = read()
          this.inc(now - reported)
          reported = now
        },
      })
    }
    count(
      'intake_processed_total',
      'Intake entries acknowledged after their effect was committed (or found already applied)',
      () => source.counters.processed,
    )
    count(
      'intake_retried_total',
      'Intake entries left pending after a passing failure (store unavailable), to be tried again',
      () => source.counters.retried,
    )
    count(
      'intake_dead_lettered_total',
      'Intake entries moved to the dead-letter stream',
      () => source.counters.deadLettered,
    )
    new Gauge({
      name: `${PREFIX}intake_lag`,
      help: 'Intake entries not yet delivered to the consumer group (-1 while Redis is unreachable)',
      registers,
      async collect() {
        this.set(await source.lag().catch(() => -1))
      },
    })
  }

  text(): Promise<string> {
    return this.registry.metrics()
  }

  get contentType(): string {
    return this.registry.contentType
  }
}
