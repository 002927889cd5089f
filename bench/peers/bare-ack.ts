/**
 * The baseline for bench:submit: a bare Bun.serve that parses each JSON
 * submit and acks it with a JSON reply of the same shape as ours. No
 * validation, no versions, no storage, no fan-out.
 */
let offset = 0
const ackServer = Bun.serve({
  port: Number(process.env.PORT ?? 0),
  hostname: process.env.HOST ?? '127.0.0.1',
  fetch(request, srv) {
    if (srv.upgrade(request)) return undefined
    return new Response('not found', { status: 404 })
  },
  websocket: {
    open(ws) {
      ws.send(JSON.stringify({ type: 'connected', data: {}, timestamp: new Date().toISOString() }))
    },
    message(ws, raw) {
      const message = JSON.parse(String(raw)) as { id: unknown; v?: number }
      offset++
      ws.send(
        JSON.stringify({
          type: 'submit',
          id: message.id,
          data: { v: message.v ?? 0, offset },
          timestamp: new Date().toISOString(),
        }),
      )
    },
    perMessageDeflate: false,
    idleTimeout: 0,
  },
})
console.log(JSON.stringify({ msg: 'listening', port: ackServer.port }))
