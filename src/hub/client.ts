import type { Gate } from '../auth/gate.ts'
import { TokenBucket } from '../auth/limits.ts'
import { forbidden } from '../auth/permissions.ts'
import type { Identity } from '../auth/tokens.ts'
import type { Config } from '../config.ts'
import type { Documents } from '../documents/documents.ts'
import { LogLimiter } from '../observability/log-limiter.ts'
import type { Logger } from '../observability/logger.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { Presence } from '../presence/presence.ts'
import type { SessionStore } from '../presence/sessions.ts'
import { type ChannelRef, channelName, parseChannel } from '../protocol/channels.ts'
import { encode } from '../protocol/envelope.ts'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'
import type { ClientMessage, MessageOf } from '../protocol/messages.ts'
import { parseClientMessage } from '../protocol/validate.ts'
import { isPromise, type Maybe, then } from '../store/store.ts'
import type { LivePositions } from '../streams/live-position.ts'
import type { Streams } from '../streams/streams.ts'
import type { Connection, Socket } from './connection.ts'
import type { ClientInfo, Hub } from './hub.ts'
import { Replays } from './replay.ts'

/** A successful reply: its type (usually the request's) and data. */
interface Reply {
  type: string
  data: unknown
}

/**
 * Refusals worth an operator's attention (auth, limits). Rate-limit 429s are
 * not logged one by one: a flood would flood the log; closing it is logged.
 */
const LOGGED_REFUSALS = new Set<number>([
  ErrorCode.Unauthenticated,
  ErrorCode.Forbidden,
  ErrorCode.TooLarge,
  ErrorCode.RateLimited,
])

const replaying = (channel: string) =>
  new ProtocolError(
    ErrorCode.Conflict,
    `${channel} is still replaying its history; wait for its subscribe reply`,
    { channel },
  )

/** Types answered even without an `id`; the rest reply only on failure. */
const ALWAYS_ANSWERED = new Set(['ping', 'connect', 'disconnect'])

/**
 * One socket's side of the protocol (ShareDB's agent, Centrifuge's client):
 * checks each frame, runs the command and sends exactly one reply to every
 * message that has an `id`.
 */
export class ClientHandler {
  /** History replays in progress (subscribe with `since`). */
  readonly replays: Replays
  /** Refusals repeat (a retry loop, a flood): one line per cause and source per interval. */
  private readonly refusals: LogLimiter
  /**
   * The per-connection `connected` / `disconnected` lines, at debug: the
   * sessions table is the record of connections (at info they were most of
   * the log under churn and a quarter of a connect's CPU). Their fields are
   * ids and codes (no token, no header), so this child skips the redaction
   * pass that costs every line of the main logger a clone.
   */
  private readonly connectionLog: Logger

  constructor(
    private readonly hub: Hub,
    private readonly documents: Documents,
    private readonly streams: Streams,
    private readonly presence: Presence,
    private readonly sessions: SessionStore,
    private readonly gate: Gate,
    private readonly metrics: Metrics,
    private readonly config: Config,
    private readonly logger: Logger,
    private readonly positions: LivePositions,
    /** This process's NODE_ID, told to clients in `connected`. */
    private readonly nodeId: string,
    /** Whether a failure is the store's being unreachable (503, retry) rather than a bug (500). */
    private readonly unavailable: (error: unknown) => boolean,
  ) {
    this.refusals = new LogLimiter(logger, config.logRepeatInterval * 1000)
    this.replays = new Replays(
      hub,
      streams,
      (collection, document) => positions.position(collection, document),
      config.maxSendBuffer,
      {
        goLive: (connection, ref, recovered, v) => this.goLive(connection, ref, recovered, v),
        reply: (connection, request, reply) => this.reply(connection, request, reply),
        fail: (connection, request, error) => this.fail(connection, request, error),
        abandoned: (ref) => this.streams.unfollow(ref.collection),
      },
    )
    this.connectionLog = logger.child({}, { redact: { paths: [], censor: '[redacted]' } })
  }

  /** At shutdown: writes the pending summaries of repeated refusals. */
  flushLogs(): void {
    this.refusals.stop()
  }

  /** Something failed outside a connection's messages (admission, open): logged at error. */
  failed(error: unknown, what: string): void {
    this.logger.error({ err: error }, what)
  }

  /** An upgrade refused before it became a connection (logged for operators). */
  refused(code: number, reason: string, address: string): void {
    this.refusals.warn(
      `upgrade:${code}:${address}`,
      { code, reason, remote_address: address },
      'connection refused',
    )
  }

  open(socket: Socket, info: ClientInfo, identity: Identity | undefined): Connection {
    const now = Date.now()
    const connection = this.hub.register(socket, info, now)
    connection.grants = identity?.grants
    connection.expiresAt = identity?.expiresAt
    this.hub.send(
      connection,
      'connected',
      encode({ type: 'connected', data: this.connectedPayload(connection) }),
    )
    this.connectionLog.debug(
      {
        connection_id: connection.id,
        user_id: connection.userId,
        session_id: connection.sessionId,
      },
      'connected',
    )
    return connection
  }

  close(socket: object, code: number): void {
    const connection = this.hub.unregister(socket)
    if (connection) {
      this.replays.forget(connection)
      for (const channel of connection.channels)
        this.streams.unfollow(parseChannel(channel).collection)
    }
    if (connection)
      this.connectionLog.debug(
        {
          connection_id: connection.id,
          user_id: connection.userId,
          code,
          reason: connection.endReason,
        },
        'disconnected',
      )
  }

  /** A frame over MAX_MESSAGE_SIZE: the connection is closed with 1009, unparsed. */
  tooBig(socket: Socket, size: number): void {
    const connection = this.hub.get(socket)
    if (!connection) return
    this.hub.stats.countIn('invalid')
    this.refusals.warn(
      `too-big:${connection.userId}`,
      {
        connection_id: connection.id,
        user_id: connection.userId,
        size,
        max: this.config.maxMessageSize,
      },
      'frame too big',
    )
    this.hub.disconnect(connection, 'message_too_big')
  }

  /** A pong (or any sign of life) keeps the connection from timing out. */
  alive(socket: object): void {
    const connection = this.hub.get(socket)
    if (connection) connection.lastActive = performance.now()
  }

  /** Handles one frame; every message with an `id` gets exactly one reply. */
  message(socket: Socket, frame: string | Uint8Array): void {
    const connection = this.hub.get(socket)
    if (!connection?.open) return
    // Monotonic: limits and timeouts must not move with the wall clock.
    const now = performance.now()
    connection.lastActive = now
    const parsed = parseClientMessage(frame, this.config.maxJsonDepth)
    if (!parsed.ok) {
      this.hub.stats.countIn(parsed.type ?? 'invalid')
      this.sendError(connection, parsed.id, parsed.error)
      return
    }
    const message = parsed.message
    this.hub.stats.countIn(message.type)
    connection.messageBucket ??= new TokenBucket(
      this.config.messageRate,
      this.config.messageRate * 2,
      now,
    )
    if (!connection.messageBucket.take(now)) {
      this.rateLimited(connection, message, now)
      return
    }
    if (connection.waiting) connection.waiting.push(message)
    else this.handle(connection, message)
  }

  /** Runs one message; one answered later (asynchronously) holds back those after it. */
  private handle(connection: Connection, message: ClientMessage): void {
    try {
      const reply = this.dispatch(connection, message)
      if (!isPromise(reply)) {
        if (reply) this.reply(connection, message, reply)
        return
      }
      connection.waiting = []
      reply
        .then(
          (later) => later && connection.open && this.reply(connection, message, later),
          (error: unknown) => connection.open && this.fail(connection, message, error),
        )
        .finally(() => this.resume(connection))
    } catch (error) {
      this.fail(connection, message, error)
    }
  }

  /** The message in progress is answered: the ones held back run, in order. */
  private resume(connection: Connection): void {
    const waiting = connection.waiting ?? []
    connection.waiting = undefined
    while (waiting.length > 0 && connection.open) {
      this.handle(connection, waiting.shift() as ClientMessage)
      // handle() may have gone asynchronous again (TypeScript keeps the narrowing above).
      const again = connection.waiting as ClientMessage[] | undefined
      if (again) {
        again.push(...waiting)
        return
      }
    }
  }

  /**
   * Over MESSAGE_RATE: a 429. More than max(50, MESSAGE_RATE) refusals within
   * 10 s mean the client ignores them: it is closed (1008).
   */
  private rateLimited(connection: Connection, message: ClientMessage, now: number): void {
    if (now - connection.refusedSince > 10_000) {
      connection.refusedSince = now
      connection.refused = 0
    }
    connection.refused++
    this.sendError(
      connection,
      message.id,
      new ProtocolError(
        ErrorCode.RateLimited,
        `over MESSAGE_RATE (${this.config.messageRate}/s); slow down`,
      ),
      this.echoChannel(message),
    )
    if (connection.refused > Math.max(50, this.config.messageRate)) {
      this.refusals.warn(
        `flooding:${connection.userId}`,
        { connection_id: connection.id, user_id: connection.userId },
        'closing a flooding connection',
      )
      this.hub.disconnect(connection, 'rate_limited')
    }
  }

  private reply(connection: Connection, message: ClientMessage, reply: Reply): void {
    if (message.id !== undefined || ALWAYS_ANSWERED.has(message.type)) {
      const fields = message.id === undefined ? reply : { ...reply, id: message.id }
      this.hub.send(connection, reply.type, encode({ ...fields, ...this.echoChannel(message) }))
    }
    if (message.type === 'disconnect') this.hub.close(connection, 'client')
  }

  private fail(connection: Connection, message: ClientMessage, error: unknown): void {
    if (!(error instanceof ProtocolError))
      this.logger.error(
        { err: error, connection_id: connection.id, type: message.type },
        this.unavailable(error) ? 'store unavailable' : 'message handler failed',
      )
    const failure =
      error instanceof ProtocolError
        ? error
        : this.unavailable(error)
          ? new ProtocolError(ErrorCode.Unavailable, 'store unavailable; retry later')
          : new ProtocolError(ErrorCode.Internal, 'internal error')
    if (LOGGED_REFUSALS.has(failure.code))
      this.refusals.warn(
        `refused:${failure.code}:${message.type}:${connection.userId}`,
        {
          connection_id: connection.id,
          user_id: connection.userId,
          type: message.type,
          code: failure.code,
          reason: failure.message,
        },
        'refused',
      )
    this.sendError(connection, message.id, failure, this.echoChannel(message))
  }

  /** Returns the reply, or undefined when the handler replies itself later (submit). */
  private dispatch(connection: Connection, message: ClientMessage): Maybe<Reply | undefined> {
    switch (message.type) {
      case 'connect':
        if (message.data?.client !== undefined && message.data.client !== connection.client) {
          connection.client = message.data.client
          this.sessions.named(connection)
        }
        if (message.data?.token === undefined)
          return { type: 'connected', data: this.connectedPayload(connection) }
        this.refreshToken(connection, message, message.data.token)
        return undefined
      case 'ping':
        return {
          type: 'pong',
          data: { timestamp: message.timestamp, server_time: new Date().toISOString() },
        }
      case 'disconnect':
        return { type: 'disconnect', data: { code: 1000, reason: 'client' } }
      case 'subscribe':
        return this.subscribe(connection, message)
      case 'unsubscribe': // always allowed: it only takes access away
        this.replays.cancel(
          connection,
          channelName(message.collection, message.document),
          new ProtocolError(ErrorCode.Conflict, 'unsubscribed before the history replay finished', {
            channel: channelName(message.collection, message.document),
          }),
        )
        if (this.hub.unsubscribe(connection, message)) {
          this.presence.leave(connection, message)
          this.replays.followed(connection, message, false)
          this.streams.unfollow(message.collection)
        }
        return {
          type: 'unsubscribe',
          data: { channel: channelName(message.collection, message.document) },
        }
      case 'query':
        this.authorize(connection, message, 'read')
        return this.query(message)
      case 'submit':
        this.authorize(connection, message, 'publish')
        this.submit(connection, message)
        return undefined
      case 'presence': {
        this.authorize(connection, message, 'read')
        const mode = this.presence.set(connection, message, message.data)
        return {
          type: 'presence',
          data: { channel: channelName(message.collection, message.document), mode },
        }
      }
    }
  }

  /**
   * Subscribes. With `since`, what the client missed is sent first, paced by
   * the socket (see pump); the channel goes live and the reply is sent in
   * the same synchronous step as the last of the backlog, so nothing
   * published meanwhile is lost or doubled.
   */
  private subscribe(
    connection: Connection,
    message: MessageOf<'subscribe'>,
  ): Maybe<Reply | undefined> {
    const { collection, document, since } = message
    const channel = channelName(collection, document)
    this.authorize(connection, message, 'read')
    if (this.replays.has(connection, channel)) throw replaying(channel)
    const held = connection.channels.size + this.replays.count(connection)
    if (!connection.channels.has(channel) && held >= this.config.maxSubscriptionsPerConnection)
      throw new ProtocolError(
        ErrorCode.RateLimited,
        `at MAX_SUBSCRIPTIONS_PER_CONNECTION (${this.config.maxSubscriptionsPerConnection}); unsubscribe first`,
        { channel },
      )
    if (document === undefined && since !== undefined && !('epoch' in since))
      throw new ProtocolError(
        ErrorCode.BadRequest,
        'a collection resumes with since {epoch, offset}',
        { field: 'since' },
      )
    if (document !== undefined && since !== undefined && !('v' in since))
      throw new ProtocolError(ErrorCode.BadRequest, 'a document resumes with since {v}', {
        field: 'since',
      })
    const ref: ChannelRef = document === undefined ? { collection } : { collection, document }
    // Held until the subscription (or the replay) ends; let go on every other way out.
    const following = this.streams.follow(collection)
    // Every failure after the follow lets it go (start's own early returns do so themselves).
    const failed = (error: unknown): never => {
      this.streams.unfollow(collection)
      throw error
    }
    const start = (): Maybe<Reply | undefined> => {
      try {
        const started = this.start(connection, message, ref)
        return isPromise(started) ? started.catch(failed) : started
      } catch (error) {
        return failed(error)
      }
    }
    return isPromise(following) ? following.then(start) : start()
  }

  /** The collection is followed here: go live now, or resume from `since`. */
  private start(
    connection: Connection,
    message: MessageOf<'subscribe'>,
    ref: ChannelRef,
  ): Maybe<Reply | undefined> {
    const { collection, document, since } = message
    const channel = channelName(collection, document)
    if (!connection.open) {
      this.streams.unfollow(collection)
      return undefined
    }
    if (this.replays.has(connection, channel)) throw replaying(channel)
    // A channel already followed is receiving live: replaying would double it.
    if (since === undefined || connection.channels.has(channel))
      return this.goLiveAt(connection, ref, undefined)
    const point =
      'epoch' in since
        ? this.streams.resumeCollection(collection, since)
        : then(this.positions.position(collection, document as string), (position) =>
            this.streams.resumeDocument(collection, since.v, position),
          )
    return then(point, (resume) => {
      if (!connection.open) {
        this.streams.unfollow(collection)
        return undefined
      }
      if (this.replays.has(connection, channel)) throw replaying(channel)
      if (!resume.recovered || connection.channels.has(channel))
        return this.goLiveAt(connection, ref, resume.recovered ? undefined : false)
      this.replays.start(connection, message, ref, resume.after, 'v' in since ? since.v : undefined)
      return undefined
    })
  }

  /** Goes live with a document's version read as delivered here (see LivePositions). */
  private goLiveAt(
    connection: Connection,
    ref: ChannelRef,
    recovered: boolean | undefined,
  ): Maybe<Reply | undefined> {
    if (ref.document === undefined) return this.goLive(connection, ref, recovered, undefined)
    return then(this.positions.position(ref.collection, ref.document), (position) => {
      if (connection.open) return this.goLive(connection, ref, recovered, position.v)
      this.streams.unfollow(ref.collection)
      return undefined
    })
  }

  /** The socket took what was buffered: go on with its history replays. */
  drain(socket: object): void {
    const connection = this.hub.get(socket)
    if (connection) this.replays.drain(connection)
  }

  /**
   * Joins the channel (and its presence) now; `recovered` answers a `since`;
   * `v` is the document's version as delivered here. The caller's hold on
   * the collection becomes the subscription's (or is let go when the
   * connection already had it).
   */
  private goLive(
    connection: Connection,
    ref: ChannelRef,
    recovered: boolean | undefined,
    v: number | undefined,
  ): Reply {
    const data: Record<string, unknown> = {
      channel: channelName(ref.collection, ref.document),
      epoch: this.streams.epoch,
    }
    if (ref.document !== undefined) data.v = v ?? 0
    if (recovered !== undefined) this.hub.stats.countReplay(recovered)
    if (this.hub.subscribe(connection, ref)) {
      // In a cluster the first member here learns the other nodes' members just after the reply.
      this.presence
        .join(connection, ref)
        ?.catch((error: unknown) =>
          this.logger.warn({ err: error, connection_id: connection.id }, 'presence join failed'),
        )
      this.replays.followed(connection, ref, true)
    } else this.streams.unfollow(ref.collection)
    data.offset = this.streams.delivered(ref.collection)
    if (recovered !== undefined) data.recovered = recovered
    return { type: 'subscribe', data }
  }

  private query(message: MessageOf<'query'>): Maybe<Reply> {
    const data =
      message.document !== undefined
        ? this.documents.snapshot(message.collection, message.document)
        : this.documents.list(message.collection, message.data?.ids, message.data?.limit ?? 100)
    return then(data, (found: unknown) => ({ type: 'query', data: found }))
  }

  private submit(connection: Connection, message: MessageOf<'submit'>): void {
    const started = performance.now()
    this.documents.submit(
      {
        collection: message.collection,
        document: message.document,
        v: message.v,
        op: message.op ?? message.operation,
        create: message.create,
        del: message.del,
        src: message.src,
        seq: message.seq,
        source: 'client',
        exclude: [connection.id],
      },
      (error, result) => {
        if (!connection.open) return
        this.metrics.submitAck.observe((performance.now() - started) / 1000)
        if (error || !result) {
          this.fail(connection, message, error)
          return
        }
        const ack = () =>
          connection.open &&
          this.reply(connection, message, {
            type: 'submit',
            data: { v: result.v, offset: result.offset },
          })
        if (!this.replays.holdAck(connection, message, result.offset, ack)) ack()
      },
    )
  }

  /** 403 unless the connection's token grants it (open mode: always). */
  private authorize(connection: Connection, ref: ChannelRef, action: 'read' | 'publish'): void {
    const { grants } = connection
    if (!grants) return
    if (action === 'read' ? grants.canRead(ref) : grants.canWrite(ref)) return
    throw forbidden(ref, action)
  }

  /**
   * `connect` with a fresh token before the old one expires: same user, new
   * expiry and grants. Channels the new grants no longer cover are left
   * (listed in the reply as `revoked`).
   */
  private refreshToken(connection: Connection, message: MessageOf<'connect'>, token: string): void {
    const verifier = this.gate.verifier
    if (!verifier) {
      this.reply(connection, message, {
        type: 'connected',
        data: this.connectedPayload(connection),
      })
      return
    }
    verifier.verify(token).then(
      (identity) => {
        if (!connection.open) return
        if (identity.userId !== connection.userId) {
          this.fail(
            connection,
            message,
            new ProtocolError(ErrorCode.Forbidden, 'the new token is for another user'),
          )
          return
        }
        connection.grants = identity.grants
        connection.expiresAt = identity.expiresAt
        const revoked: string[] = []
        for (const channel of [...connection.channels]) {
          const ref = parseChannel(channel)
          if (identity.grants.canRead(ref)) continue
          this.hub.unsubscribe(connection, ref)
          this.replays.followed(connection, ref, false)
          this.presence.leave(connection, ref)
          this.streams.unfollow(ref.collection)
          revoked.push(channel)
        }
        for (const channel of this.replays.channels(connection)) {
          const ref = parseChannel(channel)
          if (identity.grants.canRead(ref)) continue
          this.replays.cancel(connection, channel, forbidden(ref, 'read'))
          revoked.push(channel)
        }
        this.reply(connection, message, {
          type: 'connected',
          data: { ...this.connectedPayload(connection), revoked },
        })
      },
      (error: unknown) => connection.open && this.fail(connection, message, error),
    )
  }

  private connectedPayload(connection: Connection) {
    return {
      connection_id: connection.id,
      user_id: connection.userId,
      session_id: connection.sessionId,
      node_id: this.nodeId,
      heartbeat_interval: this.config.heartbeatInterval,
      server_time: new Date().toISOString(),
    }
  }

  /** Replies about a channel say which one. */
  private echoChannel(message: ClientMessage) {
    const fields: { collection?: string; document?: string } = {}
    if ('collection' in message) fields.collection = message.collection
    if ('document' in message && message.document !== undefined) fields.document = message.document
    return fields
  }

  private sendError(
    connection: Connection,
    id: unknown,
    error: ProtocolError,
    channel: { collection?: string; document?: string } = {},
  ): void {
    this.hub.stats.countError(error.code)
    this.hub.send(
      connection,
      'error',
      encode({
        type: 'error',
        ...(id !== undefined ? { id } : {}),
        ...channel,
        error: error.toBody(),
      }),
    )
  }
}
