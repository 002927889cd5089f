/**
 * The baseline: a bare Bun.serve pub/sub with the same publish surface as
 * ours (POST a JSON body, it is published to every subscriber). No protocol,
 * no storage, no validation: what Bun itself can do.
 */
const pubsubServer = Bun.serve({
  port: Number(process.env.PORT ?? 0),
  hostname: process.env.HOST ?? '127.0.0.1',
  async fetch(request, srv) {
    const url = new URL(request.url)
    if (url.pathname === '/publish') {
      const body = await request.text()
      const delivered = srv.subscriberCount('bench')
      srv.publish('bench', body)
      return Response.json({ delivered })
    }
    if (srv.upgrade(request)) return undefined
    return new Response('not found', { status: 404 })
  },
  websocket: {
    open(ws) {
      ws.subscribe('bench')
      ws.send('{"type":"subscribed"}')
    },
    message() {},
    perMessageDeflate: false,
    idleTimeout: 0,
  },
})
console.log(JSON.stringify({ msg: 'listening', port: pubsubServer.port }))
