import type { Stats } from '../hub/stats.ts'
import { total } from '../hub/stats.ts'

export interface ThroughputSample {
  /** ms since the epoch, end of the second */
  t: number
  in: number
  out: number
}

/** Messages in and out per second over the last `keep` seconds, for the dashboard. */
export class Throughput {
  private readonly samples: ThroughputSample[] = []
  private last: { in: number; out: number }
  private timer: ReturnType<typeof setInterval> | undefined

  constructor(
    private readonly stats: Stats,
    private readonly keep = 300,
  ) {
    this.last = { in: total(stats.messagesIn), out: total(stats.messagesOut) }
  }

  start(): void {
    this.timer = setInterval(() => this.sample(), 1000)
  }

  stop(): void {
    clearInterval(this.timer)
  }

  series(): readonly ThroughputSample[] {
    return this.samples
  }

  private sample(): void {
    const now = { in: total(this.stats.messagesIn), out: total(this.stats.messagesOut) }
    this.samples.push({ t: Date.now(), in: now.in - this.last.in, out: now.out - this.last.out })
    if (this.samples.length > this.keep) this.samples.shift()
    this.last = now
  }
}
