/**
 * A minimal WebSocket client for load generation: raw TCP (Bun.connect),
 * the upgrade handshake, masked text frames out, and incoming frames counted
 * by walking their headers, so one JS callback handles a whole TCP read
 * rather than one per message. The load client then costs far less than
 * the server it measures.
 */
import type { Socket } from 'bun'

export interface Counter {
  frames: number
  bytes: number
  /** Called after each read that counted frames (frameWaiter sets it). */
  onFrames?: () => void
}

/**
 * Waits until `counter.frames` reaches a number, woken by the reads that
 * count frames. A publisher waiting for its window then costs no CPU: a
 * `setImmediate` spin took a share of the two cores from the server being
 * measured, more of it the slower that server was.
 */
export function frameWaiter(counter: Counter) {
  const waiting: Array<{ frames: number; resolve: () => void }> = []
  counter.onFrames = () => {
    for (let i = waiting.length - 1; i >= 0; i--) {
      const waiter = waiting[i] as (typeof waiting)[number]
      if (counter.frames < waiter.frames) continue
      waiting.splice(i, 1)
      waiter.resolve()
    }
  }
  return {
    until(frames: number): Promise<void> {
      if (counter.frames >= frames) return Promise.resolve()
      return new Promise((resolve) => waiting.push({ frames, resolve }))
    },
    /** Wakes every waiter (the run is over). */
    releaseAll(): void {
      for (const waiter of waiting.splice(0)) waiter.resolve()
    },
  }
}

interface State {
  upgraded: boolean
  head: string
  pending: Buffer
  onText: TextHandler | undefined
  resolveOpen: () => void
  rejectOpen: (error: Error) => void
}

const KEY = 'dGhlIHNhbXBsZSBub25jZQ=='

/** Sees text frames while it returns true; after that frames are only counted. */
export type TextHandler = (text: string, socket: Socket<State>) => boolean

export function maskedText(text: string): Buffer {
  const payload = Buffer.from(text)
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78])
  const header =
    payload.length < 126
      ? Buffer.from([0x81, 0x80 | payload.length])
      : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff])
  const body = Buffer.alloc(payload.length)
  for (let i = 0; i < payload.length; i++)
    body[i] = (payload[i] as number) ^ (mask[i % 4] as number)
  return Buffer.concat([header, mask, body])
}

/** Connects and upgrades; every frame is counted into `counter`. */
export async function openCounted(
  host: string,
  port: number,
  path: string,
  counter: Counter,
  onText?: TextHandler,
): Promise<Socket<State>> {
  let resolveOpen: () => void = () => {}
  let rejectOpen: (error: Error) => void = () => {}
  const opened = new Promise<void>((resolve, reject) => {
    resolveOpen = resolve
    rejectOpen = reject
  })
  const state: State = {
    upgraded: false,
    head: '',
    pending: Buffer.alloc(0),
    onText,
    resolveOpen,
    rejectOpen,
  }
  const socket = await Bun.connect<State>({
    hostname: host,
    port,
    data: state,
    socket: {
      data(sock, chunk) {
        const s = sock.data
        let buf = chunk
        if (!s.upgraded) {
          s.head += chunk.toString('latin1')
          const end = s.head.indexOf('\r\n\r\n')
          if (end === -1) return
          if (!s.head.startsWith('HTTP/1.1 101')) {
            // A refused upgrade (429...) rejects the open; the caller may retry.
            s.rejectOpen(new Error(`upgrade refused: ${s.head.split('\r\n')[0]}`))
            sock.end()
            return
          }
          s.upgraded = true
          buf = Buffer.from(s.head.slice(end + 4), 'latin1')
          s.resolveOpen()
        }
        counter.bytes += buf.length
        buf = s.pending.length ? Buffer.concat([s.pending, buf]) : buf
        let at = 0
        while (at + 2 <= buf.length) {
          let length = (buf[at + 1] as number) & 0x7f
          let start = at + 2
          if (length === 126) {
            if (at + 4 > buf.length) break
            length = buf.readUInt16BE(at + 2)
            start = at + 4
          } else if (length === 127) {
            if (at + 10 > buf.length) break
            length = Number(buf.readBigUInt64BE(at + 2))
            start = at + 10
          }
          if (start + length > buf.length) break
          counter.frames++
          if (s.onText && ((buf[at] as number) & 0x0f) === 1)
            if (!s.onText(buf.toString('utf8', start, start + length), sock)) s.onText = undefined
          at = start + length
        }
        s.pending = at < buf.length ? Buffer.from(buf.subarray(at)) : Buffer.alloc(0)
        counter.onFrames?.()
      },
    },
  })
  socket.write(
    `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\n\r\n`,
  )
  await opened
  return socket
}

/**
 * Opens a counted socket subscribed to `collection` (ours: `subscribe` after
 * `connected`; the bare server subscribes at open and says `subscribed`).
 * With `connectOnly`, resolves at the first frame instead (connection setup).
 */
export async function openSubscribed(
  host: string,
  port: number,
  path: string,
  counter: Counter,
  collection: string,
  connectOnly = false,
): Promise<Socket<State>> {
  let ready: () => void = () => {}
  const subscribed = new Promise<void>((resolve) => {
    ready = resolve
  })
  const socket = await openCounted(host, port, path, counter, (text, sock) => {
    const type = (JSON.parse(text) as { type: string }).type
    if (!connectOnly && type === 'connected')
      sock.write(maskedText(JSON.stringify({ type: 'subscribe', id: 1, collection })))
    if (!connectOnly && type !== 'subscribe' && type !== 'subscribed') return true
    ready()
    return false
  })
  await subscribed
  return socket
}
