import { isAbsolute, join } from 'node:path'
import { openapi } from '@elysiajs/openapi'
import { Elysia } from 'elysia'
// Embedded as files, read when asked for: imported as text, the 1.7 MB
// bundle alone cost ~34 MiB of resident memory for the server's whole life.
import swaggerCss from 'swagger-ui-dist/swagger-ui.css' with { type: 'file' }
import swaggerBundle from 'swagger-ui-dist/swagger-ui-bundle.js' with { type: 'file' }

const ASSETS = '/swagger/assets'

/**
 * OpenAPI spec at /swagger/json and Swagger UI at /swagger. The UI's script
 * and stylesheet are embedded in the program and served from here, so the
 * page works with no internet (the plugin would load them from a CDN).
 */
export function openapiRoutes(version: string) {
  // Absolute from the source and inside the binary; relative to the bundle `bun run start` runs.
  const asset = (path: string, type: string) => () =>
    new Response(Bun.file(isAbsolute(path) ? path : join(import.meta.dir, path)), {
      headers: { 'content-type': type, 'cache-control': 'public, max-age=86400' },
    })
  return new Elysia({ name: 'openapi' })
    .get(`${ASSETS}/swagger-ui-bundle.js`, asset(swaggerBundle, 'text/javascript; charset=utf-8'), {
      detail: { hide: true },
    })
    .get(`${ASSETS}/swagger-ui.css`, asset(swaggerCss, 'text/css; charset=utf-8'), {
      detail: { hide: true },
    })
    .use(
      openapi({
        path: '/swagger',
        provider: 'swagger-ui',
        swagger: {
          cdn: `${ASSETS}/swagger-ui-bundle.js`,
          theme: `${ASSETS}/swagger-ui.css`,
          autoDarkMode: false,
        },
        documentation: {
          info: {
            title: 'teable-realtime server API',
            version,
            description:
              'REST API of the realtime server. The WebSocket protocol (GET /api/ws/socket) is described as an AsyncAPI 3 document at [/asyncapi.json](/asyncapi.json), and in docs/PROTOCOL.md; a live demo built on the client SDK is at [/demo](/demo).',
          },
          tags: [
            { name: 'stats', description: 'Counters' },
            { name: 'broadcast', description: 'Messages to channels and users' },
            {
              name: 'publish',
              description: 'json0 ops on documents, as the table backend commits them',
            },
            { name: 'history', description: 'Stored stream entries' },
            { name: 'presence', description: 'Who is online, where, doing what' },
            { name: 'documents', description: 'Snapshots' },
            {
              name: 'intake',
              description:
                'The intake queue (INTAKE_STREAM): publishes handed over through a Redis stream, and its dead letters (listed only when INTAKE_STREAM is set)',
            },
          ],
        },
      }),
    )
}
