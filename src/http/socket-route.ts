import type { ServerWebSocket, WebSocketHandler } from 'bun'
import { Elysia, status, t } from 'elysia'
import type { Gate, Refusal } from '../auth/gate.ts'
import type { Identity } from '../auth/tokens.ts'
import type { ClientHandler } from '../hub/client.ts'
import type { Socket } from '../hub/connection.ts'

const SocketQuery = t.Object({
  user_id: t.Optional(t.String()),
  session_id: t.Optional(t.String()),
  token: t.Optional(t.String()),
})

interface Admitted {
  userId: string
  identity: Identity | undefined
  address: string
}

/**
 * `GET /api/ws/socket`: admission (token, limits) before the upgrade, so a
 * refusal is an HTTP error with a JSON body; then the connection's open,
 * pong and close, handed to the ClientHandler. Its frames arrive through
 * socketFrames.
 */
export function socketRoute(client: ClientHandler, gate: Gate) {
  const admissions = new WeakMap<
    Request,
    Promise<{ ok: false; refusal: Refusal } | (Admitted & { ok: true })>
  >()
  // What admission learned, from the upgrade request to the socket's open.
  const admitted = new WeakMap<Request, Admitted>()
  return new Elysia({ name: 'socket-route' }).ws('/api/ws/socket', {
    query: SocketQuery,
    detail: { hide: true },
    async beforeHandle({ query, request, server }) {
      // Elysia calls a ws route's beforeHandle twice (as a hook, then again
      // inside its upgrade handler): admit once per request.
      let admission = admissions.get(request)
      if (!admission) {
        const address = gate.clientAddress(request, server?.requestIP(request)?.address)
        admission = gate.admitSocket(request, query, address).then((result) => {
          if (result.ok)
            return { ok: true as const, userId: result.userId, identity: result.identity, address }
          client.refused(result.refusal.status, result.refusal.message, address)
          return result
        })
        admissions.set(request, admission)
      }
      const result = await admission
      if (result.ok) {
        admitted.set(request, result)
        return
      }
      const { status: code, message, field } = result.refusal
      return status(code, {
        error: field ? { code, message, details: { field } } : { code, message },
      })
    },
    open(ws) {
      const { query, headers, request } = ws.data
      const admission = admitted.get(request)
      admitted.delete(request)
      const socket = ws.raw
      if (!admission || !isBunSocket(socket)) return ws.close(1011, 'not admitted')
      client.open(
        socket,
        {
          userId: admission.userId,
          sessionId: query.session_id?.trim() || crypto.randomUUID(),
          userAgent: headers['user-agent'] ?? null,
          remoteAddress: admission.address,
        },
        admission.identity,
      )
    },
    pong(ws) {
      client.alive(ws)
    },
    close(ws, code) {
      client.close(ws.raw, code)
    },
  })
}

/** Elysia re-declares Bun's socket type without getBufferedAmount; the object is Bun's. */
function isBunSocket(raw: Omit<Socket, 'getBufferedAmount'>): raw is Socket {
  return 'getBufferedAmount' in raw
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
): Pick<WebSocketHandler<unknown>, 'message' | 'drain'> {
  return {
    // A history replay waits for the socket to take what is buffered.
    drain(ws: ServerWebSocket<unknown>) {
      client.drain(ws)
    },
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
