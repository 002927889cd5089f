import { afterAll, beforeAll, expect, test } from 'bun:test'
import { join } from 'node:path'
import type { Browser, Page } from 'playwright-core'
import { getJson, type ServerProcess, spawnServer, tempDir } from '../helpers.ts'
import { ARTIFACTS, launch } from './browser.ts'

const dir = tempDir()
const env = { DB_PATH: join(dir.path, 'demo.db') }
let server: ServerProcess
let browser: Browser
beforeAll(async () => {
  server = await spawnServer(env)
  browser = await launch()
})
afterAll(async () => {
  await browser.close()
  server.proc.kill('SIGKILL')
  await server.exited
  dir.remove()
})

const input = (record: string, field: string) =>
  `td[data-rec="${record}"][data-fld="${field}"] input`

/** Every cell's value, record by record. */
const cells = (page: Page) =>
  page.$$eval('td[data-rec]', (tds) =>
    tds.map((td) => `${td.dataset.rec}.${td.dataset.fld}=${td.querySelector('input')?.value}`),
  )

async function openAs(user: string): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 900, height: 420 } })
  const page = await context.newPage()
  const outside: string[] = []
  await page.route('**/*', (route) => {
    const { hostname } = new URL(route.request().url())
    if (hostname === '127.0.0.1') return route.continue()
    outside.push(route.request().url())
    return route.abort()
  })
  page.on('close', () => expect(outside).toEqual([]))
  await page.goto(`${server.url}/demo?user=${user}`)
  await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 })
  return page
}

test('two pages edit the grid live, see each other’s selected cell, and converge across a server restart and going offline', async () => {
  const alice = await openAs('alice')
  const bob = await openAs('bob')

  // Edits in one page appear in the other.
  await alice.fill(input('rec1', 'name'), 'Launch plan')
  await bob.waitForFunction(
    (selector) => (document.querySelector(selector) as HTMLInputElement).value === 'Launch plan',
    input('rec1', 'name'),
  )
  // Alice's selected cell shows in Bob's page, with her name.
  await alice.click(input('rec2', 'status'))
  await bob.waitForSelector('td[data-rec="rec2"][data-fld="status"].present')
  expect(await bob.textContent('td[data-rec="rec2"][data-fld="status"] .who')).toBe('alice')
  await bob.screenshot({ path: join(ARTIFACTS, 'demo-presence.png') })

  // The server stops while Bob is typing; he keeps typing; it starts again.
  await bob.click(input('rec3', 'notes'))
  await bob.keyboard.type('before ')
  server.proc.kill('SIGTERM')
  await server.exited
  await bob.waitForSelector(
    'body[data-connection="reconnecting"], body[data-connection="connecting"]',
  )
  await bob.keyboard.type('during the outage')
  await alice.fill(input('rec4', 'name'), 'offline edit by alice')
  await bob.screenshot({ path: join(ARTIFACTS, 'demo-reconnecting.png') })
  server = await spawnServer({ ...env, SOCKET_PORT: String(server.port) })
  for (const page of [alice, bob])
    await page.waitForSelector('body[data-resyncs="2"]', { timeout: 15_000 })
  await bob.keyboard.type(' and after')

  // Going offline (the browser says so): edits wait, then go out when the network returns.
  await alice.context().setOffline(true)
  await alice.waitForSelector('body[data-connection="offline"]')
  await alice.fill(input('rec5', 'status'), 'typed offline')
  await alice.context().setOffline(false)
  await alice.waitForSelector('body[data-resyncs="3"]', { timeout: 15_000 })

  const expected = {
    'rec1.name': 'Launch plan',
    'rec3.notes': 'before during the outage and after',
    'rec4.name': 'offline edit by alice',
    'rec5.status': 'typed offline',
  }
  for (const page of [alice, bob])
    for (const [cell, value] of Object.entries(expected)) {
      const [record, field] = cell.split('.') as [string, string]
      await page.waitForFunction(
        ([selector, want]) =>
          (document.querySelector(selector as string) as HTMLInputElement).value === want,
        [input(record, field), value],
      )
    }
  expect(await cells(alice)).toEqual(await cells(bob))
  // And both show what the server holds.
  for (const record of ['rec1', 'rec3', 'rec4', 'rec5']) {
    const snapshot = await getJson(server, `/api/ws/documents/record_demo/${record}`)
    for (const [cell, value] of Object.entries(expected))
      if (cell.startsWith(`${record}.`))
        expect(snapshot.body.data.fields[cell.slice(record.length + 1)]).toBe(value)
  }
  await alice.screenshot({ path: join(ARTIFACTS, 'demo-alice-converged.png') })
  await bob.screenshot({ path: join(ARTIFACTS, 'demo-bob-converged.png') })
  await alice.context().close()
  await bob.context().close()
}, 90_000)
