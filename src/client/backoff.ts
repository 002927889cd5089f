export interface BackoffOptions {
  /** First delay's ceiling, ms (default 500). */
  initialDelay?: number
  /** Cap of every delay, ms (default 15,000). */
  maxDelay?: number
  /** A connection that lasted this long (ms) resets the delays (default 10,000). */
  stableAfter?: number
  /** Source of randomness in [0, 1) (default Math.random). */
  random?: () => number
}

/**
 * Exponential backoff with full jitter (a delay uniformly random between 0
 * and min(cap, initial × 2^attempt)): a server restart does not bring every
 * client back in the same instant, and the ceiling grows until the cap.
 */
export class Backoff {
  attempt = 0
  readonly initialDelay: number
  readonly maxDelay: number
  readonly stableAfter: number
  private readonly random: () => number

  constructor(options: BackoffOptions = {}) {
    this.initialDelay = options.initialDelay ?? 500
    this.maxDelay = options.maxDelay ?? 15_000
    this.stableAfter = options.stableAfter ?? 10_000
    this.random = options.random ?? Math.random
  }

  /** The ceiling of the next delay. */
  get ceiling(): number {
    return Math.min(this.maxDelay, this.initialDelay * 2 ** this.attempt)
  }

  /** The next delay in ms; each call raises the ceiling until the cap. */
  next(): number {
    const delay = Math.floor(this.random() * this.ceiling)
    if (this.ceiling < this.maxDelay) this.attempt++
    return delay
  }

  /** A connection that stayed up for `stableAfter` ms starts over from the first delay. */
  connectionLasted(ms: number): void {
    if (ms >= this.stableAfter) this.attempt = 0
  }

  reset(): void {
    this.attempt = 0
  }
}
