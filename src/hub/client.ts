import type { Config } from '../config.ts'
import type { Documents } from '../documents/documents.ts'
import type { Logger } from '../observability/logger.ts'
import type { Presence } from '../presence/presence.ts'
import type { SessionStore } from '../presence/sessions.ts'
import { channelName } from '../protocol/channels.ts'
import { encode } from '../protocol/envelope.ts'
import { ErrorCode, ProtocolError } from '../protocol/errors.ts'
import type { ClientMessage, MessageOf } from '../protocol/messages.ts'
import { parseClientMessage } from '../protocol/validate.ts'
import { entryMessage } from '../streams/entry.ts'
import type { Replay, Streams } from '../streams/streams.ts'
import type { Connection, Socket } from './connection.ts'
import type { ClientInfo, Hub } from './hub.ts'

/** A successful reply: its type (usually the request's) and data. */
interface Reply {
  type: string
  data: unknown
}

/** Types answered even without an `id`; the rest reply only on failure. */
const ALWAYS_ANSWERED = new Set(['ping', 'connect', 'disconnect'])

/**
 * One socket's side of the protocol (ShareDB's agent, Centrifuge's client):
 * checks each frame, runs the command and sends exactly one reply to every
 * message that has an `id`.
 */
export class ClientHandler {
  constructor(
    private readonly hub: Hub,
    private readonly documents: Documents,
    private readonly streams: Streams,
    private readonly presence: Presence,
    private readonly sessions: SessionStore,
    private readonly config: Config,
    private readonly logger: Logger,
  ) {}

  open(socket: Socket, info: ClientInfo): Connection {
    const connection = this.hub.register(socket, info, Date.now())
    const { userId, sessionId } = info
    this.hub.send(
      connection,
      'connected',
      encode({ type: 'connected', data: this.connectedPayload(connection) }),
    )
    this.logger.info(
      { connection_id: connection.id, user_id: userId, session_id: sessionId },
      'connected',
    )
    return connection
  }

  close(socket: Socket, code: number): void {
    const connection = this.hub.unregister(socket)
    if (connection)
      this.logger.info(
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
    this.logger.warn(
      { connection_id: connection.id, size, max: this.config.maxMessageSize },
      'frame too big',
    )
    this.hub.disconnect(connection, 'message_too_big')
  }

  /** A pong (or any sign of life) keeps the connection from timing out. */
  alive(socket: Socket): void {
    const connection = this.hub.get(socket)
    if (connection) connection.lastSeen = Date.now()
  }

  /** Handles one frame; every message with an `id` gets exactly one reply. */
  message(socket: Socket, frame: string | Uint8Array): void {
    const connection = this.hub.get(socket)
    if (!connection?.open) return
    connection.lastSeen = Date.now()
    const parsed = parseClientMessage(frame)
    if (!parsed.ok) {
      this.hub.stats.countIn(parsed.type ?? 'invalid')
      this.sendError(connection, parsed.id, parsed.error)
      return
    }
    const message = parsed.message
    this.hub.stats.countIn(message.type)
    try {
      const reply = this.dispatch(connection, message)
      if (reply) this.reply(connection, message, reply)
    } catch (error) {
      this.fail(connection, message, error)
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
        'message handler failed',
      )
    const failure =
      error instanceof ProtocolError
        ? error
        : new ProtocolError(ErrorCode.Internal, 'internal error')
    this.sendError(connection, message.id, failure, this.echoChannel(message))
  }

  /** Returns the reply, or undefined when the handler replies itself later (submit). */
  private dispatch(connection: Connection, message: ClientMessage): Reply | undefined {
    switch (message.type) {
      case 'connect':
        if (message.data?.client !== undefined && message.data.client !== connection.client) {
          connection.client = message.data.client
          this.sessions.named(connection)
        }
        return { type: 'connected', data: this.connectedPayload(connection) }
      case 'ping':
        return {
          type: 'pong',
          data: { timestamp: message.timestamp, server_time: new Date().toISOString() },
        }
      case 'disconnect':
        return { type: 'disconnect', data: { code: 1000, reason: 'client' } }
      case 'subscribe':
        return this.subscribe(connection, message)
      case 'unsubscribe':
        if (this.hub.unsubscribe(connection, message)) this.presence.leave(connection, message)
        return {
          type: 'unsubscribe',
          data: { channel: channelName(message.collection, message.document) },
        }
      case 'query':
        return this.query(message)
      case 'submit':
        this.submit(connection, message)
        return undefined
      case 'presence': {
        const mode = this.presence.set(connection, message, message.data)
        return {
          type: 'presence',
          data: { channel: channelName(message.collection, message.document), mode },
        }
      }
    }
  }

  /**
   * Replays what the client missed, subscribes, sends the channel's presence,
   * then replies — all in one synchronous step, so nothing published
   * meanwhile is lost or doubled.
   */
  private subscribe(connection: Connection, message: MessageOf<'subscribe'>): Reply {
    const { collection, document, since } = message
    const channel = channelName(collection, document)
    const data: Record<string, unknown> = { channel, epoch: this.streams.epoch }
    // A channel already followed is receiving live: replaying would double it.
    const resume = connection.channels.has(channel) ? undefined : since
    let replay: Replay | undefined
    if (document === undefined) {
      if (since !== undefined && !('epoch' in since))
        throw new ProtocolError(
          ErrorCode.BadRequest,
          'a collection resumes with since {epoch, offset}',
          {
            field: 'since',
          },
        )
      if (resume && 'epoch' in resume) replay = this.streams.replayCollection(collection, resume)
    } else {
      if (since !== undefined && !('v' in since))
        throw new ProtocolError(ErrorCode.BadRequest, 'a document resumes with since {v}', {
          field: 'since',
        })
      const position = this.documents.position(collection, document)
      data.v = position.v
      if (resume && 'v' in resume)
        replay = this.streams.replayDocument(collection, document, resume.v, position)
    }
    if (replay?.recovered)
      for (const entry of replay.entries) {
        const fields = entryMessage(entry, this.streams.epoch)
        this.hub.send(connection, fields.type, encode(fields, entry.createdAt))
      }
    if (this.hub.subscribe(connection, { collection, document }))
      this.presence.join(connection, { collection, document })
    data.offset = this.streams.head(collection)
    if (replay) data.recovered = replay.recovered
    return { type: 'subscribe', data }
  }

  private query(message: MessageOf<'query'>): Reply {
    if (message.document !== undefined)
      return { type: 'query', data: this.documents.snapshot(message.collection, message.document) }
    return {
      type: 'query',
      data: this.documents.list(message.collection, message.data?.ids, message.data?.limit ?? 100),
    }
  }

  private submit(connection: Connection, message: MessageOf<'submit'>): void {
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
        if (error || !result) this.fail(connection, message, error)
        else
          this.reply(connection, message, {
            type: 'submit',
            data: { v: result.v, offset: result.offset },
          })
      },
    )
  }

  private connectedPayload(connection: Connection) {
    return {
      connection_id: connection.id,
      user_id: connection.userId,
      session_id: connection.sessionId,
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
