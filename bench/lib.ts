/** Shared bits of the benchmark drivers: child processes and tables. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = join(import.meta.dir, '..')

export interface Child {
  proc: ReturnType<typeof Bun.spawn>
  port: number
  /** CPU seconds (user + system) the process has used so far. */
  cpuSeconds(): Promise<number>
  /** Resident memory of the process now, in MiB (Linux /proc). */
  rssMiB(): Promise<number>
  stop(): Promise<void>
}

/** A child's stdout, line by line. */
async function* stdoutLines(proc: ReturnType<typeof Bun.spawn>): AsyncGenerator<string> {
  const decoder = new TextDecoder()
  let buffered = ''
  for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true })
    const lines = buffered.split('\n')
    buffered = lines.pop() ?? ''
    yield* lines
  }
  if (buffered) yield buffered
}

/** Starts a server process and waits for its JSON "listening" line. */
export async function startChild(
  argv: string[],
  env: Record<string, string> = {},
  cwd: string = root,
): Promise<Child> {
  const proc = Bun.spawn(argv, {
    cwd,
    env: { ...process.env, ...env },
    stdout: 'pipe',
    stderr: 'inherit',
  })
  const lines = stdoutLines(proc)
  let port: number | undefined
  while (port === undefined) {
    const { value: line, done } = await lines.next()
    if (done) throw new Error(`${argv.join(' ')} exited before listening`)
    const message = line.startsWith('{')
      ? (JSON.parse(line) as { msg?: string; port?: number })
      : {}
    if (message.msg === 'listening') port = message.port
  }
  void (async () => {
    for await (const _ of lines) {
      // drained, so the child never blocks on a full pipe
    }
  })()
  return {
    proc,
    port,
    async cpuSeconds() {
      const fields =
        (await Bun.file(`/proc/${proc.pid}/stat`).text()).split(') ')[1]?.split(' ') ?? []
      // utime and stime are fields 14 and 15 of stat, in clock ticks (100 Hz on Linux).
      return (Number(fields[11]) + Number(fields[12])) / 100
    },
    async rssMiB() {
      const status = await Bun.file(`/proc/${proc.pid}/status`).text()
      const kb = Number(status.match(/VmRSS:\s+(\d+)/)?.[1] ?? 0)
      return kb / 1024
    },
    async stop() {
      proc.kill('SIGTERM')
      await proc.exited
    },
  }
}

/** Our server as its own process, on a fresh database. */
export async function startOurs(
  env: Record<string, string> = {},
): Promise<Child & { cleanup(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'teable-realtime-bench-'))
  const child = await startChild(['bun', 'src/main.ts'], {
    SOCKET_PORT: '0',
    HOST: '0.0.0.0',
    // "listening" (with the port) is an info line; nothing is logged per message.
    LOG_LEVEL: 'info',
    DB_PATH: join(dir, 'bench.db'),
    // One load process plays thousands of clients from four addresses.
    MAX_CONNECTIONS: '50000',
    CONNECT_RATE_PER_IP: '1000000',
    MESSAGE_RATE: '1000000',
    ...env,
  })
  return { ...child, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

/** Our server (with `env`), or the bare Bun.serve baseline, as a child process. */
export async function startTarget(
  target: 'ours' | 'bare',
  env: Record<string, string> = {},
): Promise<Child & { cleanup(): void }> {
  if (target === 'ours') return startOurs(env)
  const child = await startChild(['bun', 'bench/peers/bare-bun.ts'], { HOST: '0.0.0.0' })
  return { ...child, cleanup() {} }
}

/**
 * Runs a load client process and returns the JSON it prints last. A client
 * prints `{"phase":"start"}` and `{"phase":"end"}` around its measured
 * window; `onPhase` runs at each (to sample the server's CPU time).
 */
export async function runClient<T>(
  argv: string[],
  onPhase?: (phase: string) => Promise<void>,
  env: Record<string, string> = {},
): Promise<T> {
  const proc = Bun.spawn(argv, {
    cwd: root,
    env: { ...process.env, ...env },
    stdout: 'pipe',
    stderr: 'inherit',
  })
  let last = ''
  for await (const line of stdoutLines(proc)) {
    const phase = line.match(/^\{"phase":"(\w+)"\}$/)?.[1]
    if (phase && onPhase) await onPhase(phase)
    else if (line.trim() !== '') last = line
  }
  const code = await proc.exited
  if (code !== 0) throw new Error(`${argv.join(' ')} exited ${code}`)
  return JSON.parse(last) as T
}

/** Runs the client and measures the server's CPU seconds over the client's measured window. */
export async function runMeasured<T>(
  server: Child,
  argv: string[],
  env: Record<string, string> = {},
): Promise<T & { serverCpu: number }> {
  let cpuAtStart = 0
  let serverCpu = 0
  const result = await runClient<T>(
    argv,
    async (phase) => {
      if (phase === 'start') cpuAtStart = await server.cpuSeconds()
      if (phase === 'end') serverCpu = (await server.cpuSeconds()) - cpuAtStart
    },
    env,
  )
  return { ...result, serverCpu }
}

export function table(headers: string[], rows: Array<Array<string | number>>): string {
  const cells = [headers, ...rows.map((row) => row.map((cell) => String(cell)))]
  const widths = headers.map((_, i) => Math.max(...cells.map((row) => (row[i] ?? '').length)))
  const line = (row: string[]) =>
    `| ${row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join(' | ')} |`
  return [
    line(cells[0] as string[]),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...cells.slice(1).map(line),
  ].join('\n')
}

export const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
