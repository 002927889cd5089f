import { describe, expect, test } from 'bun:test'
import { join } from 'node:path'
import { type as json0 } from 'ot-json0'
import {
  getJson,
  type ServerMessage,
  spawnServer,
  startServer,
  TestClient,
  tempDir,
  uniqueName,
} from './helpers.ts'

interface HistoryPage {
  head: number
  messages: ServerMessage[]
}

/** Every held entry of a collection, oldest first, paging through the history API. */
async function fullHistory(server: { url: string }, collection: string): Promise<HistoryPage> {
  const messages: ServerMessage[] = []
  let since = 0
  let head = 0
  for (;;) {
    const page = (
      await getJson(server, `/api/ws/history?channel=${collection}&since=${since}&limit=1000`)
    ).body as HistoryPage
    head = page.head
    messages.push(...page.messages)
    if (page.messages.length < 1000) return { head, messages }
    since = page.messages.at(-1)?.data.offset
  }
}

/** The snapshot a document must have: its create, then every stored op, in offset order. */
function replaySnapshot(messages: ServerMessage[], document: string): unknown {
  let data: unknown = null
  for (const message of messages) {
    if (message.document !== document) continue
    if (message.data.create) data = structuredClone(message.data.create.data)
    else if (message.data.del) data = null
    else if (message.data.op) data = json0.apply(data, message.data.op)
  }
  return data
}

describe('concurrent stale submits', () => {
  test('10 clients on one document: each op acked or refused with a reason; snapshot = history replayed', async () => {
    const server = startServer()
    try {
      const collection = uniqueName('record')
      const initial = { counter: 0, items: [] as string[], fields: { a: 1, b: 2, c: 3 } }
      const creator = await TestClient.connect(server)
      await creator.ok({ type: 'submit', collection, document: 'doc', create: { data: initial } })
      const clients = await Promise.all(
        Array.from({ length: 10 }, (_, i) => TestClient.connect(server, { user_id: `c${i}` })),
      )
      const acks: Array<{ v: number; offset: number; client: number }> = []
      const refusals: ServerMessage[] = []
      await Promise.all(
        clients.map(async (client, c) => {
          let known = 1 // every client starts from v1 and only learns from its own acks: mostly stale
          for (let i = 0; i < 30; i++) {
            const op =
              i === 29
                ? [{ p: ['missing', 'x'], oi: 1 }] // never applies: refused with a reason
                : i % 3 === 0
                  ? [{ p: ['counter'], na: 1 }]
                  : i % 3 === 1
                    ? [{ p: ['items', 0], li: `c${c}-${i}` }]
                    : // Deleting a key others may have deleted already: transformed away.
                      [
                        {
                          p: ['fields', ['a', 'b', 'c'][(c + i) % 3] as string],
                          od: 1 + ((c + i) % 3),
                        },
                      ]
            const reply = await client.request({
              type: 'submit',
              collection,
              document: 'doc',
              v: known,
              op,
            })
            if (reply.type === 'submit') {
              acks.push({ ...reply.data, client: c })
              known = reply.data.v + 1
            } else {
              expect(reply.type).toBe('error')
              expect([400, 409]).toContain(reply.error?.code as number)
              expect(reply.error?.message.length).toBeGreaterThan(0)
              refusals.push(reply)
            }
          }
        }),
      )
      expect(acks.length + refusals.length).toBe(300)
      // The deliberate bad op of each client, and deletes of keys already gone.
      expect(refusals.length).toBeGreaterThanOrEqual(10)
      for (const refusal of refusals) expect(refusal.error?.message).toContain('does not exist')

      const { head, messages } = await fullHistory(server, collection)
      expect(messages.map((m) => m.data.offset)).toEqual(
        Array.from({ length: head }, (_, i) => i + 1),
      )
      expect(head).toBe(acks.length + 1)
      const byOffset = new Map(messages.map((m) => [m.data.offset as number, m]))
      for (const ack of acks) expect(byOffset.get(ack.offset)?.data.v).toBe(ack.v)

      const snapshot = (await getJson(server, `/api/ws/documents/${collection}/doc`)).body
      expect(snapshot.v).toBe(head)
      expect(snapshot.data).toEqual(replaySnapshot(messages, 'doc'))
      expect(snapshot.data.counter).toBe(
        messages.filter((m) => m.data.op?.some((c: { na?: unknown }) => c.na !== undefined)).length,
      )
      expect(snapshot.data.items.length).toBe(
        messages.filter((m) => m.data.op?.some((c: { li?: unknown }) => c.li !== undefined)).length,
      )
      await Promise.all([creator, ...clients].map((c) => c.close()))
    } finally {
      await server.close()
    }
  })
})

describe('crash', () => {
  test('after SIGKILL mid-stream, every acked op is there, offsets have no gap, snapshots equal history', async () => {
    const dir = tempDir()
    const env = { DB_PATH: join(dir.path, 'crash.db') }
    const collection = 'record_crash'
    const first = await spawnServer(env)
    const writers = await Promise.all(
      [0, 1, 2].map((i) => TestClient.connect(first, { user_id: `w${i}` })),
    )
    for (const [i, writer] of writers.entries())
      await writer.ok({
        type: 'submit',
        collection,
        document: `doc${i}`,
        create: { data: { n: 0, log: [] } },
      })

    // Pipelined submits, far more than will be acked before the kill.
    const acked: Array<{ document: string; v: number; offset: number }> = []
    let killed = false
    let resolveEnough: () => void = () => {}
    const enough = new Promise<void>((resolve) => {
      resolveEnough = resolve
    })
    for (const [i, writer] of writers.entries()) {
      writer.socket.addEventListener('message', (event) => {
        const message = JSON.parse(String(event.data)) as ServerMessage
        if (message.type !== 'submit' || killed) return
        acked.push({ document: `doc${i}`, v: message.data.v, offset: message.data.offset })
        if (acked.length >= 300) resolveEnough()
      })
      for (let k = 0; k < 2000; k++)
        writer.send({
          type: 'submit',
          id: k,
          collection,
          document: `doc${i}`,
          op: [
            { p: ['n'], na: 1 },
            { p: ['log', 0], li: k },
          ],
        })
    }
    await enough
    first.proc.kill('SIGKILL')
    killed = true
    expect(await first.exited).not.toBe(0)
    await Promise.all(writers.map((w) => w.closed))

    const second = await spawnServer(env)
    try {
      const { head, messages } = await fullHistory(second, collection)
      expect(head).toBeGreaterThanOrEqual(acked.length + 3)
      expect(messages.map((m) => m.data.offset)).toEqual(
        Array.from({ length: head }, (_, i) => i + 1),
      )
      const byOffset = new Map(messages.map((m) => [m.data.offset as number, m]))
      for (const ack of acked) {
        const stored = byOffset.get(ack.offset)
        expect(stored?.document).toBe(ack.document)
        expect(stored?.data.v).toBe(ack.v)
      }
      for (const document of ['doc0', 'doc1', 'doc2']) {
        const snapshot = (await getJson(second, `/api/ws/documents/${collection}/${document}`)).body
        expect(snapshot.data).toEqual(replaySnapshot(messages, document))
        expect(snapshot.v).toBe(messages.filter((m) => m.document === document).length)
      }
      // And it goes on from there.
      const after = await TestClient.connect(second)
      const next = await after.ok({
        type: 'submit',
        collection,
        document: 'doc0',
        op: [{ p: ['n'], na: 1 }],
      })
      expect(next.data.offset).toBe(head + 1)
      await after.close()
    } finally {
      second.proc.kill('SIGTERM')
      await second.exited
      dir.remove()
    }
  })
})
