import { channelName } from '../protocol/channels.ts'
import type { CloseReason } from '../protocol/close.ts'
import type { ErrorBody } from '../protocol/errors.ts'
import type { ClientMessageType, MessageOf } from '../protocol/messages.ts'
import type {
  CollectionQueryResult,
  ConnectedData,
  DocumentSnapshot,
  ReplyData,
  ServerMessage,
} from '../protocol/server-messages.ts'
import { Backoff, type BackoffOptions } from './backoff.ts'
import { Doc } from './doc.ts'
import { Emitter } from './emitter.ts'
import { ConnectionError, RealtimeError, RequestError, TimeoutError } from './errors.ts'
import type { ChannelPresence } from './presence.ts'
import { type CollectionPosition, Subscription } from './subscription.ts'

/** A token, or a function that gives a fresh one (called on every connect and before expiry). */
export type TokenSource = string | (() => string | Promise<string>)

export interface ClientOptions {
  /** The server: `ws(s)://host:port` or `http(s)://…`; `/api/ws/socket` is added when absent. */
  url: string
  /** Open mode: who this is (auth mode: the token's `sub`). */
  userId?: string
  /** Kept across reconnects (default: made once per client). */
  sessionId?: string
  /** Auth mode: the connection token. */
  token?: TokenSource
  /** A name for this client, shown in the server's session list. */
  clientName?: string
  /** ms before a request without a reply fails with TimeoutError (default 10,000). */
  requestTimeout?: number
  /**
   * ms a connection attempt may take, from opening the socket to the
   * server's `connected` (default 10,000): a handshake that never completes
   * (a black-holed route, a balancer accepting for a dead backend) is
   * dropped and retried. The admission check after a failed attempt gets
   * half of it.
   */
  connectTimeout?: number
  reconnect?: BackoffOptions
  /** Frames larger than this (UTF-8 bytes) are refused here, as the server would (default 64 KiB). */
  maxMessageSize?: number
  /** Connect at once (default true). */
  autoConnect?: boolean
  /** Another WebSocket implementation (e.g. `ws` on Node < 22). */
  WebSocket?: typeof WebSocket
}

/**
 * `connecting`: opening a socket; `connected`: open (subscriptions are
 * being resumed until `resynced`); `reconnecting`: waiting to try again;
 * `offline`: the browser says there is no network; `disconnected`:
 * `disconnect()` was called; `closed`: for good (`close()`, or the server
 * said retrying is pointless).
 */
export type ConnectionState =
  | 'idle'
  | 'connecting'
  | 'connected'
  | 'reconnecting'
  | 'offline'
  | 'disconnected'
  | 'closed'

export interface DisconnectedEvent {
  /** The WebSocket close code (the server's `disconnect` code when it sent one). */
  code: number
  /**
   * The server's `disconnect` reason; or `network` (the connection dropped,
   * or the server could not be reached), `refused` (the server refused the
   * upgrade, e.g. 429 or 503), `connect_timeout` (no `connected` within
   * `connectTimeout`), `heartbeat` (nothing received for 2.5 heartbeat
   * intervals), `offline` (the browser went offline).
   */
  reason: CloseReason | 'network' | 'refused' | 'connect_timeout' | 'heartbeat' | 'offline'
  willReconnect: boolean
  /** ms until the next attempt. */
  delay?: number
}

export interface ClosedEvent {
  /** `client` for close(); else why retrying is pointless. */
  reason: string
  /** The HTTP-like code of a refused connection (400, 401, 403), if that was it. */
  code?: number
  error?: RealtimeError
}

/** A message sent to this user (REST `broadcast/user`): not part of any stream. */
export interface UserMessage {
  message: unknown
  timestamp: string
}

export interface ClientEvents {
  state: { state: ConnectionState; previous: ConnectionState }
  /** The socket is open (each reconnect too); subscriptions are resumed next. */
  connected: ConnectedData
  /** After a (re)connect: every subscription resumed and in-flight changes sent again. */
  resynced: { connection: number }
  disconnected: DisconnectedEvent
  /** For good: see `ClosedEvent.reason`. */
  closed: ClosedEvent
  message: UserMessage
  /** An error not tied to a request of this client's API (a failed token refresh …). */
  error: RealtimeError
  /** The token was refreshed over the open socket; `revoked` channels were left. */
  token: { revoked: string[] }
}

export interface RequestOptions {
  /** ms; 0 for none. Default: `requestTimeout`. */
  timeout?: number
}

type RequestType = Exclude<ClientMessageType, 'disconnect'>
type RequestFields<K extends RequestType> = Omit<MessageOf<K>, 'type' | 'id' | 'timestamp'>

interface PendingRequest {
  type: string
  resolve: (data: unknown) => void
  reject: (error: RealtimeError) => void
  timer: ReturnType<typeof setTimeout> | undefined
}

/** Refusals of the upgrade that retrying cannot fix (see `probe`). */
const FATAL_REFUSALS = new Set([400, 401, 403])

const randomId = () =>
  typeof crypto?.randomUUID === 'function'
    ? crypto.randomUUID()
    : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`

/**
 * The realtime client: one WebSocket that reconnects by itself (exponential
 * backoff with full jitter, browser online/offline aware), requests as
 * promises, subscriptions resumed with `since` after every reconnect,
 * json0 documents (`doc`) and presence per channel.
 */
export class RealtimeClient extends Emitter<ClientEvents> {
  /** This client's id in `src` of its submits: stable across reconnects, so resubmits apply once. */
  readonly src = randomId()
  readonly sessionId: string
  state: ConnectionState = 'idle'
  /** The current connection's `connected` payload (undefined while not connected). */
  connection: ConnectedData | undefined
  /** @internal Counts connections, so a change knows whether it was sent on this one. */
  connectionNumber = 0
  private readonly options: ClientOptions
  private readonly backoff: Backoff
  private socket: WebSocket | undefined
  private readonly requests = new Map<number, PendingRequest>()
  private nextId = 1
  private seq = 0
  private readonly subscriptions = new Map<string, Subscription>()
  private readonly docs = new Map<string, Doc<unknown>>()
  /** This client's recent connection ids: never someone else in presence. */
  private readonly ownConnections: string[] = []
  /**
   * The largest frame sent on this connection (bytes), and a frame limit
   * learnt from a server's `message_too_big`: the frame over the server's
   * limit is the largest one sent, not the last (a ping may follow it).
   */
  private largestFrame = 0
  private learntFrameLimit: number | undefined
  private connectTimer: ReturnType<typeof setTimeout> | undefined
  /** User requests waiting for the connection. */
  private readonly waiting = new Set<() => void>()
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined
  private refreshTimer: ReturnType<typeof setTimeout> | undefined
  private openedAt = 0
  private lastReceived = 0
  /** The server's `disconnect` message, which comes just before its close. */
  private told: { code: number; reason: CloseReason } | undefined
  private lastToken: string | undefined
  private authRetries = 0
  private readonly removeNetworkListeners: () => void

  constructor(options: ClientOptions) {
    super()
    this.options = options
    this.sessionId = options.sessionId ?? randomId()
    this.backoff = new Backoff(options.reconnect)
    this.removeNetworkListeners = this.watchNetwork()
    if (options.autoConnect !== false) this.connect()
  }

  /** Whether `close()` or `disconnect()` stopped it (state can change across an await). */
  private get stopped(): boolean {
    return this.state === 'closed' || this.state === 'disconnected'
  }

  /** Whether the socket is open and the server said `connected`. */
  get isOpen(): boolean {
    return this.connection !== undefined
  }

  /** Connects (again, after `disconnect()`). Reconnects by itself from then on. */
  connect(): void {
    if (this.state === 'closed') throw new ConnectionError('closed', 'the client was closed')
    if (this.socket || this.state === 'connecting') return
    clearTimeout(this.reconnectTimer)
    void this.open()
  }

  /**
   * Closes the socket and stays offline until `connect()`. Subscriptions,
   * documents and their local changes are kept, and resumed then.
   */
  disconnect(): void {
    clearTimeout(this.reconnectTimer)
    this.setState('disconnected')
    this.dropSocket(1000, 'network')
  }

  /** Closes for good: requests and local changes not yet acked are rejected. */
  close(): void {
    this.shutdown({ reason: 'client' })
  }

  /** Sends a request when connected; resolves with its reply's `data`. */
  async request<K extends RequestType>(
    type: K,
    fields: RequestFields<K>,
    options: RequestOptions = {},
  ): Promise<ReplyData[K]> {
    const timeout = options.timeout ?? this.options.requestTimeout ?? 10_000
    const started = Date.now()
    if (!this.isOpen) await this.whenOpen(type, timeout)
    const left = timeout === 0 ? 0 : Math.max(1, timeout - (Date.now() - started))
    return this.call(type, fields, { timeout: left })
  }

  /** A document's snapshot `{v, data}`. */
  snapshot(collection: string, id: string, options?: RequestOptions): Promise<DocumentSnapshot> {
    return this.request('query', { collection, document: id }, options) as Promise<DocumentSnapshot>
  }

  /** A collection's documents and the stream position they match (subscribe `since` it). */
  query(
    collection: string,
    data: { ids?: string[]; limit?: number } = {},
    options?: RequestOptions,
  ): Promise<CollectionQueryResult> {
    return this.request('query', { collection, data }, options) as Promise<CollectionQueryResult>
  }

  /** Round trip time in ms. */
  async ping(options?: RequestOptions): Promise<number> {
    const started = performance.now()
    await this.request('ping', {}, options)
    return performance.now() - started
  }

  /**
   * Follows a channel: a collection, or one document (`document`). The same
   * channel gives the same Subscription, shared: each call takes a
   * reference, and `unsubscribe()` lets go of one; the channel is left when
   * the last holder (a `presence()` call and a subscribed Doc count too)
   * lets go. `since` (a collection's position from `query`) replays what
   * happened after it.
   */
  subscribe(
    collection: string,
    options: { document?: string; since?: CollectionPosition } = {},
  ): Subscription {
    return this.channel(collection, options.document, options.since).retain()
  }

  /**
   * Presence in a channel: subscribes to it (one reference, released by
   * `presence.unsubscribe()`).
   */
  presence(collection: string, document?: string): ChannelPresence {
    return this.subscribe(collection, document === undefined ? {} : { document }).presence
  }

  /**
   * The json0 document `collection/id` (one object per document while it is
   * subscribed); `subscribe()` it to load and follow it. `T` types `data`
   * (not checked: the server holds any JSON).
   */
  doc<T = unknown>(collection: string, id: string): Doc<T> {
    const key = channelName(collection, id)
    let doc = this.docs.get(key)
    if (!doc) {
      doc = new Doc<unknown>(this, collection, id)
      this.docs.set(key, doc)
    }
    return doc as Doc<T>
  }

  /** The channel's Subscription, made (and resumed when connected) if new; no reference taken. */
  private channel(
    collection: string,
    document: string | undefined,
    since?: CollectionPosition,
  ): Subscription {
    const channel = channelName(collection, document)
    const existing = this.subscriptions.get(channel)
    if (existing) return existing
    if (this.state === 'closed')
      throw new ConnectionError('closed', `the client was closed: ${channel} not subscribed`)
    const subscription = new Subscription(this, collection, document, since)
    this.subscriptions.set(channel, subscription)
    if (this.isOpen) void subscription.resume()
    return subscription
  }

  /** @internal The subscription of a document's channel (one reference), driven by the Doc. */
  documentChannel(doc: Doc<unknown>): Subscription {
    const channel = channelName(doc.collection, doc.id)
    let subscription = this.subscriptions.get(channel)
    if (!subscription) {
      if (this.state === 'closed')
        throw new ConnectionError('closed', `the client was closed: ${channel} not subscribed`)
      // Not resumed here: the Doc loads its snapshot first, then resumes it.
      subscription = new Subscription(this, doc.collection, doc.id)
      this.subscriptions.set(channel, subscription)
    }
    subscription.doc = doc
    return subscription.retain()
  }

  /** @internal A subscription ended. */
  forget(subscription: Subscription): void {
    if (this.subscriptions.get(subscription.channel) === subscription)
      this.subscriptions.delete(subscription.channel)
  }

  /**
   * @internal A Doc is followed (again): `doc()` gives it. False when another
   * Doc of the document is the one `doc()` gives now: two would share one
   * channel and diverge.
   */
  adoptDoc(doc: Doc<unknown>): boolean {
    const key = channelName(doc.collection, doc.id)
    const current = this.docs.get(key)
    if (current !== undefined && current !== doc) return false
    this.docs.set(key, doc)
    return true
  }

  /** @internal A Doc is no longer followed: forgotten, so that nothing holds it. */
  forgetDoc(doc: Doc<unknown>): void {
    const key = channelName(doc.collection, doc.id)
    if (this.docs.get(key) === doc) this.docs.delete(key)
  }

  /** @internal Whether a connection id is this client's (the current one or a recent one). */
  isOwnConnection(connectionId: string): boolean {
    return this.ownConnections.includes(connectionId)
  }

  /** @internal The next `seq` of this client's submits. */
  nextSeq(): number {
    return ++this.seq
  }

  /** @internal A pause before a request refused for a passing reason (409, 429, 503) is sent again. */
  retryDelay(attempt: number): number {
    const ceiling = Math.min(10_000, 500 * 2 ** Math.min(attempt, 10))
    return ceiling / 2 + Math.random() * (ceiling / 2)
  }

  /** @internal One of this client's changes was stored at this offset. */
  ownChange(collection: string, offset: number): void {
    this.subscriptions.get(collection)?.noteOwn(offset)
  }

  /** @internal Sends a request on the open connection (fails at once when there is none). */
  call<K extends RequestType>(
    type: K,
    fields: RequestFields<K>,
    options: RequestOptions = {},
  ): Promise<ReplyData[K]> {
    const socket = this.socket
    if (!this.isOpen || !socket)
      return Promise.reject(new ConnectionError('disconnected', `not connected: ${type} not sent`))
    const id = this.nextId++
    const text = JSON.stringify({ type, id, ...fields })
    const max = Math.min(this.options.maxMessageSize ?? 65_536, this.learntFrameLimit ?? Infinity)
    if (text.length > max / 3 && byteLength(text) > max)
      return Promise.reject(
        new RealtimeError(413, `the ${type} frame is over ${max} bytes (MAX_MESSAGE_SIZE)`),
      )
    // A third of the UTF-16 length bounds the bytes from below: most frames skip the count.
    if (text.length * 3 > this.largestFrame)
      this.largestFrame = Math.max(this.largestFrame, byteLength(text))
    const timeout = options.timeout ?? this.options.requestTimeout ?? 10_000
    return new Promise<ReplyData[K]>((resolve, reject) => {
      const timer =
        timeout > 0
          ? setTimeout(() => {
              this.requests.delete(id)
              reject(new TimeoutError(type, timeout))
            }, timeout)
          : undefined
      this.requests.set(id, {
        type,
        resolve: resolve as (data: unknown) => void,
        reject,
        timer,
      })
      socket.send(text)
    })
  }

  private whenOpen(type: string, timeout: number): Promise<void> {
    if (this.state === 'closed')
      return Promise.reject(
        new ConnectionError('closed', `the client was closed: ${type} not sent`),
      )
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer)
        this.waiting.delete(done)
        if (this.isOpen) resolve()
        else reject(new ConnectionError('closed', `the client was closed: ${type} not sent`))
      }
      const timer =
        timeout > 0
          ? setTimeout(() => {
              this.waiting.delete(done)
              reject(new TimeoutError(type, timeout))
            }, timeout)
          : undefined
      this.waiting.add(done)
    })
  }

  private setState(state: ConnectionState): void {
    if (state === this.state) return
    const previous = this.state
    this.state = state
    this.emit('state', { state, previous })
  }

  private async token(): Promise<string | undefined> {
    const source = this.options.token
    return typeof source === 'function' ? await source() : source
  }

  /** The socket URL (or the admission check's, `check`) with this client's query. */
  private url(token: string | undefined, check = false): string {
    const url = new URL(this.options.url)
    url.protocol = url.protocol.replace(/^http/, 'ws')
    if (!url.pathname.endsWith('/api/ws/socket'))
      url.pathname = `${url.pathname.replace(/\/$/, '')}/api/ws/socket`
    if (check) {
      url.protocol = url.protocol.replace(/^ws/, 'http')
      url.pathname += '/check'
    }
    if (this.options.userId !== undefined) url.searchParams.set('user_id', this.options.userId)
    url.searchParams.set('session_id', this.sessionId)
    if (token !== undefined) url.searchParams.set('token', token)
    return url.toString()
  }

  private async open(): Promise<void> {
    this.setState('connecting')
    let token: string | undefined
    try {
      token = await this.token()
    } catch (error) {
      this.emit('error', new RealtimeError(401, `the token function failed: ${String(error)}`))
      this.retry(0, 'refused')
      return
    }
    if (this.state !== 'connecting') return // disconnect() or close() meanwhile
    this.lastToken = token
    const Socket = this.options.WebSocket ?? WebSocket
    const socket = new Socket(this.url(token))
    this.socket = socket
    this.connectTimer = setTimeout(() => {
      if (socket !== this.socket || this.connection) return
      this.detach() // first: close() may report the close at once
      socket.close()
      this.retry(4000, 'connect_timeout')
    }, this.connectTimeout)
    let opened = false
    socket.onopen = () => {
      opened = true
    }
    socket.onmessage = (event) => {
      if (socket === this.socket) this.receive(String(event.data))
    }
    socket.onclose = (event) => {
      if (socket === this.socket) void this.socketClosed(event.code, opened)
    }
  }

  private receive(text: string): void {
    this.lastReceived = performance.now()
    const frame = JSON.parse(text) as ServerMessage
    if ('id' in frame && typeof frame.id === 'number') {
      const request = this.requests.get(frame.id)
      if (request) {
        this.requests.delete(frame.id)
        clearTimeout(request.timer)
        if (frame.type === 'error') request.reject(new RequestError(frame.error as ErrorBody))
        else request.resolve(frame.data)
        return
      }
    }
    switch (frame.type) {
      case 'connected':
        if (!this.connection) this.connected(frame.data)
        return
      case 'op': {
        const event = {
          collection: frame.collection,
          document: frame.document,
          data: frame.data,
          timestamp: frame.timestamp,
        }
        this.subscriptions.get(frame.collection)?.receiveOp(event)
        this.subscriptions.get(channelName(frame.collection, frame.document))?.receiveOp(event)
        return
      }
      case 'message': {
        const { message, offset, epoch } = frame.data
        if (frame.collection === undefined || offset === undefined || epoch === undefined) {
          this.emit('message', { message, timestamp: frame.timestamp })
          return
        }
        const event = {
          collection: frame.collection,
          message,
          offset,
          epoch,
          timestamp: frame.timestamp,
        }
        this.subscriptions.get(frame.collection)?.receiveMessage(event)
        if (frame.document !== undefined)
          this.subscriptions
            .get(channelName(frame.collection, frame.document))
            ?.receiveMessage({ ...event, document: frame.document })
        return
      }
      case 'presence':
        if ('event' in frame.data)
          this.subscriptions
            .get(channelName(frame.collection, frame.document))
            ?.presence.receive(frame.data)
        return
      case 'disconnect':
        this.told = frame.data
        return
      case 'error':
        this.emit('error', new RequestError(frame.error as ErrorBody))
        return
    }
  }

  private get connectTimeout(): number {
    return this.options.connectTimeout ?? 10_000
  }

  private connected(data: ConnectedData): void {
    this.largestFrame = 0
    clearTimeout(this.connectTimer)
    this.connection = data
    this.connectionNumber++
    this.ownConnections.push(data.connection_id)
    if (this.ownConnections.length > 16) this.ownConnections.shift()
    this.openedAt = performance.now()
    this.authRetries = 0
    this.setState('connected')
    this.emit('connected', data)
    if (this.options.clientName !== undefined)
      this.call('connect', { data: { client: this.options.clientName } }).catch(() => {})
    this.startHeartbeat(data.heartbeat_interval)
    this.scheduleRefresh(this.lastToken)
    for (const wake of [...this.waiting]) wake()
    void this.resync(this.connectionNumber)
  }

  /** Resumes every subscription (documents load or replay, then resend their change in flight). */
  private async resync(connection: number): Promise<void> {
    await Promise.all(
      [...this.subscriptions.values()].map((subscription) =>
        subscription.doc ? subscription.doc.resume() : subscription.resume(),
      ),
    )
    if (connection === this.connectionNumber && this.isOpen) this.emit('resynced', { connection })
  }

  private async socketClosed(code: number, opened: boolean): Promise<void> {
    const told = this.told
    this.told = undefined
    const wasConnected = this.isOpen
    this.detach()
    if (this.state === 'closed' || this.state === 'disconnected' || this.state === 'offline') return
    if (wasConnected) this.backoff.connectionLasted(performance.now() - this.openedAt)
    if (told) {
      if (told.reason === 'token_expired' && typeof this.options.token !== 'function')
        return this.shutdown({ reason: 'token_expired', code: 401 })
      if (told.reason === 'client') return this.shutdown({ reason: told.reason })
      if (told.reason === 'message_too_big') {
        // The server's limit is below ours: a frame as large as the one it refused is refused
        // here from now on (413, which resets a document's change), so the reconnect does not
        // send it again.
        this.learntFrameLimit = Math.max(1024, this.largestFrame - 1)
      }
      // A fresh token is fetched on the next connect: no reason to wait.
      return this.retry(told.code, told.reason, told.reason === 'token_expired' ? 0 : undefined)
    }
    if (!opened) {
      // Browsers hide why an upgrade failed: the admission check says it.
      const refusal = await this.probe()
      if (this.stopped) return
      if (refusal === 'unreachable') return this.retry(code, 'network')
      if (refusal && FATAL_REFUSALS.has(refusal.code)) {
        const fresh = refusal.code === 401 && typeof this.options.token === 'function'
        if (!fresh || this.authRetries++ > 0)
          return this.shutdown({
            reason: refusal.message,
            code: refusal.code,
            error: new RealtimeError(refusal.code as 400, refusal.message),
          })
      }
      return this.retry(code, 'refused')
    }
    this.retry(code, 'network')
  }

  /**
   * What the server says about this client's connection attempt: the
   * refusal, undefined (admitted, or no reason given), or `unreachable`.
   */
  private async probe(): Promise<{ code: number; message: string } | 'unreachable' | undefined> {
    let response: Response
    try {
      response = await fetch(this.url(this.lastToken, true), {
        signal: AbortSignal.timeout(Math.max(1000, this.connectTimeout / 2)),
      })
    } catch {
      return 'unreachable'
    }
    if (response.ok) return undefined
    try {
      const body = (await response.json()) as { error?: { code: number; message: string } }
      return body.error
    } catch {
      return { code: response.status, message: response.statusText }
    }
  }

  private retry(
    code: number,
    reason: DisconnectedEvent['reason'],
    delay = this.backoff.next(),
  ): void {
    if (isOffline()) {
      this.setState('offline')
      this.emit('disconnected', { code, reason, willReconnect: true })
      return
    }
    this.setState('reconnecting')
    this.emit('disconnected', { code, reason, willReconnect: true, delay })
    this.reconnectTimer = setTimeout(() => {
      if (this.state === 'reconnecting') void this.open()
    }, delay)
  }

  /** Forgets the socket: requests on it fail (`disconnected`), timers stop. */
  private detach(): void {
    const socket = this.socket
    this.socket = undefined
    this.connection = undefined
    clearInterval(this.heartbeatTimer)
    clearTimeout(this.refreshTimer)
    clearTimeout(this.connectTimer)
    if (socket) {
      socket.onopen = null
      socket.onmessage = null
      socket.onclose = null
    }
    const requests = [...this.requests.values()]
    this.requests.clear()
    for (const request of requests) {
      clearTimeout(request.timer)
      request.reject(
        new ConnectionError(
          'disconnected',
          `the connection dropped before the ${request.type} reply`,
        ),
      )
    }
    for (const subscription of this.subscriptions.values()) subscription.disconnected()
  }

  /** Closes the socket now, without waiting for its close handshake. */
  private dropSocket(code: number, reason: DisconnectedEvent['reason']): void {
    const socket = this.socket
    if (!socket) return
    this.detach()
    socket.close(code)
    this.emit('disconnected', {
      code,
      reason,
      willReconnect: this.state !== 'closed' && this.state !== 'disconnected',
    })
  }

  private shutdown(event: ClosedEvent): void {
    if (this.state === 'closed') return
    clearTimeout(this.reconnectTimer)
    this.setState('closed')
    this.dropSocket(1000, 'network')
    this.removeNetworkListeners()
    const error =
      event.error ?? new ConnectionError('closed', `the client was closed (${event.reason})`)
    for (const wake of [...this.waiting]) wake()
    for (const subscription of [...this.subscriptions.values()]) subscription.close()
    for (const doc of this.docs.values()) doc.abandon(error)
    this.emit('closed', event)
  }

  /**
   * Our own liveness check: the server's pings are answered by the
   * WebSocket itself, invisible here. A `ping` every heartbeat interval;
   * nothing received for 2.5 intervals means the connection is dead even
   * if the socket has not noticed (a half-open TCP connection).
   */
  private startHeartbeat(seconds: number): void {
    const interval = Math.max(1000, seconds * 1000)
    this.lastReceived = performance.now()
    this.heartbeatTimer = setInterval(() => {
      if (performance.now() - this.lastReceived > interval * 2.5) {
        const socket = this.socket
        this.detach() // first: close() may report the close at once
        socket?.close(4000)
        this.retry(4000, 'heartbeat', 0)
      } else this.call('ping', {}, { timeout: 0 }).catch(() => {})
    }, interval)
  }

  /** With a token function: a fresh token over the open socket before this one expires. */
  private scheduleRefresh(token: string | undefined): void {
    clearTimeout(this.refreshTimer)
    const expires = token === undefined ? undefined : tokenExpiry(token)
    if (typeof this.options.token !== 'function' || expires === undefined) return
    const left = expires - Date.now()
    // A fifth of the lifetime early (at most 30 s), and at least half of it or 5 s for short ones.
    const lead = Math.min(30_000, Math.max(left / 5, Math.min(left / 2, 5_000)))
    this.refreshTimer = setTimeout(() => void this.refresh(), Math.max(0, left - lead))
  }

  private async refresh(): Promise<void> {
    try {
      const token = await this.token()
      if (token === undefined) return
      const reply = await this.call('connect', { data: { token } })
      this.lastToken = token
      const revoked = reply.revoked ?? []
      for (const channel of revoked)
        this.subscriptions
          .get(channel)
          ?.fail(new RealtimeError(403, `the refreshed token does not grant ${channel}`))
      this.emit('token', { revoked })
      this.scheduleRefresh(token)
    } catch (error) {
      // The server closes at expiry (token_expired); the reconnect then gets a fresh token.
      if (error instanceof RealtimeError && error.code !== 'disconnected') this.emit('error', error)
    }
  }

  /** Browsers: drop the socket when the network goes, come back at once when it returns. */
  private watchNetwork(): () => void {
    const target = globalThis as {
      addEventListener?: (type: string, listener: () => void) => void
      removeEventListener?: (type: string, listener: () => void) => void
    }
    if (
      typeof navigator === 'undefined' ||
      typeof navigator.onLine !== 'boolean' ||
      !target.addEventListener
    )
      return () => {}
    const offline = () => {
      if (this.state === 'closed' || this.state === 'disconnected') return
      clearTimeout(this.reconnectTimer)
      this.setState('offline')
      this.dropSocket(1000, 'offline')
    }
    const online = () => {
      if (this.state !== 'offline' && this.state !== 'reconnecting') return
      clearTimeout(this.reconnectTimer)
      this.backoff.reset()
      void this.open()
    }
    target.addEventListener('offline', offline)
    target.addEventListener('online', online)
    return () => {
      target.removeEventListener?.('offline', offline)
      target.removeEventListener?.('online', online)
    }
  }
}

const encoder = new TextEncoder()
const byteLength = (text: string): number => encoder.encode(text).length

function isOffline(): boolean {
  return typeof navigator !== 'undefined' && navigator.onLine === false
}

/** A JWT's `exp` in ms (read, not verified: the server verifies). */
function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split('.')[1]
    if (!part) return undefined
    const payload = JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/'))) as {
      exp?: unknown
    }
    return typeof payload.exp === 'number' ? payload.exp * 1000 : undefined
  } catch {
    return undefined
  }
}
