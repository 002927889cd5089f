/**
 * Builds what the package's `exports` point at (bun pm pack runs it as
 * prepack): declarations for the `types` condition, so that a consumer's
 * tsc reads `.d.ts` files and never type-checks the server's sources, and
 * ES modules for runtimes other than Bun (which takes the sources).
 */
import { readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'

const root = join(import.meta.dir, '..')
const types = join(root, 'dist', 'types')
rmSync(types, { recursive: true, force: true })

const tsc = Bun.spawnSync([process.execPath, 'x', 'tsc', '-p', 'tsconfig.types.json'], {
  cwd: root,
  stdout: 'inherit',
  stderr: 'inherit',
})
if (tsc.exitCode !== 0) process.exit(tsc.exitCode ?? 1)

// Our sources import with `.ts` extensions; declarations are read as `.js` by every resolver.
const specifier = /((?:from |import\()['"])(\.{1,2}\/[^'"]+)\.ts(['"])/g
const files = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? files(join(dir, entry.name)) : [join(dir, entry.name)],
  )
for (const file of files(types))
  writeFileSync(file, readFileSync(file, 'utf8').replace(specifier, '$1$2.js$3'))

// Ship only the declarations the two entry points reach: none of the server's modules.
const reached = new Set<string>()
const visit = (file: string) => {
  if (reached.has(file)) return
  reached.add(file)
  for (const match of readFileSync(file, 'utf8').matchAll(
    /(?:from |import\()['"](\.{1,2}\/[^'"]+)\.js['"]/g,
  ))
    visit(resolve(dirname(file), `${match[1]}.d.ts`))
}
visit(join(types, 'index.d.ts'))
visit(join(types, 'client', 'index.d.ts'))
for (const file of files(types)) if (!reached.has(file)) unlinkSync(file)
for (const file of reached)
  if (/from ['"](bun|bun:sqlite|drizzle-orm|pino)/.test(readFileSync(file, 'utf8')))
    throw new Error(`${relative(root, file)} imports server-only types`)

for (const [entry, out] of [
  ['src/index.ts', 'index.js'],
  ['src/client/index.ts', 'client.js'],
] as const) {
  const result = await Bun.build({
    entrypoints: [join(root, entry)],
    target: 'browser',
    format: 'esm',
  })
  if (!result.success) throw new AggregateError(result.logs, `bun build ${entry} failed`)
  writeFileSync(join(root, 'dist', out), await (result.outputs[0] as Blob).text())
}
console.log(`built dist/types (${reached.size} declaration files), dist/index.js, dist/client.js`)
