/**
 * bench:presence — 1,000 clients joining one channel at once (a mass
 * reconnect), with `full` and with `count` presence: presence messages sent
 * and the time until every client's picture has settled.
 */
import { fmt, runMeasured, startOurs, table } from './lib.ts'

interface Result {
  mode: string
  clients: number
  presenceFrames: number
  presenceBytes: number
  ms: number
}

const clients = process.env.BENCH_CLIENTS ?? '1000'
const rows: Array<Array<string | number>> = []
for (const mode of ['full', 'count'] as const) {
  const server = await startOurs({ HOST: '0.0.0.0', PRESENCE_MODES: 'full_=full,count_=count' })
  try {
    const r = await runMeasured<Result>(server, [
      'bun',
      'bench/load/presence-client.ts',
      `http://127.0.0.1:${server.port}`,
      mode,
      clients,
    ])
    rows.push([
      mode,
      fmt(r.clients),
      fmt(r.presenceFrames),
      fmt(r.presenceFrames / r.clients, 1),
      fmt(r.presenceBytes / 1024 / 1024, 1),
      fmt(r.ms),
      fmt(r.serverCpu, 2),
    ])
  } finally {
    await server.stop()
    server.cleanup()
  }
}

console.log(
  `\nbench:presence — ${clients} connected clients subscribe to one channel at once; PRESENCE_RATE 10/s; server and load client are separate processes sharing 2 cores\n`,
)
console.log(
  table(
    [
      'presence mode',
      'clients',
      'presence messages',
      'per client',
      'MiB',
      'ms until settled',
      'server CPU s',
    ],
    rows,
  ),
)
