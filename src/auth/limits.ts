/**
 * A token bucket: `rate` tokens a second, up to `burst` saved. take() says
 * whether an action may go ahead now. Times are milliseconds of a monotonic
 * clock (performance.now()): a wall clock stepped back would read as a
 * negative refill and refuse everything until it caught up.
 */
export class TokenBucket {
  private tokens: number
  private updatedAt: number

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    now: number,
  ) {
    this.tokens = burst
    this.updatedAt = now
  }

  take(now: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.updatedAt) / 1000) * this.rate)
    this.updatedAt = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  /** True once the bucket has refilled: it can be forgotten. */
  full(now: number): boolean {
    return this.tokens + ((now - this.updatedAt) / 1000) * this.rate >= this.burst
  }
}

/** Connection attempts per remote address; idle addresses are forgotten. */
export class AddressLimiter {
  private readonly buckets = new Map<string, TokenBucket>()
  private sweptAt = 0

  constructor(private readonly perSecond: number) {}

  allow(address: string, now: number): boolean {
    if (now - this.sweptAt > 10_000) {
      for (const [key, bucket] of this.buckets) if (bucket.full(now)) this.buckets.delete(key)
      this.sweptAt = now
    }
    let bucket = this.buckets.get(address)
    if (!bucket) {
      bucket = new TokenBucket(this.perSecond, this.perSecond * 2, now)
      this.buckets.set(address, bucket)
    }
    return bucket.take(now)
  }
}
