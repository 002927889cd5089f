import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { ConfigError, loadConfig } from '../src/config.ts'
import {
  connectMany,
  getJson,
  type ServerMessage,
  startServer,
  TestClient,
  type TestServer,
  uniqueName,
} from './helpers.ts'

const CAP = 20
let server: TestServer
beforeAll(() => {
  server = startServer({ PRESENCE_MAX_MEMBERS: String(CAP), PRESENCE_RATE: '5' })
})
afterAll(() => server.close())

const presenceOf = async (channel: string) =>
  (await getJson(server, `/api/ws/presence?channel=${channel}`)).body
/** Presence events pushed by the server (replies to `presence` messages carry an id). */
const pushed = (m: ServerMessage) => m.type === 'presence' && m.id === undefined
const isEvent = (event: string) => (m: ServerMessage) => pushed(m) && m.data.event === event
const modeEvent = (mode: string) => (m: ServerMessage) => isEvent('mode')(m) && m.data.mode === mode
/** A frame carrying the channel's numbers (a `count`, or a `mode` announcement). */
const counted = (connections: number) => (m: ServerMessage) =>
  pushed(m) && m.data.connections === connections
const subscribeAll = (clients: TestClient[], collection: string) =>
  Promise.all(clients.map((c) => c.ok({ type: 'subscribe', collection })))
const closeAll = (clients: TestClient[]) => Promise.all(clients.map((c) => c.close()))

describe('PRESENCE_MAX_MEMBERS', () => {
  test('past the cap a full channel switches to count: bounded frames, one announcement each', async () => {
    const collection = uniqueName('record')
    const clients = await connectMany(server, 60, 'crowd')
    await subscribeAll(clients, collection)
    // Joins go out with the subscribes: once every reply is in, a settle has them all.
    await Promise.all(clients.map((c) => c.settle()))
    const joins = clients.map((c) => c.all(isEvent('join')).length)
    expect(Math.max(...joins)).toBeLessThanOrEqual(CAP - 1) // uncapped: 59 each
    await Promise.all(clients.map((c) => c.next(counted(60), 5000)))
    await Promise.all(clients.map((c) => c.settle()))

    for (const client of clients) {
      const events = client.all(pushed)
      // Uncapped, every client gets 59 joins; capped, at most the CAP-1 first
      // ones, one announcement and coalesced counts (5 a second: 20 covers a
      // burst of 4 s on a loaded machine).
      expect(events.length).toBeLessThanOrEqual(CAP - 1 + 1 + 20)
      const modes = events.filter(isEvent('mode'))
      expect(modes).toHaveLength(1)
      expect(modes[0]?.data).toMatchObject({ event: 'mode', mode: 'count' })
      const after = events.slice(events.indexOf(modes[0] as ServerMessage))
      expect(after.every((m) => m.data.event === 'mode' || m.data.event === 'count')).toBe(true)
      expect(events.filter(isEvent('join')).length).toBeLessThanOrEqual(CAP - 1)
      expect(events.at(-1)?.data).toMatchObject({ connections: 60, users: 60 })
    }
    // The first CAP+1 members saw the switch happen at CAP+1 connections.
    const atSwitch = clients.filter((c) => c.all(isEvent('mode'))[0]?.data.connections === CAP + 1)
    expect(atSwitch).toHaveLength(CAP + 1)

    const late = await TestClient.connect(server, { user_id: 'late' })
    const reply = await late.ok({ type: 'subscribe', collection })
    const before = late.received.slice(0, late.received.indexOf(reply)).filter(pushed)
    expect(before.map((m) => m.data)).toEqual([
      { event: 'mode', mode: 'count', connections: 61, users: 61 },
    ])
    const stateReply = await late.ok({ type: 'presence', collection, data: { cell: 'A1' } })
    expect(stateReply.data).toEqual({ channel: collection, mode: 'count' })
    expect(await presenceOf(collection)).toEqual({
      channel: collection,
      mode: 'count',
      connections: 61,
      users: 61,
    })
    // States are accepted but not shared.
    await Promise.all(clients.map((c) => c.next(counted(61), 5000)))
    await Promise.all(clients.map((c) => c.settle()))
    expect(clients.flatMap((c) => c.all(isEvent('update')))).toHaveLength(0)
    await closeAll([...clients, late])
  })

  test('at half the cap the channel returns to full with a fresh snapshot; not before', async () => {
    const collection = uniqueName('record')
    const clients = await connectMany(server, CAP + 5, 'back')
    await subscribeAll(clients, collection)
    await Promise.all(clients.map((c) => c.next(counted(CAP + 5), 5000)))
    const [watcher] = clients as [TestClient]
    expect(watcher.all(modeEvent('count'))).toHaveLength(1)
    // States set while counting are kept for the snapshot.
    const stay = clients.slice(0, CAP / 2)
    for (const [i, client] of stay.entries())
      expect((await client.ok({ type: 'presence', collection, data: { row: i } })).data.mode).toBe(
        'count',
      )

    // Between half the cap and the cap it stays in count mode (hysteresis).
    await closeAll(clients.slice(CAP / 2, CAP + 3))
    await watcher.next(counted(CAP / 2 + 2), 5000)
    expect((await presenceOf(collection)).mode).toBe('count')
    expect(watcher.all(modeEvent('full'))).toHaveLength(0)

    await closeAll(clients.slice(CAP + 3))
    const half = CAP / 2
    for (const client of stay) {
      const back = await client.next(modeEvent('full'), 5000)
      expect(back.data).toEqual({ event: 'mode', mode: 'full', connections: half, users: half })
      // The snapshot is sent with the announcement: a settle has it all.
      await client.settle()
      const joins = client.received.slice(client.received.indexOf(back) + 1).filter(pushed)
      expect(joins.every(isEvent('join'))).toBe(true)
      const byId = (a: ServerMessage, b: ServerMessage) =>
        a.data.connection_id < b.data.connection_id ? -1 : 1
      const expected = stay
        .map((c, i) => ({ connection_id: c.connectionId, state: { row: i } }))
        .filter((e) => e.connection_id !== client.connectionId)
        .sort((a, b) => (a.connection_id < b.connection_id ? -1 : 1))
      expect(joins.sort(byId).map((m) => m.data)).toEqual(
        expected.map((e) => expect.objectContaining(e)),
      )
    }
    const view = await presenceOf(collection)
    expect(view).toMatchObject({ channel: collection, mode: 'full', connections: half })
    expect(view.members).toHaveLength(half)

    // Back in full mode: leaves are events again, and states are shared.
    const [, second] = stay as [TestClient, TestClient]
    expect((await second.ok({ type: 'presence', collection, data: { row: 'x' } })).data.mode).toBe(
      'full',
    )
    const update = await watcher.next(isEvent('update'), 5000)
    expect(update.data).toMatchObject({ connection_id: second.connectionId, state: { row: 'x' } })
    await second.close()
    const left = await watcher.next(isEvent('leave'), 5000)
    expect(left.data.connection_id).toBe(second.connectionId)
    await closeAll(stay)
  })

  test('PRESENCE_MAX_MEMBERS is validated like the other limits', () => {
    expect(loadConfig({}).presenceMaxMembers).toBeGreaterThan(1)
    expect(loadConfig({ PRESENCE_MAX_MEMBERS: '500' }).presenceMaxMembers).toBe(500)
    for (const value of ['1', '0', '2.5', 'many', '-3'])
      expect(() => loadConfig({ PRESENCE_MAX_MEMBERS: value })).toThrow(ConfigError)
  })
})
