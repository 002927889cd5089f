/**
 * bench:backlog — a client resuming a large backlog with `since` offset 0
 * (the history is replayed paced by its socket). For each shape: the time
 * from the subscribe to its reply (every entry received by then), the rate in
 * MB/s, and the server's peak memory. The same bytes fetched once over
 * `GET /api/ws/history` pages are the baseline: what reading the store and
 * sending it costs without a socket to pace.
 */
import { readFileSync } from 'node:fs'
import { fmt, startOurs, table } from './lib.ts'

const shapes = [
  { entries: 10_000, size: 4096 },
  { entries: 1_500, size: 30 * 1024 },
]

const peakRssMiB = (pid: number) =>
  Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)?.[1] ?? 0) / 1024

async function seed(url: string, channel: string, count: number, size: number): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < count) {
        const i = next++
        const response = await fetch(`${url}/api/ws/broadcast/channel`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ channel, message: `${i}:`.padEnd(size, 'x') }),
        })
        if (response.status !== 200) throw new Error(`seed answered ${response.status}`)
      }
    }),
  )
}

/** Subscribes with since offset 0 and resolves when the reply arrives, with what came before it. */
function resume(wsUrl: string, collection: string, epoch: string) {
  return new Promise<{ ms: number; entries: number; bytes: number; recovered: boolean }>(
    (resolve, reject) => {
      const socket = new WebSocket(`${wsUrl}?user_id=bench`)
      let started = 0
      let entries = 0
      let bytes = 0
      socket.onmessage = (event) => {
        const text = String(event.data)
        if (text.startsWith('{"type":"connected"')) {
          started = performance.now()
          socket.send(
            JSON.stringify({ type: 'subscribe', id: 1, collection, since: { epoch, offset: 0 } }),
          )
          return
        }
        if (text.startsWith('{"type":"message"')) {
          entries++
          bytes += text.length
          return
        }
        const message = JSON.parse(text) as { id?: number; data?: { recovered?: boolean } }
        if (message.id !== 1) return
        const ms = performance.now() - started
        resolve({ ms, entries, bytes, recovered: message.data?.recovered === true })
        socket.onclose = null
        socket.close()
      }
      socket.onclose = (event) =>
        reject(new Error(`closed ${event.code} after ${entries} entries, before the reply`))
    },
  )
}

async function historyBaseline(url: string, channel: string, count: number): Promise<number> {
  const started = performance.now()
  for (let since = 0; since < count; since += 1000) {
    const response = await fetch(
      `${url}/api/ws/history?channel=${channel}&since=${since}&limit=1000`,
    )
    await response.arrayBuffer()
  }
  return performance.now() - started
}

const rows: Array<Array<string | number>> = []
for (const { entries, size } of shapes) {
  const server = await startOurs()
  try {
    const url = `http://127.0.0.1:${server.port}`
    const collection = `record_backlog${entries}`
    await seed(url, collection, entries, size)
    const { epoch } = (await (
      await fetch(`${url}/api/ws/history?channel=${collection}&limit=1`)
    ).json()) as { epoch: string }
    const baselineMs = await historyBaseline(url, collection, entries)
    const result = await resume(`ws://127.0.0.1:${server.port}/api/ws/socket`, collection, epoch)
    if (!result.recovered || result.entries !== entries)
      throw new Error(`resume got ${result.entries} of ${entries} (recovered ${result.recovered})`)
    const mb = result.bytes / 1e6
    rows.push([
      fmt(entries),
      `${fmt(size / 1024)} KB`,
      fmt(mb, 1),
      fmt(result.ms),
      fmt(mb / (result.ms / 1000), 0),
      fmt(baselineMs),
      fmt(peakRssMiB(server.proc.pid)),
    ])
  } finally {
    await server.stop()
    server.cleanup()
  }
}

console.log(
  table(
    [
      'entries',
      'size',
      'MB sent',
      'resume ms',
      'MB/s',
      'baseline: history pages ms',
      'server peak RSS MiB',
    ],
    rows,
  ),
)
