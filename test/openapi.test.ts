import { afterAll, beforeAll, expect, test } from 'bun:test'
import { startServer, type TestServer } from './helpers.ts'

let server: TestServer
beforeAll(() => {
  server = startServer()
})
afterAll(() => server.close())

test('Swagger UI loads its script and stylesheet from this server, not a CDN', async () => {
  const page = await fetch(`${server.url}/swagger`)
  expect(page.status).toBe(200)
  const html = await page.text()
  expect(html).not.toMatch(/https?:\/\//)
  const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1] as string)
  expect(assets).toEqual(['/swagger/assets/swagger-ui.css', '/swagger/assets/swagger-ui-bundle.js'])
  const css = await fetch(`${server.url}${assets[0]}`)
  expect(css.headers.get('content-type')).toContain('text/css')
  expect((await css.text()).length).toBeGreaterThan(10_000)
  const js = await fetch(`${server.url}${assets[1]}`)
  expect(js.headers.get('content-type')).toContain('javascript')
  expect(await js.text()).toContain('SwaggerUIBundle')
})

test('the spec documents every REST route with schemas and hides the socket and asset routes', async () => {
  const spec = (await (await fetch(`${server.url}/swagger/json`)).json()) as {
    paths: Record<
      string,
      Record<string, { requestBody?: unknown; summary?: string; parameters?: unknown[] }>
    >
  }
  const routes = Object.entries(spec.paths).flatMap(([path, methods]) =>
    Object.keys(methods).map((method) => `${method.toUpperCase()} ${path}`),
  )
  expect(routes.sort()).toEqual(
    [
      'GET /api/ws/stats',
      'POST /api/ws/broadcast/channel',
      'POST /api/ws/broadcast/user',
      'POST /api/ws/publish/document',
      'POST /api/ws/publish/record',
      'POST /api/ws/publish/view',
      'POST /api/ws/publish/field',
      'POST /api/ws/publish/table',
      'GET /api/ws/history',
      'GET /api/ws/presence',
      'GET /api/ws/online',
      'GET /api/ws/sessions',
      'GET /api/ws/documents/{collection}/{id}',
    ].sort(),
  )
  for (const [path, methods] of Object.entries(spec.paths))
    for (const [method, operation] of Object.entries(methods)) {
      expect(operation.summary, `${method} ${path}`).toBeTruthy()
      if (method === 'post') expect(JSON.stringify(operation.requestBody)).toContain('example')
    }
  expect(JSON.stringify(spec.paths['/api/ws/history'])).toContain('since')
})
