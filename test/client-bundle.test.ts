import { expect, test } from 'bun:test'
import { join } from 'node:path'
import { measureClient, TARGET_BYTES } from '../scripts/client-size.ts'

const root = join(import.meta.dir, '..')

test('the browser bundle of the client holds the protocol module and ot-json0, no server module', async () => {
  const result = await Bun.build({
    entrypoints: [join(root, 'src', 'client', 'index.ts')],
    target: 'browser',
    format: 'esm',
  })
  expect(result.success).toBe(true)
  const code = await (result.outputs[0] as Blob).text()
  // An unminified bundle names each module it holds in a `// path` comment.
  const modules = [...code.matchAll(/^\/\/ (\S+\.[cm]?[jt]s)$/gm)].map((m) => m[1] as string)
  expect(modules.length).toBeGreaterThan(5)
  // Paths are relative to wherever the build ran and node_modules lives: match their tails.
  const outside = modules.filter(
    (path) =>
      !/(^|\/)src\/(client|protocol)\//.test(path) && !/(^|\/)node_modules\/ot-json0\//.test(path),
  )
  expect(outside).toEqual([])
  expect(modules.some((path) => /(^|\/)node_modules\/ot-json0\/lib\/json0\.js$/.test(path))).toBe(
    true,
  )
  for (const server of ['bun:sqlite', 'elysia', 'drizzle', 'src/hub/', '@sinclair/typebox'])
    expect(code).not.toContain(server)
})

test(`minified and gzipped, the client is at most ${TARGET_BYTES / 1024} KB`, async () => {
  const { gzipped } = await measureClient()
  expect(gzipped).toBeLessThanOrEqual(TARGET_BYTES)
})
