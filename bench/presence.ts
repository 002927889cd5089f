/**
 * bench:presence — 2,000 clients joining one channel at once (a mass
 * reconnect): `full` presence without a member cap (every client learns
 * every other: N² joins), `full` past the default PRESENCE_MAX_MEMBERS (the
 * channel switches itself to counting), and `count`. Presence messages sent,
 * the time until every client's picture has settled, and the server's peak
 * memory (the frames queued for the clients show there).
 */
import { readFileSync } from 'node:fs'
import { loadConfig } from '../src/config.ts'
import { fmt, runMeasured, startOurs, table } from './lib.ts'

interface Result {
  mode: string
  clients: number
  presenceFrames: number
  presenceBytes: number
  ms: number
}

/** Peak resident memory of a process so far, MiB (Linux /proc). */
const peakRssMiB = (pid: number) =>
  Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)?.[1] ?? 0) / 1024

const clients = process.env.BENCH_CLIENTS ?? '2000'
// PRESENCE_MAX_MEMBERS from the environment reaches the server (to try other caps).
const cap = loadConfig(process.env).presenceMaxMembers
const runs = [
  { label: 'full, no cap', client: 'full', env: { PRESENCE_MAX_MEMBERS: '10000000' } },
  { label: `full, cap ${cap}`, client: 'capped', env: {} },
  { label: 'count', client: 'count', env: {} },
] as const
const rows: Array<Array<string | number>> = []
for (const run of runs) {
  const server = await startOurs({
    HOST: '0.0.0.0',
    PRESENCE_MODES: 'full_=full,count_=count',
    ...run.env,
  })
  try {
    const r = await runMeasured<Result>(server, [
      'bun',
      'bench/load/presence-client.ts',
      `http://127.0.0.1:${server.port}`,
      run.client,
      clients,
    ])
    rows.push([
      run.label,
      fmt(r.clients),
      fmt(r.presenceFrames),
      fmt(r.presenceFrames / r.clients, 1),
      fmt(r.presenceBytes / 1024 / 1024, 1),
      fmt(r.ms),
      fmt(r.serverCpu, 2),
      fmt(peakRssMiB(server.proc.pid)),
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
      'server peak RSS MiB',
    ],
    rows,
  ),
)
