import { createConnection, createServer, type Server, type Socket } from 'node:net'

/**
 * A TCP relay on a port of its own in front of `target` (PostgreSQL): a
 * test points a server at it and makes the target unreachable by taking
 * the relay down, without touching the machine's service.
 */
export interface Relay {
  readonly port: number
  /** Drops every relayed connection and stops listening: connecting is refused until `up()`. */
  down(): Promise<void>
  /** Listens again, on the same port. */
  up(): Promise<void>
  /** down(), for good. */
  close(): Promise<void>
}

export async function startRelay(target: { host: string; port: number }): Promise<Relay> {
  const sockets = new Set<Socket>()
  const track = (socket: Socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    // A reset is the point of down(); the other side is destroyed with it.
    socket.on('error', () => {})
  }

  const listen = (port: number) =>
    new Promise<Server>((resolve, reject) => {
      const server = createServer((client) => {
        const upstream = createConnection(target.port, target.host)
        track(client)
        track(upstream)
        // One side gone takes the other with it, as a dead peer would.
        client.on('close', () => upstream.destroy())
        upstream.on('close', () => client.destroy())
        // pipe() holds a side back while the other's buffer is full.
        client.pipe(upstream)
        upstream.pipe(client)
      })
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => resolve(server))
    })

  let server: Server | undefined = await listen(0)
  const address = server.address()
  if (typeof address !== 'object' || address === null) throw new Error('relay: no port bound')
  const port = address.port

  const down = async () => {
    const listening = server
    server = undefined
    if (!listening) return
    const closed = new Promise<void>((resolve) => listening.close(() => resolve()))
    for (const socket of sockets) socket.destroy()
    await closed
  }

  return {
    port,
    down,
    async up() {
      if (server) return
      server = await listen(port)
    },
    close: down,
  }
}
