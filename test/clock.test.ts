import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import {
  eventually,
  getJson,
  postJson,
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

describe('retention with a clock stepped back', () => {
  test('entries stamped out of order are pruned only as a prefix: a resume never crosses a silent hole', async () => {
    // Entries 6-10 are written while the clock is two hours behind: by their
    // stamps older than HISTORY_TTL (one hour), though 1-5 before them are not.
    const skewed = await spawnServer(
      {
        DB_PATH: ':memory:',
        LOG_LEVEL: 'debug',
        HISTORY_TTL: '3600',
        HISTORY_PRUNE_INTERVAL: '0.1',
        CLOCK_STEPS: `${-2 * HOUR},0`,
      },
      {
        argv: ['bun', '--preload', './test/fixtures/shifted-clock.ts', 'src/main.ts'],
        cwd: `${import.meta.dir}/..`,
      },
    )
    try {
      const collection = uniqueName('record')
      const stale = uniqueName('stale')
      const publish = (channel: string, message: unknown) =>
        postJson(skewed, '/api/ws/broadcast/channel', { channel, message })
      let stepped = 0
      const step = async () => {
        stepped++
        skewed.proc.kill('SIGUSR2')
        await eventually(() =>
          expect(skewed.lines.filter((l) => l.includes('"clock stepped"'))).toHaveLength(stepped),
        )
      }
      for (let i = 1; i <= 5; i++) await publish(collection, i)
      await step()
      for (let i = 6; i <= 10; i++) await publish(collection, i)
      // A collection whose entries are all old: its pruning shows a pass has run.
      for (let i = 1; i <= 3; i++) await publish(stale, i)
      await step()
      for (let i = 11; i <= 15; i++) await publish(collection, i)
      await eventually(async () => {
        const { body } = await getJson(skewed, `/api/ws/history?channel=${stale}`)
        expect(body.messages).toHaveLength(0)
      }, 10_000)
      const { body } = await getJson(skewed, `/api/ws/history?channel=${collection}`)
      expect(body.messages.map((m: { data: { offset: number } }) => m.data.offset)).toEqual(
        Array.from({ length: 15 }, (_, i) => i + 1),
      )
      // A client that saw offset 3 resumes with everything after it.
      const client = await TestClient.connect(skewed)
      const reply = await client.ok({
        type: 'subscribe',
        collection,
        since: { epoch: body.epoch, offset: 3 },
      })
      expect(reply.data.recovered).toBe(true)
      expect(client.all((m) => m.type === 'message').map((m) => m.data.offset)).toEqual(
        Array.from({ length: 12 }, (_, i) => i + 4),
      )
      await client.close()
    } finally {
      skewed.proc.kill('SIGTERM')
      await skewed.exited
    }
  }, 30_000)
})
