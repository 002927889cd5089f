/**
 * bench:reconnect — a reconnect storm: N clients subscribed to C collections
 * are cut at once (the server is killed and restarted on the same database
 * and port), M entries are published on each collection while they are away,
 * then every client reconnects from one address (behind one proxy) and
 * resubscribes with `since`. Measured: the time until every client has every
 * missed entry and its `recovered:true` reply, and the restarted server's
 * peak RSS. Default limits (CONNECT_RATE_PER_IP included), except
 * MAX_CONNECTIONS_PER_USER is not in play (one user per client).
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Child, fmt, freePort, ourServer, recordResult, startChild, table } from './lib.ts'

const clients = Number(process.env.BENCH_CLIENTS ?? 5000)
const collections = Number(process.env.BENCH_COLLECTIONS ?? 50)
const missed = Number(process.env.BENCH_MISSED ?? 100)

export interface ReconnectResult {
  clients: number
  collections: number
  missed: number
  ms: number
  complete: number
  refused: number
  peakRssMiB: number
}

/** Our server with default limits (as `bun run start`), on the given database and port. */
function start(dbPath: string, port: number): Promise<Child> {
  return startChild(ourServer(), {
    SOCKET_PORT: String(port),
    HOST: '0.0.0.0',
    LOG_LEVEL: 'info',
    DB_PATH: dbPath,
  })
}

async function publish(url: string): Promise<void> {
  let next = 0
  const total = collections * missed
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < total) {
        const i = next++
        const response = await fetch(`${url}/api/ws/broadcast/channel`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            channel: `storm${i % collections}`,
            message: { i, text: 'missed while away' },
          }),
        })
        if (response.status !== 200) throw new Error(`publish answered ${response.status}`)
        await response.arrayBuffer()
      }
    }),
  )
}

export async function measureReconnect(): Promise<ReconnectResult> {
  const dir = mkdtempSync(join(tmpdir(), 'teable-realtime-reconnect-'))
  const dbPath = join(dir, 'bench.db')
  const port = freePort()
  let server = await start(dbPath, port)
  const url = `http://127.0.0.1:${port}`
  const proc = Bun.spawn(
    [
      'bun',
      'bench/load/reconnect-client.ts',
      url,
      String(clients),
      String(collections),
      String(missed),
    ],
    { cwd: join(import.meta.dir, '..'), stdin: 'pipe', stdout: 'pipe', stderr: 'inherit' },
  )
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  let text = ''
  const until = async (pattern: RegExp) => {
    while (!pattern.test(text)) {
      const { value, done } = await reader.read()
      if (done) throw new Error(`reconnect client exited: ${text}`)
      text += decoder.decode(value)
    }
  }
  try {
    await until(/"subscribed"/)
    // The cut: every socket drops at once.
    server.proc.kill('SIGKILL')
    await server.proc.exited
    server = await start(dbPath, port)
    await publish(url)
    const stdin = proc.stdin as import('bun').FileSink
    stdin.write('go\n')
    stdin.flush()
    await until(/"ms":/)
    const line = text.split('\n').find((l) => l.includes('"ms":')) as string
    const result = JSON.parse(line) as { ms: number; complete: number; refused: number }
    return { clients, collections, missed, ...result, peakRssMiB: await server.peakMiB() }
  } finally {
    proc.kill()
    await server.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

export function reconnectTable(results: ReconnectResult[]): string {
  return table(
    [
      'clients',
      'collections',
      'missed per collection',
      'ms until all recovered',
      'complete',
      'upgrades refused (429)',
      'server peak RSS MiB',
    ],
    results.map((r) => [
      fmt(r.clients),
      fmt(r.collections),
      fmt(r.missed),
      fmt(r.ms),
      fmt(r.complete),
      fmt(r.refused),
      fmt(r.peakRssMiB, 1),
    ]),
  )
}

if (import.meta.main) {
  const result = await measureReconnect()
  console.log(
    `\nbench:reconnect — ${fmt(clients)} clients on ${collections} collections cut at once (server killed and restarted), ${missed} entries published per collection meanwhile, all reconnect from one address with since; default limits\n`,
  )
  console.log(reconnectTable([result]))
  recordResult('reconnect', { ms: result.ms, complete: result.complete / clients })
}
