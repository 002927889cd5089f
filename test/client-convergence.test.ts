import { expect, test } from 'bun:test'
import { join } from 'node:path'
import { type Doc, RealtimeClient } from '../src/client/index.ts'
import { getJson, type ServerProcess, spawnServer, tempDir } from './helpers.ts'

interface Shared {
  log: string[]
  count: number
  by: Record<string, number>
}

/** Waits until the doc has applied every change up to version v. */
async function reachVersion(doc: Doc, v: number): Promise<void> {
  while (doc.v < v) await doc.once('op')
}

test('3 clients keep submitting to one document while the server is stopped, killed and started again: all converge to the server snapshot, every op applied once', async () => {
  const dir = tempDir()
  const env = { DB_PATH: join(dir.path, 'converge.db') }
  let server: ServerProcess = await spawnServer(env)
  const port = String(server.port)
  const clients = Array.from(
    { length: 3 },
    (_, i) =>
      new RealtimeClient({
        url: server.url,
        userId: `writer${i}`,
        reconnect: { initialDelay: 20, maxDelay: 250 },
      }),
  )
  const allResynced = () => Promise.all(clients.map((client) => client.once('resynced')))
  try {
    const docs = clients.map((client) => client.doc('record_converge', 'shared'))
    await docs[0]?.subscribe()
    await docs[0]?.create({ log: [], count: 0, by: {} } satisfies Shared)
    await Promise.all(docs.map((doc) => doc.subscribe()))

    // Every writer submits until told to stop, whatever the connection is doing.
    let writing = true
    const submitted = docs.map(() => 0)
    const waiters: Array<{ count: number; wake: () => void }> = []
    /** Resolves once every writer has submitted `more` ops beyond what it has now. */
    const progress = (more: number) =>
      Promise.all(
        submitted.map(
          (_, i) =>
            new Promise<void>((wake) =>
              waiters.push({ count: (submitted[i] ?? 0) + more, wake: () => wake() }),
            ),
        ),
      )
    const acks: Promise<void>[] = []
    const writers = docs.map(async (doc, i) => {
      while (writing) {
        await Bun.sleep(2 + Math.random() * 6) // a user typing, not synchronisation
        const n = (submitted[i] ?? 0) + 1
        const data = doc.data as Shared
        const previous = data.by[`w${i}`]
        acks.push(
          doc.submit([
            { p: ['log', Math.floor(Math.random() * (data.log.length + 1))], li: `w${i}-${n}` },
            { p: ['count'], na: 1 },
            previous === undefined
              ? { p: ['by', `w${i}`], oi: n }
              : { p: ['by', `w${i}`], oi: n, od: previous },
          ]),
        )
        submitted[i] = n
        for (const waiter of [...waiters])
          if (n >= waiter.count) {
            waiters.splice(waiters.indexOf(waiter), 1)
            waiter.wake()
          }
      }
    })

    await progress(15)
    let back = allResynced()
    server.proc.kill('SIGTERM') // graceful: clients are told `shutdown`
    await server.exited
    await progress(10) // submitted while the server is down
    server = await spawnServer({ ...env, SOCKET_PORT: port })
    await back
    await progress(15) // live again: changes in flight when it dies
    back = allResynced()
    server.proc.kill('SIGKILL') // a crash: in-flight changes may or may not be stored
    await server.exited
    server = await spawnServer({ ...env, SOCKET_PORT: port })
    await back
    await progress(10)
    writing = false
    await Promise.all(writers)

    await Promise.all(acks) // every change acked: none refused, none dropped
    const snapshot = await getJson(server, '/api/ws/documents/record_converge/shared')
    const { v, data } = snapshot.body as { v: number; data: Shared }
    await Promise.all(docs.map((doc) => reachVersion(doc, v)))
    for (const doc of docs) {
      expect(doc.hasPending).toBe(false)
      expect(doc.v).toBe(v)
      expect(doc.data).toEqual(data)
    }
    const expected = submitted.flatMap((count, i) =>
      Array.from({ length: count }, (_, n) => `w${i}-${n + 1}`),
    )
    expect([...data.log].sort()).toEqual(expected.sort()) // each op once: none lost, none doubled
    expect(data.count).toBe(expected.length)
    expect(data.by).toEqual(Object.fromEntries(submitted.map((count, i) => [`w${i}`, count])))
    // Ops queued behind the one in flight are composed into one change: v counts changes.
    expect(v).toBeLessThanOrEqual(1 + expected.length)
  } finally {
    for (const client of clients) client.close()
    server.proc.kill('SIGKILL')
    await server.exited
    dir.remove()
  }
}, 60_000)
