import type { ServerWebSocket, WebSocketHandler } from 'bun'
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

/**
 * `GET /api/ws/socket`: the upgrade and the connection's open, pong and close,
 * handed to the ClientHandler. Its frames arrive through socketFrames.
 */
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
      const { query, headers } = ws.data
      client.open(ws.raw, {
        userId: (query.user_id ?? '').trim(),
        sessionId: query.session_id?.trim() || crypto.randomUUID(),
        userAgent: headers['user-agent'] ?? null,
        remoteAddress: ws.raw.remoteAddress || null,
      })
    },
    pong(ws) {
      client.alive(ws)
    },
    close(ws, code) {
      client.close(ws.raw, code)
    },
  })
}

/**
 * Frames go straight from Bun to the ClientHandler, in front of Elysia's own
 * message path, for two reasons: Bun cuts a frame over its maxPayloadLength
 * with no close frame at all, while the contract wants close code 1009 (so
 * Bun's limit is set higher, see transportFrameLimit, and the size is checked
 * here before anything parses the frame); and the protocol does its own JSON
 * decoding and validation (protocol/validate.ts), so Elysia's per-message
 * wrapper, JSON guessing and async hop would be work done twice on the
 * hottest path. Elysia keeps the upgrade, open, pong and close.
 */
export function socketFrames(
  client: ClientHandler,
  maxMessageSize: number,
): Pick<WebSocketHandler<unknown>, 'message'> {
  return {
    message(ws: ServerWebSocket<unknown>, frame: string | Buffer) {
      // A UTF-16 length of at most a third of the limit cannot exceed it in UTF-8.
      const size =
        typeof frame === 'string'
          ? frame.length * 3 <= maxMessageSize
            ? 0
            : Buffer.byteLength(frame)
          : frame.byteLength
      if (size > maxMessageSize) client.tooBig(ws, size)
      else client.message(ws, frame)
    },
  }
}

/** Bun's own frame limit: frames past it are dropped with the TCP connection. */
export function transportFrameLimit(maxMessageSize: number): number {
  return Math.min(Math.max(maxMessageSize * 4, 1024 * 1024), 64 * 1024 * 1024)
}
