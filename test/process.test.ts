import { describe, expect, test } from 'bun:test'
import { chmodSync, existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigError, loadConfig } from '../src/config.ts'
import {
  runServerExpectingFailure,
  silentSocket,
  spawnServer,
  startServer,
  TestClient,
  tempDir,
} from './helpers.ts'

describe('configuration', () => {
  test('defaults', () => {
    const config = loadConfig({})
    expect(config.port).toBe(3000)
    expect(config.host).toBe('0.0.0.0')
    expect(config.heartbeatInterval).toBe(30)
    expect(config.connectionTimeout).toBe(60)
    expect(config.maxMessageSize).toBe(65536)
    expect(config.logLevel).toBe('info')
    expect(config.dbPath).toBe('./data/realtime.db')
    expect(config.historyMaxPerCollection).toBe(10_000)
    expect(config.historyTtl).toBe(86_400)
  })

  test.each([
    ['SOCKET_PORT', 'abc'],
    ['SOCKET_PORT', '70000'],
    ['SOCKET_PORT', '1.5'],
    ['HEARTBEAT_INTERVAL', '-1'],
    ['CONNECTION_TIMEOUT', 'soon'],
    ['MAX_MESSAGE_SIZE', '10'],
    ['LOG_LEVEL', 'loud'],
    ['HISTORY_MAX_PER_COLLECTION', '0'],
    ['HISTORY_TTL', 'x'],
  ])('%s=%s is refused, naming the variable', (name, value) => {
    expect(() => loadConfig({ [name]: value })).toThrow(ConfigError)
    expect(() => loadConfig({ [name]: value })).toThrow(name)
  })

  test('a timeout not longer than the heartbeat is refused', () => {
    expect(() => loadConfig({ HEARTBEAT_INTERVAL: '30', CONNECTION_TIMEOUT: '20' })).toThrow(
      'CONNECTION_TIMEOUT',
    )
  })

  test('the process exits 1 with a message naming the bad variable', async () => {
    const { code, stderr } = await runServerExpectingFailure({ SOCKET_PORT: 'abc' })
    expect(code).toBe(1)
    expect(stderr).toContain('SOCKET_PORT')
    expect(stderr).toContain('abc')
  })
})

describe('start and stop', () => {
  test('a second server on a port in use fails loudly instead of sharing it', async () => {
    const first = startServer()
    try {
      const { code, stderr } = await runServerExpectingFailure({
        SOCKET_PORT: String(first.port),
        DB_PATH: ':memory:',
      })
      expect(code).toBe(1)
      expect(stderr).toContain(`port ${first.port}`)
      expect(stderr).toContain('already in use')
    } finally {
      await first.close()
    }
  })

  test('creates a missing DB_PATH directory', async () => {
    const dir = tempDir()
    const dbPath = join(dir.path, 'nested', 'deeper', 'realtime.db')
    const server = await spawnServer({ DB_PATH: dbPath })
    expect(existsSync(dbPath)).toBe(true)
    server.proc.kill('SIGTERM')
    expect(await server.exited).toBe(0)
    dir.remove()
  })

  test('a corrupt database stops the server with a clear message', async () => {
    const dir = tempDir()
    const dbPath = join(dir.path, 'corrupt.db')
    writeFileSync(dbPath, 'this is not a database '.repeat(500))
    const { code, stderr } = await runServerExpectingFailure({ DB_PATH: dbPath, SOCKET_PORT: '0' })
    expect(code).toBe(1)
    expect(stderr).toContain(dbPath)
    expect(stderr).toContain('not a database')
    dir.remove()
  })

  test('an unwritable database location stops the server with a clear message', async () => {
    const dir = tempDir()
    const blocker = join(dir.path, 'file')
    writeFileSync(blocker, '')
    chmodSync(blocker, 0o444)
    // A path *under a regular file* cannot be created, even by root.
    const { code, stderr } = await runServerExpectingFailure({
      DB_PATH: join(blocker, 'x.db'),
      SOCKET_PORT: '0',
    })
    expect(code).toBe(1)
    expect(stderr).toContain('cannot open database')
    dir.remove()
  })

  test('SIGTERM tells every client shutdown, closes with 1001 and exits 0', async () => {
    const dir = tempDir()
    const server = await spawnServer({ DB_PATH: join(dir.path, 'db.sqlite') })
    const clients = await Promise.all(
      [1, 2, 3].map((i) => TestClient.connect(server, { user_id: `u${i}` })),
    )
    await clients[0]?.ok({ type: 'subscribe', collection: 'record_x' })
    // Bun's WebSocket client reports a 1001 close as 1000, so one raw socket reads the close frame.
    const raw = await silentSocket(server, 'user_id=raw')
    server.proc.kill('SIGTERM')
    for (const client of clients) {
      const notice = await client.next((m) => m.type === 'disconnect')
      expect(notice.data).toEqual({ code: 1001, reason: 'shutdown' })
      await client.closed
    }
    await raw.ended
    expect(raw.messages().at(-1)?.data).toEqual({ code: 1001, reason: 'shutdown' })
    expect(raw.closeCode()).toBe(1001)
    expect(await server.exited).toBe(0)
    expect(server.lines.some((line) => line.includes('"msg":"stopped"'))).toBe(true)
    // Nothing listens any more.
    expect(fetch(`${server.url}/api/ws/stats`)).rejects.toThrow()
    dir.remove()
  })
})
