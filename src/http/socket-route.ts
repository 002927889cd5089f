import type { ServerWebSocket, WebSocketHandler } from 'bun'
import { Elysia, status, t } from 'elysia'
import { parseQueryFromURL } from 'elysia/parse-query'
import { websocket as elysiaSocket } from 'elysia/ws'
import type { Gate, Refusal } from '../auth/gate.ts'
import type { Identity } from '../auth/tokens.ts'
import type { ClientHandler } from '../hub/client.ts'
import { Connection } from '../hub/connection.ts'

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
 * What admission learned, from the upgrade request to the socket's open.
 * Module-wide (Requests are unique) so the route and the Bun-level handlers
 * of socketFrames share it without more wiring.
 */
const admitted = new WeakMap<Request, Admitted>()

/** What the socket's open needs, as the upgrade's `data` (instead of Elysia's whole context). */
class Upgraded {
  constructor(
    readonly admission: Admitted,
    readonly sessionId: string | undefined,
    readonly userAgent: string | null,
  ) {}
}

type AdmissionResult = { ok: false; refusal: Refusal } | (Admitted & { ok: true })

const PATH = '/api/ws/socket'

/** The path of a request URL without building a URL object. */
function pathOf(url: string): { path: string; query: number } {
  const start = url.indexOf('/', url.indexOf('//') + 2)
  const query = url.indexOf('?', start)
  return { path: url.slice(start, query === -1 ? undefined : query), query }
}

/** The fields of Elysia's upgrade data (its whole request context) that open reads. */
interface UpgradeData {
  request?: Request
  query?: { session_id?: string }
}

/**
 * `GET /api/ws/socket`: admission (token, limits) before the upgrade, so a
 * refusal is an HTTP error with a JSON body; then the connection's open,
 * pong and close, handed to the ClientHandler. Its frames arrive through
 * socketFrames.
 */
export function socketRoute(client: ClientHandler, gate: Gate) {
  const admissions = new WeakMap<Request, Promise<AdmissionResult>>()
  const admit = (
    request: Request,
    query: { user_id?: string; session_id?: string; token?: string },
    peer: string | undefined,
  ): Promise<AdmissionResult> => {
    const address = gate.clientAddress(request, peer)
    return gate.admitSocket(request, query, address).then((result) => {
      if (result.ok)
        return { ok: true as const, userId: result.userId, identity: result.identity, address }
      client.refused(result.refusal.status, result.refusal.message, address)
      return result
    })
  }
  const refusal = ({ status: code, message, field }: Refusal) =>
    status(code, { error: field ? { code, message, details: { field } } : { code, message } })
  return (
    new Elysia({ name: 'socket-route' })
      // The upgrade itself, ahead of Elysia's router: its .ws() route builds a
      // request context, parses cookies, copies the context into the socket's
      // data with eight closures and runs beforeHandle twice, ~100 µs and
      // ~4 KB of garbage per connect. Same query parsing (Elysia's own), same
      // admission, same refusals; anything else (no Upgrade header, another
      // method) goes on to the route below as before. Hooks added earlier
      // (the 503 while shutting down) still run first.
      .onRequest(({ request, server }) => {
        if (request.method !== 'GET' || !server) return
        const { path, query } = pathOf(request.url)
        if (path !== PATH || request.headers.get('upgrade')?.toLowerCase() !== 'websocket') return
        const params = (query === -1 ? {} : parseQueryFromURL(request.url, query + 1)) as {
          user_id?: string
          session_id?: string
          token?: string
        }
        return admit(request, params, server.requestIP(request)?.address).then(
          (result) => {
            if (!result.ok) return refusal(result.refusal)
            const { ok: _, ...admission } = result
            const data = new Upgraded(
              admission,
              params.session_id,
              request.headers.get('user-agent'),
            )
            // Bun ignores the response of an upgraded request; Elysia needs one to stop here.
            if (server.upgrade(request, { data })) return new Response(null)
            return status(400, {
              error: { code: 400, message: 'not a WebSocket upgrade (Sec-WebSocket-Key missing?)' },
            })
          },
          (error: unknown) => {
            client.failed(error, 'socket admission failed')
            return status(500, { error: { code: 500, message: 'internal error' } })
          },
        )
      })
      .ws(PATH, {
        query: SocketQuery,
        detail: { hide: true },
        async beforeHandle({ query, request, server }) {
          // Elysia calls a ws route's beforeHandle twice (as a hook, then again
          // inside its upgrade handler): admit once per request.
          let admission = admissions.get(request)
          if (!admission) {
            admission = admit(request, query, server?.requestIP(request)?.address)
            admissions.set(request, admission)
          }
          const result = await admission
          if (result.ok) {
            admitted.set(request, result)
            return
          }
          return refusal(result.refusal)
        },
        // An admitted socket is opened by socketFrames' Bun-level open, before
        // Elysia's: one reaching this had no admission.
        open(ws) {
          ws.close(1011, 'not admitted')
        },
      })
  )
}

/** A socket of ours: the hub keeps its Connection in `data` (Elysia's context is dropped). */
const ours = (ws: ServerWebSocket<unknown>) => ws.data instanceof Connection
/**
 * A socket Elysia's handlers can take: they read its context from `data`, so
 * not one of ours whose open failed before it registered (it has none).
 */
const elysias = (ws: ServerWebSocket<unknown>) => !ours(ws) && ws.data !== undefined

/**
 * The socket's events go straight from Bun to the ClientHandler, in front of
 * Elysia's handlers. At open, the socket's `data` (the small Upgraded record,
 * or on the fallback route Elysia's whole request context, ~4 KB) is
 * replaced by the socket's Connection (hub.register). Sockets of any other
 * `.ws()` route (none today) keep Elysia's path.
 *
 * Frames bypass Elysia's message path for two reasons: Bun cuts a frame over its maxPayloadLength
 * with no close frame at all, while the contract wants close code 1009 (so
 * Bun's limit is set higher, see transportFrameLimit, and the size is checked
 * here before anything parses the frame); and the protocol does its own JSON
 * decoding and validation (protocol/validate.ts), so Elysia's per-message
 * wrapper, JSON guessing and async hop would be work done twice on the
 * hottest path.
 */
export function socketFrames(
  client: ClientHandler,
  maxMessageSize: number,
): Pick<WebSocketHandler<unknown>, 'open' | 'message' | 'drain' | 'pong' | 'ping' | 'close'> {
  /** Registers the admitted socket; one that cannot be registered is closed, not left unknown. */
  const opened = (
    ws: ServerWebSocket<unknown>,
    admission: Admitted,
    sessionId: string | undefined,
    userAgent: string | null,
  ) => {
    try {
      client.open(
        ws,
        {
          userId: admission.userId,
          sessionId: sessionId?.trim() || undefined,
          userAgent,
          remoteAddress: admission.address,
        },
        admission.identity,
      )
    } catch (error) {
      client.failed(error, 'socket open failed')
      ws.close(1011, 'internal error')
    }
  }
  return {
    open(ws: ServerWebSocket<unknown>) {
      if (ws.data instanceof Upgraded) {
        const { admission, sessionId, userAgent } = ws.data
        ws.data = undefined
        opened(ws, admission, sessionId, userAgent)
        return
      }
      const data = ws.data as UpgradeData | undefined
      const admission = data?.request && admitted.get(data.request)
      if (!data?.request || !admission) return elysiaSocket.open?.(ws)
      admitted.delete(data.request)
      // Drops Elysia's context; the hub puts the Connection here.
      ws.data = undefined
      opened(ws, admission, data.query?.session_id, data.request.headers.get('user-agent'))
    },
    pong(ws: ServerWebSocket<unknown>, payload: Buffer) {
      if (ours(ws)) client.alive(ws)
      else if (elysias(ws)) elysiaSocket.pong?.(ws, payload)
    },
    ping(ws: ServerWebSocket<unknown>, payload: Buffer) {
      if (elysias(ws)) elysiaSocket.ping?.(ws, payload)
    },
    close(ws: ServerWebSocket<unknown>, code: number, reason: string) {
      if (ours(ws)) client.close(ws, code)
      else if (elysias(ws)) elysiaSocket.close?.(ws, code, reason)
    },
    // A history replay waits for the socket to take what is buffered.
    drain(ws: ServerWebSocket<unknown>) {
      if (ours(ws)) client.drain(ws)
      else if (elysias(ws)) elysiaSocket.drain?.(ws)
    },
    message(ws: ServerWebSocket<unknown>, frame: string | Buffer) {
      if (!ours(ws)) {
        if (elysias(ws)) elysiaSocket.message?.(ws, frame)
        return
      }
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
