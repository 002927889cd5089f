/**
 * bench:memory — server memory per idle connection (each subscribed to one
 * collection) and connection setup rate: ours (open mode, and HS256 token
 * auth: every client its own token, verified at the upgrade) against a bare
 * Bun.serve that subscribes each socket to one topic. Each server and the
 * load client are separate processes.
 */
import { SignJWT } from 'jose'
import { type Child, fmt, recordResult, startTarget, table } from './lib.ts'

const connections = Number(process.env.BENCH_CONNECTIONS ?? 10_000)
/** Seconds the connections are held, idle, before the server's RSS is read. */
const settleSeconds = Number(process.env.BENCH_SETTLE ?? 5)
const SECRET = 'bench-secret-bench-secret-bench-secret'

export interface MemoryResult {
  name: string
  connections: number
  idleMiB: number
  loadedMiB: number
  perConnectionKiB: number
  /** Connection setup alone: upgrade to `connected` (the bare server: to its first frame). */
  setupsPerSecond: number
  /** Upgrade, `connected`, subscribe and its reply (the bare server subscribes at open). */
  connectsPerSecond: number
}

async function tokens(count: number): Promise<string> {
  const key = new TextEncoder().encode(SECRET)
  const exp = Math.floor(Date.now() / 1000) + 3600
  const list: string[] = []
  for (let i = 0; i < count; i++)
    list.push(
      await new SignJWT({ channels: ['bench*'] })
        .setProtectedHeader({ alg: 'HS256' })
        .setSubject(`bench${i}`)
        .setExpirationTime(exp)
        .sign(key),
    )
  return list.join('\n')
}

/** Opens the idle connections; resolves once they are all subscribed, with the client's figures. */
async function hold(
  server: Child,
  target: 'ours' | 'bare',
  tokenFile?: string,
  connectOnly = false,
) {
  const proc = Bun.spawn(
    [
      'bun',
      'bench/load/idle-client.ts',
      target,
      `http://127.0.0.1:${server.port}`,
      String(connections),
    ],
    {
      cwd: `${import.meta.dir}/..`,
      stdin: 'pipe',
      stdout: 'pipe',
      stderr: 'inherit',
      env: {
        ...process.env,
        ...(tokenFile ? { BENCH_TOKEN_FILE: tokenFile } : {}),
        ...(connectOnly ? { BENCH_CONNECT_ONLY: '1' } : {}),
      },
    },
  )
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  let text = ''
  while (!/"rate":/.test(text)) {
    const { value, done } = await reader.read()
    if (done) throw new Error('idle client exited early')
    text += decoder.decode(value)
  }
  const line = text.split('\n').find((l) => l.includes('"rate":')) as string
  const result = JSON.parse(line) as { connections: number; rate: number }
  return {
    result,
    async release() {
      ;(proc.stdin as import('bun').FileSink).end()
      await proc.exited
    },
  }
}

export async function measureMemory(): Promise<MemoryResult[]> {
  const tokenFile = `/tmp/teable-bench-tokens-${process.pid}.txt`
  await Bun.write(tokenFile, await tokens(connections))
  const runs = [
    { name: 'bare Bun.serve (one topic)', target: 'bare' as const },
    { name: 'teable-realtime, open mode', target: 'ours' as const },
    { name: 'teable-realtime, HS256 tokens', target: 'ours' as const, auth: true },
  ]
  const results: MemoryResult[] = []
  const start = (run: (typeof runs)[number]) =>
    startTarget(run.target, run.auth ? { AUTH_SECRET: SECRET } : {})
  for (const run of runs) {
    // Setup alone first, on a server of its own (its garbage would skew the memory figures).
    const fresh = await start(run)
    let setupsPerSecond: number
    try {
      const setups = await hold(fresh, run.target, run.auth ? tokenFile : undefined, true)
      await setups.release()
      setupsPerSecond = setups.result.rate
    } finally {
      await fresh.stop()
      fresh.cleanup()
    }
    const server = await start(run)
    try {
      await Bun.sleep(500)
      const idleMiB = await server.rssMiB()
      const held = await hold(server, run.target, run.auth ? tokenFile : undefined)
      // Let garbage from the connects go, as a server idling would.
      const samples: number[] = []
      for (let i = 0; i < settleSeconds; i++) {
        await Bun.sleep(1000)
        samples.push(await server.rssMiB())
      }
      if (process.env.BENCH_VERBOSE)
        console.error(run.name, samples.map((x) => x.toFixed(1)).join(' '))
      const loadedMiB = samples.at(-1) as number
      await held.release()
      results.push({
        name: run.name,
        connections: held.result.connections,
        idleMiB,
        loadedMiB,
        perConnectionKiB: ((loadedMiB - idleMiB) * 1024) / held.result.connections,
        setupsPerSecond,
        connectsPerSecond: held.result.rate,
      })
    } finally {
      await server.stop()
      server.cleanup()
    }
  }
  await Bun.file(tokenFile).delete()
  return results
}

export function memoryTable(results: MemoryResult[]): string {
  const bare = results[0] as MemoryResult
  return table(
    [
      'server',
      'connections',
      'RSS idle MiB',
      'RSS held MiB',
      'KiB / connection',
      'vs bare',
      'setups/s',
      'vs bare',
      'connect+subscribe/s',
      'vs bare',
    ],
    results.map((r) => [
      r.name,
      fmt(r.connections),
      fmt(r.idleMiB, 1),
      fmt(r.loadedMiB, 1),
      fmt(r.perConnectionKiB, 2),
      `${fmt(r.perConnectionKiB / bare.perConnectionKiB, 2)}×`,
      fmt(r.setupsPerSecond),
      `${fmt(r.setupsPerSecond / bare.setupsPerSecond, 2)}×`,
      fmt(r.connectsPerSecond),
      `${fmt(r.connectsPerSecond / bare.connectsPerSecond, 2)}×`,
    ]),
  )
}

if (import.meta.main) {
  const results = await measureMemory()
  console.log(
    `\nbench:memory — ${fmt(connections)} idle connections, each subscribed to one collection; RSS of the server process before and after. setups/s: connection setup alone (upgrade to our \`connected\` frame; the bare server's first frame), on a fresh server; connect+subscribe/s: as the load client opened the held connections, each waiting for its subscribe reply (the bare server subscribes at open, without a round trip); 500 at a time\n`,
  )
  console.log(memoryTable(results))
  const [bare, open, token] = results as [MemoryResult, MemoryResult, MemoryResult]
  recordResult('memory', {
    openPerConnection: open.perConnectionKiB / bare.perConnectionKiB,
    tokenPerConnection: token.perConnectionKiB / bare.perConnectionKiB,
    tokenSetups: token.setupsPerSecond / bare.setupsPerSecond,
  })
}
