import { afterAll, beforeAll, expect, test } from 'bun:test'
import { join } from 'node:path'
import Redis from 'ioredis'
import type { Browser } from 'playwright-core'
import { loadConfig } from '../../src/config.ts'
import { createLogger } from '../../src/observability/logger.ts'
import { type RealtimeServer, startServer as startIntakeServer } from '../../src/server.ts'
import {
  postJson,
  startServer,
  TEST_LIMITS,
  TestClient,
  type TestServer,
  tempDir,
} from '../helpers.ts'
import { freshRedisPrefix } from '../support/services.ts'
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

test('without INTAKE_STREAM the intake section stays hidden', async () => {
  const page = await browser.newPage()
  await page.goto(`${server.url}/admin?token=dash-token`)
  await page.waitForFunction(() => document.getElementById('connections')?.textContent === '0')
  expect(await page.isHidden('#intake')).toBe(true)
  await page.close()
})

test('with INTAKE_STREAM the dashboard shows the queue and moves as entries are applied', async () => {
  const keys = freshRedisPrefix()
  const dir = tempDir()
  const redis = new Redis(keys.url)
  const stream = `${keys.prefix}intake`
  const config = loadConfig({
    SOCKET_PORT: '0',
    HOST: '127.0.0.1',
    DB_PATH: join(dir.path, 'realtime.db'),
    LOG_LEVEL: 'silent',
    ADMIN_TOKEN: 'dash-token',
    REDIS_URL: keys.url,
    REDIS_PREFIX: keys.prefix,
    INTAKE_STREAM: stream,
    NODE_ID: 'dash-node',
    ...TEST_LIMITS,
  })
  let intakeServer: RealtimeServer | undefined
  const page = await browser.newPage()
  try {
    intakeServer = await startIntakeServer(config, createLogger(config))
    await page.goto(`${intakeServer.url}/admin?token=dash-token`)
    await page.waitForSelector('#intake', { state: 'visible' })
    expect(await page.textContent('#intake-stream')).toBe(stream)
    expect(await page.textContent('#intake-node')).toBe('dash-node (consuming)')
    for (let i = 0; i < 3; i++)
      await redis.xadd(
        stream,
        '*',
        'route',
        'publish/document',
        'body',
        JSON.stringify({
          collection: 'record_dash',
          document: 'd',
          operation: [{ p: ['n'], oi: i }],
        }),
      )
    await redis.xadd(stream, '*', 'route', 'publish/nothing', 'body', '{}')
    await page.waitForFunction(
      () =>
        document.getElementById('intake-processed')?.textContent === '3' &&
        document.getElementById('intake-dead-lettered')?.textContent === '1' &&
        document.getElementById('intake-dead')?.textContent === '1' &&
        document.getElementById('intake-length')?.textContent === '4' &&
        document.getElementById('intake-pending')?.textContent === '0',
      undefined,
      { timeout: 5000 },
    )
    await page.screenshot({ path: join(ARTIFACTS, 'admin-intake.png'), fullPage: true })
  } finally {
    await page.close()
    await intakeServer?.stop()
    redis.disconnect()
    await keys.clean()
    dir.remove()
  }
})
