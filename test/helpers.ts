import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Env, loadConfig } from '../src/config.ts'
import { createLogger } from '../src/observability/logger.ts'
import { createServer, type RealtimeServer, startServer as startAnyServer } from '../src/server.ts'
import { freshDatabase, freshRedisPrefix } from './support/services.ts'

export interface ServerMessage {
  type: string
  id?: unknown
  collection?: string
  document?: string
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary reply payloads
  data?: any
  error?: { code: number; message: string; details?: Record<string, unknown> }
  timestamp: string
}

export interface TestServer extends RealtimeServer {
  wsUrl: string
  /** Stops the server and removes its database directory. */
  close(): Promise<void>
}

/**
 * Tests open many sockets and send bursts from one address; the rate limits
 * are raised for them (test/limits.test.ts sets its own).
 */
export const TEST_LIMITS = { CONNECT_RATE_PER_IP: '100000', MESSAGE_RATE: '100000' }

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), 'teable-realtime-test-'))
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) }
}

/** A real server on an ephemeral port with its own database file. */
export function startServer(env: Env = {}): TestServer {
  const dir = tempDir()
  const config = loadConfig({
    SOCKET_PORT: '0',
    HOST: '127.0.0.1',
    DB_PATH: join(dir.path, 'realtime.db'),
    LOG_LEVEL: 'silent',
    ...TEST_LIMITS,
    ...env,
  })
  const server = createServer(config, createLogger(config))
  return {
    ...server,
    wsUrl: `ws://127.0.0.1:${server.port}/api/ws/socket`,
    async close() {
      await server.stop()
      dir.remove()
    },
  }
}

/**
 * The store the store-neutral suites run on (TEST_STORE): `sqlite` (unset,
 * the default), `postgres` (PostgreSQL, one process, no Redis) or `cluster`
 * (PostgreSQL and Redis, cluster mode, one in-process node). `bun run test`
 * runs STORE_SUITES on the other two after the normal run.
 */
export type TestStore = 'sqlite' | 'postgres' | 'cluster'

function readTestStore(): TestStore {
  const value = process.env.TEST_STORE ?? 'sqlite'
  if (value !== 'sqlite' && value !== 'postgres' && value !== 'cluster')
    throw new Error(`TEST_STORE: expected sqlite, postgres or cluster, got "${value}"`)
  return value
}

export const testStore: TestStore = readTestStore()

let serverCount = 0

/**
 * A real server on an ephemeral port, on the store TEST_STORE names: SQLite
 * in a fresh directory as startServer, or PostgreSQL in a fresh database
 * (and, for `cluster`, Redis under a fresh key prefix with a NODE_ID of its
 * own). close() stops it and drops the database and the keys.
 */
export async function startServerOnTestStore(env: Env = {}): Promise<TestServer> {
  if (testStore === 'sqlite') return startServer(env)
  // Deployments on PostgreSQL set it (docs/CLUSTER.md); Bun reads it only at start.
  if (process.env.BUN_FEATURE_FLAG_DISABLE_SQL_AUTO_PIPELINING !== '1')
    throw new Error(
      `TEST_STORE=${testStore} needs BUN_FEATURE_FLAG_DISABLE_SQL_AUTO_PIPELINING=1 in bun test's environment`,
    )
  const db = await freshDatabase()
  const redis = testStore === 'cluster' ? freshRedisPrefix() : undefined
  const cleanUp = async () => {
    await db.drop()
    await redis?.clean()
  }
  let server: RealtimeServer
  try {
    const config = loadConfig({
      SOCKET_PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'silent',
      ...TEST_LIMITS,
      ...env,
      DATABASE_URL: db.url,
      ...(redis && {
        REDIS_URL: redis.url,
        REDIS_PREFIX: redis.prefix,
        NODE_ID: `test-${process.pid}-${++serverCount}`,
      }),
    })
    server = await startAnyServer(config, createLogger(config))
  } catch (error) {
    await cleanUp()
    throw error
  }
  return {
    ...server,
    wsUrl: `ws://127.0.0.1:${server.port}/api/ws/socket`,
    async close() {
      try {
        await server.stop()
      } finally {
        await cleanUp()
      }
    },
  }
}

/** Runs `run` against a server of its own, stopped afterwards whatever happens. */
export async function withServer(
  env: Env,
  run: (server: TestServer) => Promise<void>,
): Promise<void> {
  const server = await startServerOnTestStore(env)
  try {
    await run(server)
  } finally {
    await server.close()
  }
}

/** A promise's outcome: `ok`, or the rejection's code (a client RealtimeError's). */
export const outcome = (promise: Promise<unknown>): Promise<string | number> =>
  promise.then(
    () => 'ok',
    (error: { code: string | number }) => error.code,
  )

/** A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick). */
export function freePort(): number {
  const listener = Bun.listen({ hostname: '127.0.0.1', port: 0, socket: { data() {} } })
  const { port } = listener
  listener.stop(true)
  return port
}

/** Fails the test (instead of hanging it) when a promise does not settle in time. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms)
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/** A short unique name for a test's channels. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Math.random().toString(36).slice(2, 10)}`
}

type Predicate = (message: ServerMessage) => boolean

/**
 * A real WebSocket client that keeps every frame it receives, so tests can
 * await the next frame matching a predicate without racing the socket.
 */
export class TestClient {
  readonly received: ServerMessage[] = []
  private consumed = new Set<number>()
  private waiters: Array<() => void> = []
  private nextId = 1
  closeCode: number | undefined
  readonly closed: Promise<number>
  connected!: ServerMessage

  private constructor(readonly socket: WebSocket) {
    socket.onmessage = (event) => {
      this.received.push(JSON.parse(String(event.data)) as ServerMessage)
      this.wake()
    }
    this.closed = new Promise((resolve) => {
      socket.onclose = (event) => {
        this.closeCode = event.code
        resolve(event.code)
        this.wake()
      }
    })
  }

  static async connect(
    server: { wsUrl: string },
    query: Record<string, string> = { user_id: uniqueName('user') },
  ): Promise<TestClient> {
    const url = `${server.wsUrl}?${new URLSearchParams(query)}`
    const client = new TestClient(new WebSocket(url))
    client.connected = await client.next((m) => m.type === 'connected')
    return client
  }

  get connectionId(): string {
    return this.connected.data.connection_id
  }

  send(message: unknown): void {
    this.socket.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  /** Sends with a fresh id and resolves with the one reply carrying it. */
  async request(message: Record<string, unknown>): Promise<ServerMessage> {
    const id = this.nextId++
    this.send({ ...message, id })
    return this.next((m) => m.id === id)
  }

  /** Like request, but throws unless the reply is a success. */
  async ok(message: Record<string, unknown>): Promise<ServerMessage> {
    const reply = await this.request(message)
    if (reply.type === 'error')
      throw new Error(`${message.type} failed: ${JSON.stringify(reply.error)}`)
    return reply
  }

  /** The first not yet consumed frame matching `predicate` (waits for it). */
  async next(predicate: Predicate = () => true, timeoutMs = 5000): Promise<ServerMessage> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      for (let i = 0; i < this.received.length; i++) {
        const message = this.received[i] as ServerMessage
        if (!this.consumed.has(i) && predicate(message)) {
          this.consumed.add(i)
          return message
        }
      }
      if (this.closeCode !== undefined)
        throw new Error(`socket closed (${this.closeCode}) while waiting`)
      const left = deadline - Date.now()
      if (left <= 0)
        throw new Error(`timed out waiting; received ${JSON.stringify(this.received.slice(-5))}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  /** The next `count` frames matching `predicate`, in arrival order. */
  async collect(
    count: number,
    predicate: Predicate = () => true,
    timeoutMs = 10_000,
  ): Promise<ServerMessage[]> {
    const out: ServerMessage[] = []
    for (let i = 0; i < count; i++) out.push(await this.next(predicate, timeoutMs))
    return out
  }

  /** All frames received so far that match (consumed or not). */
  all(predicate: Predicate = () => true): ServerMessage[] {
    return this.received.filter(predicate)
  }

  /**
   * Waits until every frame the server sent before this call has arrived: a
   * ping's pong comes after them on the same socket.
   */
  async settle(): Promise<void> {
    await this.request({ type: 'ping' })
  }

  close(): Promise<number> {
    if (this.closeCode === undefined) this.socket.close()
    return this.closed
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}

export async function connectMany(
  server: { wsUrl: string },
  count: number,
  userPrefix = 'user',
): Promise<TestClient[]> {
  return Promise.all(
    Array.from({ length: count }, (_, i) =>
      TestClient.connect(server, { user_id: `${userPrefix}${i}` }),
    ),
  )
}

export async function postJson(
  server: { url: string },
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary reply payloads
): Promise<{ status: number; body: any }> {
  const response = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })
  return {
    status: response.status,
    body: await response.json(),
  }
}

export async function getJson(
  server: { url: string },
  path: string,
  headers: Record<string, string> = {},
  // biome-ignore lint/suspicious/noExplicitAny: tests read arbitrary reply payloads
): Promise<{ status: number; body: any }> {
  const response = await fetch(`${server.url}${path}`, { headers })
  return { status: response.status, body: await response.json() }
}

/**
 * Retries `check` until it stops throwing: for state the server changes after
 * an event the test cannot observe directly (a socket's close handler).
 */
export async function eventually<T>(check: () => T | Promise<T>, timeoutMs = 3000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return await check()
    } catch (error) {
      if (Date.now() > deadline) throw error
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
}

export interface RawSocket {
  /** Everything received, as latin1 text. */
  text(): string
  /** The text frames received, parsed. */
  messages(): ServerMessage[]
  /** The code of the close frame received, if any. */
  closeCode(): number | undefined
  ended: Promise<void>
  sendText(text: string): void
  /** Stops reading from the socket (the kernel buffers fill, then the server's). */
  pause(): void
  /** Reads again after pause(). */
  resume(): void
  destroy(): void
}

/** Server frames (unmasked): text payloads and the close code. */
function parseFrames(bytes: Buffer): { texts: string[]; closeCode: number | undefined } {
  const texts: string[] = []
  let closeCode: number | undefined
  let at = 0
  while (at + 2 <= bytes.length) {
    const opcode = (bytes[at] as number) & 0x0f
    let length = (bytes[at + 1] as number) & 0x7f
    let start = at + 2
    if (length === 126) {
      length = bytes.readUInt16BE(at + 2)
      start = at + 4
    } else if (length === 127) {
      length = Number(bytes.readBigUInt64BE(at + 2))
      start = at + 10
    }
    if (start + length > bytes.length) break
    const payload = bytes.subarray(start, start + length)
    if (opcode === 1) texts.push(payload.toString('utf8'))
    if (opcode === 8 && length >= 2) closeCode = payload.readUInt16BE(0)
    at = start + length
  }
  return { texts, closeCode }
}

/**
 * A WebSocket that never answers anything, not even pings: a raw TCP socket
 * that did the upgrade handshake. Resolves once the 101 arrived; `text` holds
 * everything received since, `ended` settles when the server drops it.
 */
export async function silentSocket(server: { port: number }, query: string): Promise<RawSocket> {
  const { connect } = await import('node:net')
  const socket = connect(server.port, '127.0.0.1')
  let received = ''
  const ended = new Promise<void>((resolve) => socket.on('close', () => resolve()))
  const upgraded = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1')
      if (received.includes('\r\n\r\n')) {
        if (received.startsWith('HTTP/1.1 101')) resolve()
        else reject(new Error(`upgrade refused: ${received.split('\r\n')[0]}`))
      }
    })
  })
  socket.write(
    `GET /api/ws/socket?${query} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: teable-realtime-tests\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
  )
  await upgraded
  const sendText = (text: string) => {
    const payload = Buffer.from(text)
    if (payload.length > 125) throw new Error('silentSocket sends short frames only')
    const mask = [1, 2, 3, 4]
    const masked = payload.map((byte, i) => byte ^ (mask[i % 4] as number))
    socket.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length, ...mask]), masked]))
  }
  const frames = () =>
    parseFrames(Buffer.from(received.slice(received.indexOf('\r\n\r\n') + 4), 'latin1'))
  return {
    text: () => received,
    messages: () => frames().texts.map((text) => JSON.parse(text) as ServerMessage),
    closeCode: () => frames().closeCode,
    ended,
    sendText,
    pause: () => socket.pause(),
    resume: () => socket.resume(),
    destroy: () => socket.destroy(),
  }
}

export interface ServerProcess {
  proc: ReturnType<typeof Bun.spawn>
  port: number
  url: string
  wsUrl: string
  /** Every stdout line so far. */
  lines: string[]
  exited: Promise<number>
}

/** Runs src/main.ts as its own process and resolves once it logged "listening". */
export async function spawnServer(
  env: Record<string, string>,
  /** Another program to run (the compiled binary), and where. */
  program: { argv: string[]; cwd: string } = {
    argv: ['bun', 'src/main.ts'],
    cwd: `${import.meta.dir}/..`,
  },
): Promise<ServerProcess> {
  const proc = Bun.spawn(program.argv, {
    cwd: program.cwd,
    env: {
      ...process.env,
      SOCKET_PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      ...TEST_LIMITS,
      ...env,
    },
    stdout: 'pipe',
    stderr: 'pipe',
  })
  const lines: string[] = []
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  let buffered = ''
  let port: number | undefined
  while (port === undefined) {
    const { value, done } = await reader.read()
    if (done)
      throw new Error(
        `server exited before listening: ${await new Response(proc.stderr as ReadableStream).text()}`,
      )
    buffered += decoder.decode(value, { stream: true })
    const parts = buffered.split('\n')
    buffered = parts.pop() ?? ''
    for (const line of parts) {
      lines.push(line)
      if (line.includes('"msg":"listening"')) port = (JSON.parse(line) as { port: number }).port
    }
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  void (async () => {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return
      buffered += decoder.decode(value, { stream: true })
      const parts = buffered.split('\n')
      buffered = parts.pop() ?? ''
      lines.push(...parts)
    }
  })()
  return {
    proc,
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/api/ws/socket`,
    lines,
    exited: proc.exited,
  }
}

/** Runs src/main.ts expecting it to fail at start; returns its exit code and stderr. */
export async function runServerExpectingFailure(
  env: Record<string, string>,
): Promise<{ code: number; stderr: string }> {
  const proc = Bun.spawn(['bun', 'src/main.ts'], {
    cwd: `${import.meta.dir}/..`,
    env: { ...process.env, HOST: '127.0.0.1', LOG_LEVEL: 'silent', ...env },
    stdout: 'ignore',
    stderr: 'pipe',
  })
  const code = await proc.exited
  return { code, stderr: await new Response(proc.stderr as ReadableStream).text() }
}

/** An upgrade request as a browser sends it, to read the HTTP answer of a refused upgrade. */
export function upgradeRequest(
  server: { url: string },
  query: string,
  headers: Record<string, string> = {},
) {
  return fetch(`${server.url}/api/ws/socket${query}`, {
    headers: {
      Connection: 'Upgrade',
      Upgrade: 'websocket',
      'Sec-WebSocket-Version': '13',
      'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
      ...headers,
    },
  })
}
