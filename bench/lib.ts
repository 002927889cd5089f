/** Shared bits of the benchmark drivers: child processes and tables. */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = join(import.meta.dir, '..')

/** The command that runs our server as `bun run start` does (it bundles, then runs the bundle). */
export function ourServer(): string[] {
  return [process.execPath, join(root, 'scripts', 'start.ts')]
}

export interface Child {
  proc: ReturnType<typeof Bun.spawn>
  port: number
  /** CPU seconds (user + system) the process has used so far. */
  cpuSeconds(): Promise<number>
  /** Resident memory of the process now, in MiB (Linux /proc). */
  rssMiB(): Promise<number>
  /** The most resident memory the process has had so far (VmHWM), in MiB. */
  peakMiB(): Promise<number>
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

/**
 * Keeps a benchmark's figures for the summary `bun run bench` prints last
 * (bench/all.ts): written to BENCH_RESULTS/<name>.json when that is set.
 */
export function recordResult(name: string, figures: Record<string, number>): void {
  const dir = process.env.BENCH_RESULTS
  if (dir) writeFileSync(join(dir, `${name}.json`), JSON.stringify(figures))
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
  return childOf(proc, port)
}

/** CPU, memory and stop of a running server process listening on `port`. */
function childOf(proc: ReturnType<typeof Bun.spawn>, port: number): Child {
  return {
    proc,
    port,
    async cpuSeconds() {
      const fields =
        (await Bun.file(`/proc/${proc.pid}/stat`).text()).split(') ')[1]?.split(' ') ?? []
      // utime and stime are fields 14 and 15 of stat, in clock ticks (100 Hz on Linux).
      return (Number(fields[11]) + Number(fields[12])) / 100
    },
    rssMiB: () => statusMiB(proc.pid, 'VmRSS'),
    peakMiB: () => statusMiB(proc.pid, 'VmHWM'),
    async stop() {
      proc.kill('SIGTERM')
      await proc.exited
    },
  }
}

/** A memory figure of /proc/<pid>/status, in MiB. */
async function statusMiB(pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const status = await Bun.file(`/proc/${pid}/status`).text()
  return Number(status.match(new RegExp(`${field}:\\s+(\\d+)`))?.[1] ?? 0) / 1024
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick). */
export function freePort(): number {
  const listener = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data() {} } })
  const { port } = listener
  listener.stop(true)
  return port
}

export interface QuietChild extends Child {
  /** The process's last 100 log lines (warnings and errors at LOG_LEVEL=warn). */
  readonly log: readonly string[]
  /** How many lines it has logged in all. */
  logged(): number
}

/**
 * Starts a server process on a free port (SOCKET_PORT) and waits until its
 * `/readyz` answers 200: for processes whose log level hides the
 * `listening` line (LOG_LEVEL=warn). Nothing announces readiness at that
 * level, so the probe is repeated every 50 ms (for at most `timeoutMs`).
 */
export async function startReady(
  argv: string[],
  env: Record<string, string>,
  timeoutMs = 30_000,
): Promise<QuietChild> {
  const port = freePort()
  const proc = Bun.spawn(argv, {
    cwd: root,
    env: { ...process.env, ...env, SOCKET_PORT: String(port) },
    stdout: 'pipe',
    stderr: 'inherit',
  })
  const log: string[] = []
  let logged = 0
  void (async () => {
    for await (const line of stdoutLines(proc)) {
      logged++
      log.push(line)
      if (log.length > 100) log.shift()
    }
  })()
  let exited = false
  void proc.exited.then(() => {
    exited = true
  })
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (exited) throw new Error(`${argv.join(' ')} exited ${proc.exitCode}: ${log.join('\n')}`)
    const status = await fetch(`http://127.0.0.1:${port}/readyz`).then(
      (response) => response.status,
      () => 0,
    )
    if (status === 200) break
    if (performance.now() > deadline) {
      proc.kill('SIGKILL')
      throw new Error(`${argv.join(' ')} not ready on port ${port} within ${timeoutMs} ms`)
    }
    await Bun.sleep(50)
  }
  return { ...childOf(proc, port), log, logged: () => logged }
}

/** Our server as its own process, on a fresh database. */
export async function startOurs(
  env: Record<string, string> = {},
): Promise<Child & { cleanup(): void }> {
  const dir = mkdtempSync(join(tmpdir(), 'teable-realtime-bench-'))
  const child = await startChild(ourServer(), {
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

/**
 * Where the machine's CPU time went, in cores (CPU seconds per second), by
 * group of processes (a group no process was in is absent).
 */
export type CpuShares<G extends string> = Partial<Record<G, number>> & { other: number }

export interface ProcessSample {
  /** CPU seconds (user + system) so far. */
  cpu: number
  comm: string
  cmdline: string
}

interface MachineSample {
  at: number
  /** Busy CPU seconds of all cores since boot. */
  busy: number
  processes: Map<number, ProcessSample>
}

/** Every process's CPU time, and the machine's busy time (Linux /proc, 100 ticks/s). */
async function sampleMachine(): Promise<MachineSample> {
  const at = performance.now()
  const line = (await Bun.file('/proc/stat').text()).split('\n', 1)[0] ?? ''
  // cpu user nice system idle iowait irq softirq steal: idle and iowait are not busy.
  const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number)
  const busy = (ticks.reduce((a, b) => a + b, 0) - (ticks[3] ?? 0) - (ticks[4] ?? 0)) / 100
  const processes = new Map<number, ProcessSample>()
  for (const name of readdirSync('/proc')) {
    const pid = Number(name)
    if (!Number.isInteger(pid)) continue
    try {
      const stat = await Bun.file(`/proc/${pid}/stat`).text()
      const close = stat.lastIndexOf(')')
      const fields = stat.slice(close + 2).split(' ')
      processes.set(pid, {
        // After the command: state ppid … utime (12th) stime (13th).
        cpu: (Number(fields[11]) + Number(fields[12])) / 100,
        comm: stat.slice(stat.indexOf('(') + 1, close),
        cmdline: (await Bun.file(`/proc/${pid}/cmdline`).text()).replaceAll('\0', ' '),
      })
    } catch {
      // gone between the listing and the read
    }
  }
  return { at, busy, processes }
}

/**
 * Runs the client and measures, over its measured window, the cores used
 * by each group of processes (`classify` names a process's group, or
 * undefined), and by everything else on the machine (`other`).
 */
export async function runProfiled<T, G extends string>(
  argv: string[],
  classify: (pid: number, sample: ProcessSample) => G | undefined,
  env: Record<string, string> = {},
): Promise<T & { cpu: CpuShares<G> }> {
  let first: MachineSample | undefined
  let shares = { other: 0 } as CpuShares<G>
  const result = await runClient<T>(
    argv,
    async (phase) => {
      if (phase === 'start') first = await sampleMachine()
      if (phase !== 'end' || !first) return
      const last = await sampleMachine()
      const seconds = (last.at - first.at) / 1000
      const used = new Map<G | 'other', number>([['other', last.busy - first.busy]])
      for (const [pid, now] of last.processes) {
        const before = first.processes.get(pid)
        const group = classify(pid, now)
        if (!before || group === undefined) continue
        used.set(group, (used.get(group) ?? 0) + now.cpu - before.cpu)
        used.set('other', (used.get('other') ?? 0) - (now.cpu - before.cpu))
      }
      shares = Object.fromEntries(
        [...used].map(([group, cpu]) => [group, Math.max(0, cpu) / seconds]),
      ) as CpuShares<G>
    },
    env,
  )
  return { ...result, cpu: shares }
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
