import { Elysia, status, t } from 'elysia'
import type { ClientHandler } from '../hub/client.ts'

const SocketQuery = t.Object({
  user_id: t.Optional(t.String()),
  session_id: t.Optional(t.String()),
})

const MAX_ID_LENGTH = 256

function refuse(code: 400, message: string, field: string) {
  return status(code, { error: { code, message, details: { field } } })
}

/** `GET /api/ws/socket`: the upgrade and the socket events, handed to the ClientHandler. */
export function socketRoute(client: ClientHandler) {
  return new Elysia({ name: 'socket-route' }).ws('/api/ws/socket', {
    query: SocketQuery,
    detail: { hide: true },
    beforeHandle({ query }) {
      const userId = query.user_id?.trim()
      if (!userId) return refuse(400, 'user_id is required', 'user_id')
      if (userId.length > MAX_ID_LENGTH) return refuse(400, 'user_id is too long', 'user_id')
      if ((query.session_id?.length ?? 0) > MAX_ID_LENGTH)
        return refuse(400, 'session_id is too long', 'session_id')
    },
    open(ws) {
      const { query } = ws.data
      const userId = (query.user_id ?? '').trim()
      const sessionId = query.session_id?.trim() || crypto.randomUUID()
      client.open(ws.raw, userId, sessionId)
    },
    message(ws, frame) {
      client.message(ws.raw, frame)
    },
    pong(ws) {
      client.alive(ws)
    },
    close(ws, code) {
      client.close(ws.raw, code)
    },
  })
}
