import { afterAll, beforeAll, expect, test } from 'bun:test'
import { join } from 'node:path'
import type { Browser } from 'playwright-core'
import { startServer, type TestServer } from '../helpers.ts'
import { ARTIFACTS, launch } from './browser.ts'

let server: TestServer
let browser: Browser
beforeAll(async () => {
  server = startServer()
  browser = await launch()
})
afterAll(async () => {
  await browser.close()
  await server.close()
})

test('Swagger UI renders the operation list with no network beyond localhost', async () => {
  const page = await browser.newPage()
  const outside: string[] = []
  await page.route('**/*', (route) => {
    const { hostname } = new URL(route.request().url())
    if (hostname === '127.0.0.1' || hostname === 'localhost') return route.continue()
    outside.push(route.request().url())
    return route.abort()
  })
  await page.goto(`${server.url}/swagger`)
  await page.waitForSelector('.opblock-summary-path', { timeout: 15_000 })
  const paths = await page.$$eval('.opblock-summary-path', (nodes) =>
    nodes.map((n) => n.textContent?.trim()),
  )
  expect(paths).toContain('/api/ws/broadcast/channel')
  expect(paths).toContain('/api/ws/publish/record')
  expect(paths).toContain('/api/ws/history')
  expect(paths.length).toBeGreaterThanOrEqual(13)
  await page.screenshot({ path: join(ARTIFACTS, 'swagger.png'), fullPage: true })
  expect(outside).toEqual([])
  await page.close()
})
