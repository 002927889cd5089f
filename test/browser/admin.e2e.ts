import { afterAll, beforeAll, expect, test } from 'bun:test'
import { join } from 'node:path'
import type { Browser } from 'playwright-core'
import { postJson, startServer, TestClient, type TestServer } from '../helpers.ts'
import { ARTIFACTS, launch } from './browser.ts'

let server: TestServer
let browser: Browser
beforeAll(async () => {
  server = startServer({ ADMIN_TOKEN: 'dash-token' })
  browser = await launch()
})
afterAll(async () => {
  await browser.close()
  await server.close()
})

test('the dashboard shows a client that connects, and its chart moves when messages flow', async () => {
  const page = await browser.newPage()
  await page.goto(`${server.url}/admin?token=dash-token`)
  await page.waitForFunction(() => document.getElementById('connections')?.textContent === '0')

  const client = await TestClient.connect(server, { user_id: 'dashboard-visitor' })
  await client.ok({ type: 'subscribe', collection: 'record_dash' })
  await page.waitForFunction(() => document.getElementById('connections')?.textContent === '1')
  expect(await page.textContent('#online')).toContain('dashboard-visitor')
  expect(await page.textContent('#busiest')).toContain('record_dash')

  for (let i = 0; i < 30; i++)
    await postJson(
      server,
      '/api/ws/broadcast/channel',
      { channel: 'record_dash', message: i },
      { Authorization: 'Bearer dash-token' },
    )
  // The per-second samples holding these deliveries reach the chart: 30
  // messages, plus the client's connected and subscribe replies.
  await page.waitForFunction(
    () => Number(document.getElementById('chart')?.dataset.totalOut) >= 32,
    undefined,
    {
      timeout: 5000,
    },
  )
  await page.screenshot({ path: join(ARTIFACTS, 'admin.png'), fullPage: true })

  await client.close()
  await page.waitForFunction(() => document.getElementById('connections')?.textContent === '0')
  await page.close()
})

test('without the token the dashboard is refused', async () => {
  const page = await browser.newPage()
  const response = await page.goto(`${server.url}/admin`)
  expect(response?.status()).toBe(401)
  await page.close()
})
