import type { Logger } from './logger.ts'

type Level = 'info' | 'warn' | 'error'
type Fields = Record<string, unknown>

interface Entry {
  level: Level
  msg: string
  fields: Fields
  /** Occurrences since the line or summary last written. */
  repeated: number
}

/** Where keys past the cap are counted, one per message. */
const OVERFLOW = '\u0000overflow:'

/**
 * Repetitive log lines, limited per key (cause plus address or user): the
 * first occurrence is written at once; repeats are counted and written as
 * one line, `<msg> (repeated)` with `repeated: N`, when the interval ends. A
 * key that stays quiet for a whole interval is forgotten, so its next
 * occurrence is written at once again. Past `maxKeys` keys, new ones share
 * one entry per message: neither memory nor the log grows with the number
 * of sources. 5,000 refused upgrades are two lines, not 5,000.
 */
export class LogLimiter {
  private readonly entries = new Map<string, Entry>()
  private timer: ReturnType<typeof setInterval> | undefined

  constructor(
    private readonly logger: Logger,
    /** 0: no limiting, every line is written. */
    private readonly intervalMs: number,
    private readonly maxKeys = 1000,
  ) {}

  warn(key: string, fields: Fields, msg: string): void {
    this.log('warn', key, fields, msg)
  }

  info(key: string, fields: Fields, msg: string): void {
    this.log('info', key, fields, msg)
  }

  /** Writes the summaries of the interval just ended and forgets quiet keys. */
  flush(): void {
    for (const [key, entry] of this.entries) {
      if (entry.repeated === 0) {
        this.entries.delete(key)
        continue
      }
      this.logger[entry.level](
        { ...entry.fields, repeated: entry.repeated, interval_s: this.intervalMs / 1000 },
        `${entry.msg} (repeated)`,
      )
      entry.repeated = 0
    }
    if (this.entries.size === 0) {
      clearInterval(this.timer)
      this.timer = undefined
    }
  }

  /** At shutdown: the pending summaries, then nothing more is held. */
  stop(): void {
    this.flush()
    clearInterval(this.timer)
    this.timer = undefined
    this.entries.clear()
  }

  private log(level: Level, key: string, fields: Fields, msg: string): void {
    if (this.intervalMs <= 0) {
      this.logger[level](fields, msg)
      return
    }
    let entry = this.entries.get(key)
    const overflow = !entry && this.entries.size >= this.maxKeys
    if (overflow) {
      key = OVERFLOW + msg
      entry = this.entries.get(key)
    }
    if (entry) {
      entry.repeated++
      return
    }
    this.entries.set(key, {
      level,
      msg,
      fields: overflow ? { other_sources: true } : fields,
      repeated: 0,
    })
    this.logger[level](fields, msg)
    if (!this.timer) {
      this.timer = setInterval(() => this.flush(), this.intervalMs)
      // Pending summaries must not keep a process alive; stop() writes them.
      this.timer.unref()
    }
  }
}
