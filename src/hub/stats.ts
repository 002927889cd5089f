/** Exact counters behind GET /api/ws/stats. */
export class Stats {
  readonly startedAt = Date.now()
  readonly messagesIn: Record<string, number> = {}
  readonly messagesOut: Record<string, number> = {}
  readonly errors: Record<string, number> = {}
  readonly disconnects: Record<string, number> = {}
  readonly replays: Record<string, number> = {}

  countIn(type: string): void {
    this.messagesIn[type] = (this.messagesIn[type] ?? 0) + 1
  }

  countOut(type: string, recipients: number): void {
    if (recipients > 0) this.messagesOut[type] = (this.messagesOut[type] ?? 0) + recipients
  }

  countDisconnect(reason: string): void {
    this.disconnects[reason] = (this.disconnects[reason] ?? 0) + 1
  }

  countReplay(recovered: boolean): void {
    const key = String(recovered)
    this.replays[key] = (this.replays[key] ?? 0) + 1
  }

  countError(code: number): void {
    const key = String(code)
    this.errors[key] = (this.errors[key] ?? 0) + 1
  }
}

/** Adds `from` into `into` by key (a cluster's counters are its nodes' summed). */
export function addCounts(into: Record<string, number>, from: Record<string, number>): void {
  for (const [key, value] of Object.entries(from)) into[key] = (into[key] ?? 0) + value
}

export function total(counts: Record<string, number>): number {
  let sum = 0
  for (const value of Object.values(counts)) sum += value
  return sum
}
