import { Elysia, status, t } from 'elysia'
import type { Gate } from '../auth/gate.ts'
import type { ClientHandler } from '../hub/client.ts'

/**
 * `GET /api/ws/socket/check`: what an upgrade with this query would get,
 * as JSON (`{ok, user_id}` or the refusal `{error}` with its status). A
 * browser's WebSocket hides the HTTP status of a refused upgrade, so the
 * client asks here after a failed attempt, to stop retrying when retrying
 * is pointless (400, 401, 403). It runs the same admission and counts as
 * an attempt for `CONNECT_RATE_PER_IP` (otherwise it would verify tokens
 * without any limit); a failed upgrade and its check cost two. Refusals are
 * logged as the upgrade's are; while the server shuts down it answers 503,
 * as the upgrade does (the gate refuses both). Readable cross-origin: it says nothing the upgrade
 * would not.
 */
export function socketCheckRoute(gate: Gate, client: Pick<ClientHandler, 'refused'>) {
  return new Elysia({ name: 'socket-check' }).get(
    '/api/ws/socket/check',
    async ({ query, request, server, set }) => {
      set.headers['access-control-allow-origin'] = '*'
      const address = gate.clientAddress(request, server?.requestIP(request)?.address)
      const result = await gate.admitSocket(request, query, address)
      if (result.ok) return { ok: true, user_id: result.userId }
      const { status: code, message, field } = result.refusal
      client.refused(code, message, address)
      return status(code, {
        error: field ? { code, message, details: { field } } : { code, message },
      })
    },
    {
      query: t.Object({
        user_id: t.Optional(t.String()),
        session_id: t.Optional(t.String()),
        token: t.Optional(t.String()),
      }),
      detail: { hide: true },
    },
  )
}
