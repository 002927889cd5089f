import { afterAll, beforeAll, expect, test } from 'bun:test'
import {
  eventually,
  type RawSocket,
  type ServerProcess,
  silentSocket,
  spawnServer,
  TestClient,
  uniqueName,
} from './helpers.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE

/**
 * The server runs with a wall clock the test steps at will (a preloaded
 * fixture shifting Date); rate limits and timeouts must not notice, while
 * timestamps on the wire follow the wall clock.
 */
let server: ServerProcess
beforeAll(async () => {
  server = await spawnServer(
    {
      DB_PATH: ':memory:',
      HEARTBEAT_INTERVAL: '0.1',
      CONNECTION_TIMEOUT: '2',
      // The defaults: the limits as deployed.
      MESSAGE_RATE: '100',
      CONNECT_RATE_PER_IP: '20',
      CLOCK_STEPS: `${2 * MINUTE},${-HOUR}`,
    },
    {
      argv: ['bun', '--preload', './test/fixtures/shifted-clock.ts', 'src/main.ts'],
      cwd: `${import.meta.dir}/..`,
    },
  )
})
afterAll(async () => {
  server.proc.kill('SIGTERM')
  await server.exited
})

let steps = 0
/** Steps the server's wall clock to the next CLOCK_STEPS offset and waits until it has. */
async function stepClock(): Promise<void> {
  steps++
  server.proc.kill('SIGUSR2')
  await eventually(() =>
    expect(server.lines.filter((line) => line.includes('"clock stepped"'))).toHaveLength(steps),
  )
}

/** A socket that never pongs must still be closed 4408 after CONNECTION_TIMEOUT (2 s). */
async function timesOut(socket: RawSocket): Promise<number | undefined> {
  const guard = new Promise<'alive'>((resolve) => setTimeout(() => resolve('alive'), 8000))
  if ((await Promise.race([socket.ended, guard])) === 'alive') {
    socket.destroy()
    return undefined
  }
  return socket.closeCode()
}

/** How far the wall clock on the wire is from the test's own. */
const skew = (timestamp: string) => Date.parse(timestamp) - Date.now()

test('a wall clock stepped forward two minutes, then back an hour, changes no limit or timeout', async () => {
  const a = await TestClient.connect(server, { user_id: uniqueName('a') })
  const b = await TestClient.connect(server, { user_id: uniqueName('b') })

  await stepClock() // +2 minutes: longer than CONNECTION_TIMEOUT
  // Sweeps ran for a whole CONNECTION_TIMEOUT after the step: a silent
  // socket opened after it timed out, while the healthy clients stayed.
  expect(await timesOut(await silentSocket(server, `user_id=${uniqueName('s')}`))).toBe(4408)
  expect([a.closeCode, b.closeCode]).toEqual([undefined, undefined])
  const forward = await a.ok({ type: 'ping' })
  expect(Math.abs(skew(forward.timestamp) - 2 * MINUTE)).toBeLessThan(10_000)

  const silent = await silentSocket(server, `user_id=${uniqueName('s')}`)
  await stepClock() // back an hour
  const replies = await Promise.all(Array.from({ length: 20 }, () => b.request({ type: 'ping' })))
  expect(replies.map((reply) => reply.type)).toEqual(replies.map(() => 'pong'))
  const back = replies[0]?.timestamp ?? ''
  expect(Math.abs(skew(back) + HOUR)).toBeLessThan(10_000)
  // Upgrades from this address (a known one) are still admitted.
  const c = await TestClient.connect(server, { user_id: uniqueName('c') })
  // A silent connection still times out on time, not an hour late.
  expect(await timesOut(silent)).toBe(4408)
  expect([a.closeCode, b.closeCode]).toEqual([undefined, undefined])
  await Promise.all([a.close(), b.close(), c.close()])
})
