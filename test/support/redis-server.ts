import { freePort, within } from '../helpers.ts'

/**
 * A Redis of the test's own (a child `redis-server`, nothing saved), that
 * the test may kill and start again on the same port. The machine's Redis
 * on 6379 is never touched.
 */
export interface RedisServer {
  readonly port: number
  /** redis://127.0.0.1:port */
  readonly url: string
  /** Sends `signal` (SIGKILL: a crash) and resolves once the process is gone. */
  stop(signal?: NodeJS.Signals): Promise<void>
  /** Starts it again on the same port (empty: nothing was saved); resolves once it accepts connections. */
  start(): Promise<void>
}

/** Runs redis-server on `port`; resolves with the process once it logged that it accepts connections. */
async function spawnRedis(port: number): Promise<ReturnType<typeof Bun.spawn>> {
  const proc = Bun.spawn(
    [
      'redis-server',
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
    ],
    { stdin: 'ignore', stdout: 'pipe', stderr: 'ignore' },
  )
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader()
  const ready = (async () => {
    const decoder = new TextDecoder()
    let output = ''
    while (!output.includes('Ready to accept connections')) {
      const { value, done } = await reader.read()
      if (done) throw new Error(`redis-server exited on port ${port}: ${output}`)
      output += decoder.decode(value, { stream: true })
    }
    // Keep draining, so that the child never blocks on a full pipe.
    void (async () => {
      while (!(await reader.read()).done);
    })()
  })()
  try {
    await within(ready, 10_000, `redis-server on port ${port}`)
  } catch (error) {
    proc.kill('SIGKILL')
    await proc.exited
    throw error
  }
  return proc
}

/** Starts a private redis-server on a free port of 127.0.0.1. */
export async function startRedisServer(): Promise<RedisServer> {
  const port = freePort()
  let proc: ReturnType<typeof Bun.spawn> | undefined = await spawnRedis(port)
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop(signal = 'SIGTERM') {
      const running = proc
      proc = undefined
      if (!running || running.exitCode !== null || running.signalCode !== null) return
      running.kill(signal)
      await within(running.exited, 10_000, 'redis-server stopping')
    },
    async start() {
      if (proc) throw new Error('redis-server is running already')
      proc = await spawnRedis(port)
    },
  }
}
