import { Elysia } from 'elysia'
import { demoScript } from '../demo/bundle.ts' with { type: 'macro' }
import { demoPage } from './demo-page.ts'

/** Bundled when this module is compiled (a macro): the program carries it, offline. */
const script = demoScript()

/** `GET /demo`: a live collaborative grid on the client SDK (public, like /swagger). */
export function demoRoutes() {
  const hidden = { detail: { hide: true } }
  return new Elysia({ name: 'demo' })
    .get(
      '/demo',
      () => new Response(demoPage, { headers: { 'content-type': 'text/html; charset=utf-8' } }),
      hidden,
    )
    .get(
      '/demo/grid.js',
      () =>
        new Response(script, {
          headers: {
            'content-type': 'text/javascript; charset=utf-8',
            'cache-control': 'no-cache',
          },
        }),
      hidden,
    )
}
