import { describe, expect, test } from 'bun:test'
import { renameSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import {
  getJson,
  postJson,
  runServerExpectingFailure,
  type ServerProcess,
  spawnServer,
  startServer,
  TestClient,
  tempDir,
  uniqueName,
} from './helpers.ts'

/**
 * Real store failures, provoked as root (who ignores file modes):
 * - deleted / replaced: `rm` or `mv` over DB_PATH while the server runs;
 * - read-only: `chattr +i` on the database and its WAL, which even root cannot write;
 * - full: RLIMIT_FSIZE lowered on the server process (`prlimit`) to the WAL's
 *   size, so the kernel refuses to grow the file (EFBIG: what a full disk
 *   looks like to SQLite, short of mounting a small filesystem).
 */

/** Runs a command; fails the test (rather than skipping the case) when it cannot. */
function run(...argv: string[]): void {
  const result = Bun.spawnSync(argv, { stderr: 'pipe' })
  if (result.exitCode !== 0) throw new Error(`${argv.join(' ')}: ${result.stderr.toString()}`)
}

/** Lowers (or, with `unlimited`, restores) the process's file-size limit; the hard limit stays. */
function fileSizeLimit(server: ServerProcess, bytes: number | 'unlimited'): void {
  run('prlimit', `--pid=${server.proc.pid}`, `--fsize=${bytes}:`)
}

/** The JSON log lines at `level` (50 error) so far. */
function logged(server: ServerProcess, level: number): Array<Record<string, unknown>> {
  return server.lines
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line.level === level)
}

/** A metric's value from /metrics (loopback needs no token). */
async function metric(server: { url: string }, name: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`teable_realtime_${name} `))
  if (line === undefined) throw new Error(`no metric ${name}`)
  return Number(line.split(' ')[1])
}

describe('database file deleted or replaced while running', () => {
  for (const what of ['deleted', 'replaced'] as const)
    test(`${what}: writes refused with 503 (not acked), /readyz names DB_PATH, logged at error`, async () => {
      const dir = tempDir()
      const dbPath = join(dir.path, 'store.db')
      const server = await spawnServer({ DB_PATH: dbPath })
      try {
        const collection = uniqueName('record')
        const client = await TestClient.connect(server, { user_id: 'una' })
        await client.ok({ type: 'submit', collection, document: 'doc', create: { data: { n: 0 } } })
        // Its session row written now (a REST read commits queued session writes): none is pending below.
        await getJson(server, '/api/ws/sessions?user_id=una')
        expect((await fetch(`${server.url}/readyz`)).status).toBe(200)

        if (what === 'deleted')
          for (const file of [dbPath, `${dbPath}-wal`, `${dbPath}-shm`])
            rmSync(file, { force: true })
        else {
          // Another (valid) database moved over the path, as a careless restore would.
          const other = startServer({ DB_PATH: join(dir.path, 'other.db') })
          await other.close()
          renameSync(join(dir.path, 'other.db'), dbPath)
        }

        const submit = await client.request({
          type: 'submit',
          collection,
          document: 'doc',
          v: 1,
          op: [{ p: ['n'], na: 1 }],
        })
        expect(submit.type).toBe('error')
        expect(submit.error?.code).toBe(503)
        const broadcast = await postJson(server, '/api/ws/broadcast/channel', {
          channel: collection,
          message: { hello: 1 },
        })
        expect(broadcast.status).toBe(503)
        expect(broadcast.body.error.message).toContain('restarted')

        const ready = await getJson(server, '/readyz')
        expect(ready.status).toBe(503)
        expect(ready.body.reason).toContain(dbPath)
        expect(ready.body.reason).toContain('DB_PATH')
        expect(ready.body.reason).toContain(what)
        expect(ready.body.reason).toContain('restart')
        const errors = logged(server, 50)
        expect(errors.some((line) => String(line.msg).includes(`database file ${what}`))).toBe(true)
        expect(errors.find((line) => line.db === dbPath)).toBeDefined()
        expect(await metric(server, 'store_writable')).toBe(0)
        expect(await metric(server, 'store_failures_total')).toBe(2) // the submit and the broadcast
        // Nothing was acked: the op stayed out of the served state.
        expect((await getJson(server, `/api/ws/documents/${collection}/doc`)).body.v).toBe(1)
        await client.close()
      } finally {
        server.proc.kill('SIGKILL')
        await server.exited
        dir.remove()
      }
    })
})

describe('passing store failures', () => {
  test('read-only file (chattr +i): 503 and not ready until it is writable again, then ready without traffic', async () => {
    const dir = tempDir()
    const dbPath = join(dir.path, 'store.db')
    const files = [dbPath, `${dbPath}-wal`]
    const server = startServer({ DB_PATH: dbPath })
    try {
      const collection = uniqueName('record')
      const client = await TestClient.connect(server)
      await client.ok({ type: 'submit', collection, document: 'doc', create: { data: { n: 0 } } })
      const op = { type: 'submit', collection, document: 'doc', v: 1, op: [{ p: ['n'], na: 1 }] }

      run('chattr', '+i', ...files)
      const refused = await client.request(op)
      expect(refused.type).toBe('error')
      expect(refused.error?.code).toBe(503)
      expect(refused.error?.message).toContain('retry')
      const started = Date.now()
      const notReady = await getJson(server, '/readyz')
      expect(Date.now() - started).toBeLessThan(3000) // not BUSY_TIMEOUT (5 s): the probe never waits on a lock
      expect(notReady.status).toBe(503)
      expect(notReady.body.reason).toContain('store not writable: the last write failed')
      // The probe's own write fails too: still not ready.
      expect((await fetch(`${server.url}/readyz`)).status).toBe(503)

      run('chattr', '-i', ...files)
      // No client write in between: the probe's write makes it ready.
      expect((await fetch(`${server.url}/readyz`)).status).toBe(200)
      const acked = await client.ok(op)
      expect(acked.data.v).toBe(1) // applied at v1: the document is now v2
      const snapshot = (await getJson(server, `/api/ws/documents/${collection}/doc`)).body
      expect(snapshot).toEqual({ v: 2, data: { n: 1 } })
      await client.close()
    } finally {
      Bun.spawnSync(['chattr', '-i', ...files])
      await server.close()
      dir.remove()
    }
  })

  test('file cannot grow (file-size limit, as on a full disk): a failed session write makes it not ready; room again, ready', async () => {
    const dir = tempDir()
    const dbPath = join(dir.path, 'store.db')
    const server = await spawnServer({ DB_PATH: dbPath })
    try {
      const collection = uniqueName('record')
      expect(
        (await postJson(server, '/api/ws/broadcast/channel', { channel: collection, message: 1 }))
          .status,
      ).toBe(200)
      // Appending a frame to the WAL now needs more room than the process may use.
      fileSizeLimit(server, statSync(`${dbPath}-wal`).size)

      // Only a session write (the REST sessions read commits the queued ones first).
      const client = await TestClient.connect(server, { user_id: 'sam' })
      await getJson(server, '/api/ws/sessions?user_id=sam')
      const notReady = await getJson(server, '/readyz')
      expect(notReady.status).toBe(503)
      expect(notReady.body.reason).toContain('store not writable: the last write failed')
      expect(await metric(server, 'store_failures_total')).toBe(1)
      expect(await metric(server, 'store_writable')).toBe(0)
      const refused = await postJson(server, '/api/ws/broadcast/channel', {
        channel: collection,
        message: 2,
      })
      expect(refused.status).toBe(503)
      expect(refused.body.error.message).toContain('retry later')
      expect(
        logged(server, 50).filter((line) =>
          ['session writes failed', 'commit failed; batch rolled back'].includes(String(line.msg)),
        ).length,
      ).toBe(2)

      fileSizeLimit(server, 'unlimited')
      expect((await fetch(`${server.url}/readyz`)).status).toBe(200)
      expect(await metric(server, 'store_writable')).toBe(1)
      const stored = await postJson(server, '/api/ws/broadcast/channel', {
        channel: collection,
        message: 3,
      })
      expect(stored.status).toBe(200)
      // The refused message took no offset.
      expect(stored.body.offset).toBe(2)
      await client.close()
    } finally {
      server.proc.kill('SIGKILL')
      await server.exited
      dir.remove()
    }
  })
})

describe('one process per database file', () => {
  test('a second server on the same DB_PATH refuses to start; the first keeps serving', async () => {
    const dir = tempDir()
    const dbPath = join(dir.path, 'shared.db')
    const first = await spawnServer({ DB_PATH: dbPath })
    try {
      const collection = uniqueName('record')
      const client = await TestClient.connect(first)
      await client.ok({ type: 'submit', collection, document: 'doc', create: { data: { n: 0 } } })

      const second = await runServerExpectingFailure({ DB_PATH: dbPath, SOCKET_PORT: '0' })
      expect(second.code).toBe(1)
      expect(second.stderr).toContain(dbPath)
      expect(second.stderr).toContain('DB_PATH')
      expect(second.stderr).toContain('locked by another process')

      const acked = await client.ok({
        type: 'submit',
        collection,
        document: 'doc',
        v: 1,
        op: [{ p: ['n'], na: 1 }],
      })
      expect(acked.data.v).toBe(1) // applied at v1: the document is now v2
      expect((await fetch(`${first.url}/readyz`)).status).toBe(200)
      await client.close()
    } finally {
      first.proc.kill('SIGTERM')
      expect(await first.exited).toBe(0)
    }
    // Stopped, the file is free again.
    const again = await spawnServer({ DB_PATH: dbPath })
    again.proc.kill('SIGTERM')
    expect(await again.exited).toBe(0)
    dir.remove()
  })
})
