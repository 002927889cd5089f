/**
 * How the submit load clients drive their writers: `closed` puts `window`
 * ops in flight on each (each reply sends the next); `open` sends `rate`
 * ops a second in total on a fixed schedule, round robin. Returns what stops
 * the schedule.
 */
export function offerLoad<W>(
  writers: readonly W[],
  send: (writer: W) => void,
  mode: 'closed' | 'open',
  window: number,
  rate: number,
): () => void {
  if (mode === 'closed') {
    for (const writer of writers) for (let k = 0; k < window; k++) send(writer)
    return () => {}
  }
  // Spread sends evenly: every millisecond, send what the schedule says is due.
  const start = performance.now()
  let sent = 0
  let next = 0
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - start) / 1000) * rate)
    for (; sent < due; sent++) {
      send(writers[next] as W)
      next = (next + 1) % writers.length
    }
  }, 1)
  return () => clearInterval(timer)
}
