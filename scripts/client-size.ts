/**
 * `bun run size`: the browser bundle of teable-realtime/client, minified
 * and gzipped, with everything it imports (ot-json0 included). Fails above
 * the 20 KB target.
 */

import { join } from 'node:path'
import { gzipSync } from 'node:zlib'

export const TARGET_BYTES = 20 * 1024

/** The minified bundle of the client entry, and its gzipped size in bytes. */
export async function measureClient(): Promise<{ minified: number; gzipped: number }> {
  const result = await Bun.build({
    entrypoints: [join(import.meta.dir, '..', 'src', 'client', 'index.ts')],
    target: 'browser',
    format: 'esm',
    minify: true,
  })
  if (!result.success) throw new AggregateError(result.logs, 'bun build of the client failed')
  const code = Buffer.from(await (result.outputs[0] as Blob).arrayBuffer())
  return { minified: code.length, gzipped: gzipSync(code, { level: 9 }).length }
}

if (import.meta.main) {
  const { minified, gzipped } = await measureClient()
  const kb = (bytes: number) => `${(bytes / 1024).toFixed(1)} KB`
  console.log(
    `teable-realtime/client: ${kb(minified)} minified, ${kb(gzipped)} gzipped (target ${kb(TARGET_BYTES)})`,
  )
  if (gzipped > TARGET_BYTES) process.exit(1)
}
