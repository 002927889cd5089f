import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import {
  eventually,
  getJson,
  postJson,
  type ServerMessage,
  silentSocket,
  startServerOnTestStore,
  TestClient,
  type TestServer,
  uniqueName,
} from './helpers.ts'

/**
 * Resuming a backlog larger than any socket buffer (issue 9, defect 1): the
 * replay is paced by the socket, so a client that reads at a normal speed gets
 * all of it, and one that does not read is told it is a slow consumer.
 */

let server: TestServer
beforeAll(async () => {
  // Default retention (10,000 entries per collection, one day).
  server = await startServerOnTestStore()
})
afterAll(() => server.close())

const payload = (size: number, tag: string) => `${tag}:`.padEnd(size, 'x')

/** Broadcasts `count` messages of `size` bytes on the channel, `inFlight` at a time. */
async function seed(channel: string, count: number, size: number, inFlight = 32): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < count) {
        const i = next++
        const { status } = await postJson(server, '/api/ws/broadcast/channel', {
          channel,
          message: payload(size, String(i)),
        })
        if (status !== 200) throw new Error(`seed publish ${i} answered ${status}`)
      }
    }),
  )
}

/**
 * A plain WebSocket client reading at full speed that keeps only what the
 * test checks (offsets, types), so 10,000 frames of 4 KB cost it little.
 */
class Reader {
  readonly frames: Array<{ type: string; offset?: number; id?: unknown; message: ServerMessage }> =
    []
  closeCode: number | undefined
  private waiters: Array<() => void> = []

  private constructor(readonly socket: WebSocket) {
    socket.onmessage = (event) => {
      const message = JSON.parse(String(event.data)) as ServerMessage
      const offset = message.data?.offset
      // Drop the payload of stream entries: only the order is checked.
      if (message.type === 'message') message.data.message = undefined
      this.frames.push({ type: message.type, offset, id: message.id, message })
      this.wake()
    }
    socket.onclose = (event) => {
      this.closeCode = event.code
      this.wake()
    }
  }

  static async open(userId: string): Promise<Reader> {
    const reader = new Reader(new WebSocket(`${server.wsUrl}?user_id=${userId}`))
    await reader.until((f) => f.type === 'connected')
    return reader
  }

  send(message: Record<string, unknown>): void {
    this.socket.send(JSON.stringify(message))
  }

  /** Resolves with the first frame matching, waiting up to `timeoutMs`. */
  async until(
    predicate: (frame: Reader['frames'][number]) => boolean,
    timeoutMs = 60_000,
  ): Promise<ServerMessage> {
    const deadline = performance.now() + timeoutMs
    let checked = 0
    for (;;) {
      for (; checked < this.frames.length; checked++) {
        const frame = this.frames[checked] as Reader['frames'][number]
        if (predicate(frame)) return frame.message
      }
      if (this.closeCode !== undefined) throw new Error(`closed (${this.closeCode}) while waiting`)
      const left = deadline - performance.now()
      if (left <= 0) throw new Error(`timed out after ${this.frames.length} frames`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  /** Offsets of the stream entries received, in arrival order. */
  offsets(): number[] {
    return this.frames
      .filter((f) => f.type === 'message' || f.type === 'op')
      .map((f) => f.offset as number)
  }

  close(): void {
    this.socket.close()
  }

  private wake(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }
}

const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i)

/**
 * A raw socket that stopped reading and subscribed (id 1) with since offset
 * 0: its replay is stuck behind the full socket until it resumes reading.
 */
async function stuckResume(target: TestServer, collection: string, user: string) {
  const { body } = await getJson(target, `/api/ws/history?channel=${collection}&limit=1`)
  const raw = await silentSocket(target, `user_id=${user}`)
  raw.pause()
  raw.sendText(
    JSON.stringify({
      type: 'subscribe',
      id: 1,
      collection,
      since: { epoch: body.epoch, offset: 0 },
    }),
  )
  return raw
}

describe('resuming a large backlog', () => {
  test('10,000 entries of 4 KB resume from offset 0 while others keep publishing: every offset once, in order, then live', async () => {
    const collection = uniqueName('record')
    await seed(collection, 10_000, 4096)
    const { body: history } = await getJson(
      server,
      `/api/ws/history?channel=${collection}&since=9999&limit=1`,
    )
    const epoch = history.epoch as string

    const reader = await Reader.open('returning')
    reader.send({ type: 'subscribe', id: 'resume', collection, since: { epoch, offset: 0 } })
    // Others publish while the backlog is being sent.
    const during = seed(collection, 300, 4096, 4)
    const reply = await reader.until((f) => f.id === 'resume')
    await during
    expect(reply.type).toBe('subscribe')
    expect(reply.data.recovered).toBe(true)
    const head = reply.data.offset as number
    expect(head).toBeGreaterThanOrEqual(10_000)

    // Everything up to the reply's offset came before it, in order, once.
    const replyAt = reader.frames.findIndex((f) => f.id === 'resume')
    const before = reader.frames
      .slice(0, replyAt)
      .filter((f) => f.type === 'message')
      .map((f) => f.offset)
    expect(before).toEqual(range(1, head))
    // The rest arrive live after it, still in order, once.
    await reader.until((f) => f.type === 'message' && f.offset === 10_300)
    expect(reader.offsets()).toEqual(range(1, 10_300))
    expect(reader.closeCode).toBeUndefined()
    reader.close()
  }, 120_000)

  test("a document's 5,000 ops of 4 KB (20 MB) resume from v 0, paced the same way", async () => {
    const collection = uniqueName('record')
    const document = 'rec1'
    for (let i = 0; i < 5000; i += 50)
      await Promise.all(
        range(i, i + 49).map((n) =>
          postJson(server, '/api/ws/publish/document', {
            collection,
            document,
            operation: [{ p: [`f${n % 7}`], oi: payload(4096, String(n)) }],
          }),
        ),
      )
    const reader = await Reader.open('doc-returning')
    reader.send({ type: 'subscribe', id: 'doc', collection, document, since: { v: 0 } })
    const reply = await reader.until((f) => f.id === 'doc')
    expect(reply.data).toMatchObject({ recovered: true, v: 5000, offset: 5000 })
    const ops = reader.frames.filter((f) => f.type === 'op').map((f) => f.message.data.v)
    expect(ops).toEqual(range(0, 4999))
    reader.close()
  }, 60_000)

  test('a client that stops reading during the replay is disconnected as a slow consumer', async () => {
    const slow = await startServerOnTestStore({
      HEARTBEAT_INTERVAL: '0.5',
      CONNECTION_TIMEOUT: '60',
    })
    try {
      const collection = uniqueName('record')
      const channel = collection
      await Promise.all(
        range(0, 79).map(async (block) => {
          for (let i = 0; i < 25; i++)
            await postJson(slow, '/api/ws/broadcast/channel', {
              channel,
              message: payload(8192, `${block}.${i}`),
            })
        }),
      )
      const raw = await stuckResume(slow, collection, 'stuck')
      await eventually(async () => {
        const { body: sessions } = await getJson(slow, '/api/ws/sessions?user_id=stuck')
        expect(sessions.sessions[0]).toMatchObject({ live: false, end_reason: 'slow_consumer' })
      }, 10_000)
      raw.destroy()
    } finally {
      await slow.close()
    }
  }, 60_000)

  test('retention that removes entries not yet sent ends the replay with recovered:false', async () => {
    const small = await startServerOnTestStore({ HISTORY_MAX_PER_COLLECTION: '3000' })
    try {
      const collection = uniqueName('record')
      const publish = async (count: number) => {
        for (let i = 0; i < count; i += 50)
          await Promise.all(
            range(i, i + 49).map((n) =>
              postJson(small, '/api/ws/broadcast/channel', {
                channel: collection,
                message: payload(8192, String(n)),
              }),
            ),
          )
      }
      await publish(3000)
      const raw = await stuckResume(small, collection, 'paused')
      // While it does not read, 1,500 more arrive and retention drops the oldest.
      await publish(1500)
      expect(await small.retention.pass()).toBeGreaterThan(0)
      raw.resume()
      const reply = await eventually(() => {
        const found = raw.messages().find((m) => m.id === 1)
        if (!found) throw new Error('no reply yet')
        return found
      }, 20_000)
      expect(reply.data).toMatchObject({ recovered: false, offset: 4500 })
      // What it did get before the reply was a gap-free prefix of the stream.
      const offsets = raw
        .messages()
        .filter((m) => m.type === 'message')
        .map((m) => m.data.offset)
      expect(offsets).toEqual(range(1, offsets.length))
      expect(offsets.length).toBeLessThan(1500)
      raw.destroy()
    } finally {
      await small.close()
    }
  }, 60_000)

  test('unsubscribing during the replay answers the subscribe with 409 and stops it', async () => {
    const collection = uniqueName('record')
    await seed(collection, 2000, 8192)
    const raw = await stuckResume(server, collection, 'changes-mind')
    raw.sendText(JSON.stringify({ type: 'unsubscribe', id: 2, collection }))
    raw.resume()
    const replies = await eventually(() => {
      const found = raw.messages().filter((m) => m.id === 1 || m.id === 2)
      if (found.length < 2) throw new Error('waiting for both replies')
      return found
    }, 20_000)
    expect(replies[0]).toMatchObject({ type: 'error', id: 1, error: { code: 409 } })
    expect(replies[1]).toMatchObject({ type: 'unsubscribe', id: 2 })
    const sent = raw.messages().filter((m) => m.type === 'message').length
    expect(sent).toBeLessThan(2000)
    raw.destroy()
  }, 60_000)
})

describe('a replay and the same connection’s other traffic', () => {
  /** Waits until the server has taken `count` subscribe messages in all (its stats say so). */
  const subscribesTaken = (count: number) =>
    eventually(async () => {
      const { body } = await getJson(server, '/api/ws/stats')
      expect(body.messages.in_by_type.subscribe).toBeGreaterThanOrEqual(count)
    }, 10_000)
  const subscribeCount = async () =>
    ((await getJson(server, '/api/ws/stats')).body.messages.in_by_type.subscribe ?? 0) as number
  /** The reply with this id, once everything before it has arrived. */
  const replyOf = (raw: Awaited<ReturnType<typeof silentSocket>>, id: number) =>
    eventually(() => {
      const messages = raw.messages()
      if (!messages.some((m) => m.id === id)) throw new Error(`no reply ${id} yet`)
      return messages
    }, 20_000)

  test('entries published while the client is paused mid-replay follow the backlog from the store, in order, once', async () => {
    const collection = uniqueName('record')
    await seed(collection, 2000, 8192)
    const before = await subscribeCount()
    const raw = await stuckResume(server, collection, 'paused-reader')
    await subscribesTaken(before + 1)
    await seed(collection, 300, 8192, 4) // the replay is stuck behind the paused socket meanwhile
    raw.resume()
    const messages = await replyOf(raw, 1)
    const reply = messages.find((m) => m.id === 1)
    expect(reply?.data).toMatchObject({ recovered: true, offset: 2300 })
    const offsets = messages.filter((m) => m.type === 'message').map((m) => m.data.offset)
    expect(offsets).toEqual(range(1, 2300))
    raw.destroy()
  }, 60_000)

  test("the client's own submit during its replay is acked in the op's place, never echoed", async () => {
    const collection = uniqueName('record')
    await seed(collection, 2000, 8192)
    const raw = await stuckResume(server, collection, 'own-submit')
    raw.sendText(
      JSON.stringify({ type: 'submit', id: 2, collection, document: 'own', create: { data: {} } }),
    )
    // Committed (and so settled) while the replay is stuck behind the paused socket.
    await eventually(async () => {
      expect((await getJson(server, `/api/ws/documents/${collection}/own`)).status).toBe(200)
    }, 10_000)
    raw.resume()
    const messages = await replyOf(raw, 1)
    const ackAt = messages.findIndex((m) => m.id === 2)
    const ack = messages[ackAt]
    expect(ack).toMatchObject({ type: 'submit', data: { v: 0, offset: 2001 } })
    // Everything before its offset came before the ack; its own op never came.
    const entries = messages.filter((m) => m.type === 'message' || m.type === 'op')
    expect(entries.map((m) => m.data.offset)).toEqual(range(1, 2000))
    expect(messages.slice(0, ackAt).filter((m) => m.type === 'message')).toHaveLength(2000)
    expect(ackAt).toBeLessThan(messages.findIndex((m) => m.id === 1))
    raw.destroy()
  }, 60_000)

  test('a collection replayed while one of its documents is followed live: each op once', async () => {
    const collection = uniqueName('record')
    await seed(collection, 2000, 8192)
    const { body } = await getJson(server, `/api/ws/history?channel=${collection}&limit=1`)
    const raw = await silentSocket(server, 'user_id=overlap')
    raw.sendText(JSON.stringify({ type: 'subscribe', id: 0, collection, document: 'd' }))
    await replyOf(raw, 0)
    raw.pause()
    const before = await subscribeCount()
    raw.sendText(
      JSON.stringify({
        type: 'subscribe',
        id: 1,
        collection,
        since: { epoch: body.epoch, offset: 0 },
      }),
    )
    await subscribesTaken(before + 1)
    // Published while the replay is stuck: live through the document, and in the store behind it.
    const writer = await TestClient.connect(server)
    await writer.ok({ type: 'submit', collection, document: 'd', create: { data: {} } })
    await writer.ok({ type: 'submit', collection, document: 'd', v: 1, op: [{ p: ['a'], oi: 1 }] })
    raw.resume()
    const messages = await replyOf(raw, 1)
    const ops = messages.filter((m) => m.type === 'op').map((m) => m.data.offset)
    expect(ops).toEqual([2001, 2002])
    const all = messages
      .filter((m) => m.type === 'op' || m.type === 'message')
      .map((m) => m.data.offset)
    expect(new Set(all).size).toBe(all.length)
    await writer.close()
    raw.destroy()
  }, 60_000)
})
