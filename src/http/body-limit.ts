import { Elysia, status } from 'elysia'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'

const tooLarge = (limit: number, size?: number) =>
  new ProtocolError(
    ErrorCode.TooLarge,
    `the request body is ${size === undefined ? 'over' : `${size} bytes;`} the limit is ${limit} bytes`,
    size === undefined ? { limit } : { limit, size },
  )

/** Reads a body of unknown length, refusing it (413) as soon as it passes `limit`. */
async function readCapped(body: ReadableStream<Uint8Array>, limit: number): Promise<string> {
  const reader = body.getReader()
  const chunks: Uint8Array[] = []
  let total = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    total += value.byteLength
    if (total > limit) {
      await reader.cancel()
      throw tooLarge(limit)
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * The request-size limit (`Config.maxRequestSize`) for every HTTP body, answered with the JSON error body of
 * the other refusals. Bun's own `maxRequestBodySize` answers a bare 413 and
 * is not applied at all to a chunked body (Bun 1.3.14), so: a declared
 * Content-Length past the limit is refused before the body is read, and a
 * body without one is read here, counting, up to the limit, and parsed with
 * `parseJson` (the parse hook after this one reads bodies of declared length).
 * Use it before any other parse hook.
 */
export function bodyLimit(limit: number, parseJson: (text: string) => unknown) {
  return new Elysia({ name: 'body-limit' })
    .onRequest(({ request }) => {
      const declared = request.headers.get('content-length')
      if (declared !== null && Number(declared) > limit)
        return status(413, { error: tooLarge(limit, Number(declared)).toBody() })
    })
    .onParse({ as: 'global' }, async ({ request, contentType }) => {
      // Declared lengths were checked by onRequest: the next parse hook reads those.
      if (request.body === null || request.headers.has('content-length')) return
      const text = await readCapped(request.body, limit)
      return contentType === 'application/json' ? parseJson(text) : text
    })
}
