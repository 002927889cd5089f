import { afterAll, expect, test } from 'bun:test'
import { cpSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { tempDir } from './helpers.ts'

const root = join(import.meta.dir, '..')
const dir = tempDir()
afterAll(() => dir.remove())

const run = (argv: string[], cwd: string) => {
  const result = Bun.spawnSync(argv, { cwd, stdout: 'pipe', stderr: 'pipe' })
  return { code: result.exitCode, output: `${result.stdout}${result.stderr}` }
}

/** A package's directory, wherever the resolver finds it (hoisted, a workspace …). */
const packageDir = (name: string) => dirname(Bun.resolveSync(`${name}/package.json`, root))

/** A frontend's code: Treaty on `App`, the realtime client, protocol types, and two mistakes tsc must catch. */
const frontend = `import { treaty } from '@elysiajs/eden'
import type { App, ServerMessage } from 'teable-realtime'
import { type Doc, RealtimeClient, RequestError } from 'teable-realtime/client'

interface Row { fields: Record<string, string> }

const api = treaty<App>('localhost:3000')

export async function run(frame: ServerMessage): Promise<number | undefined> {
  const published = await api.api.ws.publish.record.post({
    table_id: 'tbl1',
    record_id: 'rec1',
    operation: [{ p: ['fields', 'fld1'], oi: 'new', od: 'old' }],
  })
  // @ts-expect-error a component with no json0 instruction is not an op
  await api.api.ws.publish.record.post({ table_id: 't', record_id: 'r', operation: [{ p: ['x'], foo: 1 }] })
  const history = await api.api.ws.history.get({ query: { channel: 'record_tbl1' } })
  const head: number | undefined = history.data?.head
  const client = new RealtimeClient({ url: 'ws://localhost:3000', token: async () => 'jwt' })
  // @ts-expect-error userId is a string
  new RealtimeClient({ url: 'ws://localhost:3000', userId: 1 })
  const doc: Doc<Row> = client.doc<Row>('record_tbl1', 'rec1')
  await doc.subscribe()
  const name: string | undefined = doc.data?.fields.name
  // @ts-expect-error Subscription internals are not public
  client.subscribe('record_tbl1').fail
  await doc.submit([{ p: ['fields', 'fld1'], oi: 'x' }]).catch((error: unknown) => {
    if (error instanceof RequestError && error.code === 409) return
  })
  client.subscribe('record_tbl1').on('reset', (event) => event.offset)
  if (frame.type === 'op' && 'op' in frame.data) frame.data.op[0]?.p
  return published.data?.v ?? head ?? name?.length
}
`

test('a frontend project that installs the packed package type-checks App and the client from their package names', async () => {
  // Packed from a copy: prepack's build writes dist/ there, never into the repository.
  const copy = join(dir.path, 'repo')
  mkdirSync(copy)
  for (const entry of ['package.json', 'README.md', 'tsconfig.json', 'tsconfig.types.json'])
    cpSync(join(root, entry), join(copy, entry))
  for (const entry of ['src', 'scripts', 'drizzle'])
    cpSync(join(root, entry), join(copy, entry), { recursive: true })
  symlinkSync(join(root, 'node_modules'), join(copy, 'node_modules'))
  const packed = join(dir.path, 'pack')
  mkdirSync(packed)
  const pack = run([process.execPath, 'pm', 'pack', '--destination', packed], copy)
  expect(pack.code, pack.output).toBe(0)
  const tarball = join(packed, readdirSync(packed).find((f) => f.endsWith('.tgz')) ?? '')

  // The frontend's node_modules, offline: the package unpacked, its dependencies and
  // Eden linked from this repository's installation (no registry).
  const app = join(dir.path, 'frontend')
  const modules = join(app, 'node_modules')
  const installed = join(modules, 'teable-realtime')
  mkdirSync(join(app, 'src'), { recursive: true })
  mkdirSync(installed, { recursive: true })
  const untar = run(['tar', '-xzf', tarball, '-C', installed, '--strip-components=1'], app)
  expect(untar.code, untar.output).toBe(0)
  const manifest = await Bun.file(join(installed, 'package.json')).json()
  for (const name of [...Object.keys(manifest.dependencies), '@elysiajs/eden']) {
    mkdirSync(dirname(join(modules, name)), { recursive: true })
    symlinkSync(packageDir(name), join(modules, name), 'dir')
  }
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'frontend', private: true, type: 'module' }),
  )
  // A plain strict config, as a Vite template has it (skipLibCheck: Elysia's own .d.ts need it).
  writeFileSync(
    join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'ESNext',
        moduleResolution: 'bundler',
        lib: ['ES2022', 'DOM'],
        strict: true,
        noEmit: true,
        skipLibCheck: true,
      },
      include: ['src'],
    }),
  )
  writeFileSync(join(app, 'src', 'app.ts'), frontend)
  const tsc = join(packageDir('typescript'), 'bin', 'tsc')
  const checked = run([tsc, '-p', '.'], app)
  expect(checked.output).toBe('')
  expect(checked.code).toBe(0)
  // The package's own declarations are what tsc read: no server source behind them.
  const listed = run([tsc, '-p', '.', '--listFilesOnly'], app)
  const ours = listed.output.split('\n').filter((f) => f.includes('node_modules/teable-realtime/'))
  expect(ours.length).toBeGreaterThan(5)
  expect(ours.filter((f) => !f.endsWith('.d.ts'))).toEqual([])
  // Internals are not part of the published types (stripInternal).
  const clientTypes = await Bun.file(join(installed, 'dist/types/client/client.d.ts')).text()
  expect(clientTypes).toContain('subscribe(')
  expect(clientTypes).not.toContain('forget(')
  expect(clientTypes).not.toContain('documentChannel(')
  // And Node (no Bun) runs the client from its package name.
  const node = Bun.which('node')
  if (node) {
    const imported = run(
      [
        node,
        '-e',
        "import('teable-realtime/client').then((m) => console.log(typeof m.RealtimeClient))",
      ],
      app,
    )
    expect(imported.output.trim()).toBe('function')
  }
}, 120_000)
