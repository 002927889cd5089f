import { type Static, type TSchema, Type } from '@sinclair/typebox'
import { closeCodes } from './close.ts'
import { ErrorCode } from './errors.ts'
import { Collection, CreateData, DocumentId, MessageId, Op } from './messages.ts'

/**
 * One TypeBox schema per server → client frame, as the server writes them
 * (docs/PROTOCOL.md): the replies to each request type, the events (`op`,
 * `message`, `presence`), `disconnect` and `error`. Clients import the
 * static types only; the schemas feed the AsyncAPI document and the tests
 * that check real frames against them.
 */

const Timestamp = Type.String({ format: 'date-time', description: 'ISO-8601' })
const Epoch = Type.String({
  description: 'Names the history stream; offsets of another epoch mean nothing',
})
const Offset = Type.Integer({ minimum: 0, description: "Position in the collection's stream" })
const V = Type.Integer({ minimum: 0, description: "The document's version" })
const Channel = Type.String({ description: '`collection` or `collection.document`' })

/** A union of literals; its static type is the union of the values. */
const literals = <const T extends string | number>(values: readonly T[]) =>
  Type.Union(values.map((value) => Type.Literal(value)))

/** The common envelope: `{type, id?, collection?, document?, data?, error?, timestamp}`. */
function frame<T extends string, P extends Record<string, TSchema>>(
  type: T,
  fields: P,
  description: string,
) {
  return Type.Object(
    { type: Type.Literal(type), ...fields, timestamp: Timestamp },
    { description, additionalProperties: false },
  )
}
const reply = { id: Type.Optional(MessageId) }
const about = { collection: Collection, document: Type.Optional(DocumentId) }

export const ConnectedData = Type.Object({
  connection_id: Type.String(),
  user_id: Type.String(),
  session_id: Type.String(),
  node_id: Type.String({
    description:
      'The server process this connection is on (NODE_ID); one value in a single process',
  }),
  heartbeat_interval: Type.Number({ description: 'Seconds between server pings' }),
  server_time: Timestamp,
  revoked: Type.Optional(
    Type.Array(Channel, {
      description: 'After a token refresh: channels the new token no longer grants (left)',
    }),
  ),
})
export const ConnectedFrame = frame(
  'connected',
  { ...reply, data: ConnectedData },
  'Sent on open, and as the reply to `connect` (with `revoked` after a token refresh)',
)

export const SubscribeData = Type.Object({
  channel: Channel,
  epoch: Epoch,
  v: Type.Optional(V),
  offset: Offset,
  recovered: Type.Optional(
    Type.Boolean({ description: 'With since: whether everything missed was replayed' }),
  ),
})
export const SubscribeReply = frame(
  'subscribe',
  { ...reply, ...about, data: SubscribeData },
  'Reply to subscribe; with since, sent after the replayed messages',
)

export const ChannelData = Type.Object({ channel: Channel })
export const UnsubscribeReply = frame(
  'unsubscribe',
  { ...reply, ...about, data: ChannelData },
  'Reply to unsubscribe',
)

export const DocumentSnapshot = Type.Object({
  v: V,
  data: Type.Unknown({ description: 'null when the document has no snapshot here' }),
})
export const CollectionQueryResult = Type.Object({
  docs: Type.Array(Type.Object({ id: DocumentId, v: V, data: Type.Unknown() })),
  epoch: Epoch,
  offset: Offset,
})
export const QueryReply = frame(
  'query',
  { ...reply, ...about, data: Type.Union([DocumentSnapshot, CollectionQueryResult]) },
  'Reply to query: a snapshot (document) or the documents and the stream position (collection)',
)

export const SubmitResult = Type.Object({
  v: Type.Integer({ minimum: 0, description: 'The version the change was applied at' }),
  offset: Offset,
})
export const SubmitReply = frame(
  'submit',
  { ...reply, collection: Collection, document: DocumentId, data: SubmitResult },
  'Ack of a submit, at its place in the stream',
)

export const PresenceMode = literals(['full', 'count', 'off'] as const)
export const PresenceReply = frame(
  'presence',
  { id: MessageId, ...about, data: Type.Object({ channel: Channel, mode: PresenceMode }) },
  "Reply to presence: the channel's mode now",
)

export const PongFrame = frame(
  'pong',
  {
    ...reply,
    data: Type.Object({
      timestamp: Type.Optional(Type.Union([Type.Number(), Type.String()])),
      server_time: Timestamp,
    }),
  },
  'Reply to ping',
)

export const CloseReasonSchema = literals(Object.keys(closeCodes) as (keyof typeof closeCodes)[])
export const DisconnectFrame = frame(
  'disconnect',
  { ...reply, data: Type.Object({ code: Type.Integer(), reason: CloseReasonSchema }) },
  'Sent before the server closes the connection, with the close code it uses',
)

export const ErrorCodeSchema = literals(Object.values(ErrorCode))
export const ErrorBodySchema = Type.Object({
  code: ErrorCodeSchema,
  message: Type.String(),
  details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
})
export const ErrorFrame = frame(
  'error',
  {
    ...reply,
    collection: Type.Optional(Collection),
    document: Type.Optional(DocumentId),
    error: ErrorBodySchema,
  },
  'A request failed (or a message without id did); the connection stays open',
)

const opCommon = {
  v: Type.Integer({ minimum: 0, description: 'The version it was applied at' }),
  offset: Offset,
  epoch: Epoch,
  source: literals(['client', 'server'] as const),
  src: Type.Optional(Type.String({ description: "The submitter's id" })),
  seq: Type.Optional(Type.Integer({ minimum: 0, description: "The submitter's counter" })),
}
export const OpChange = Type.Object({ op: Op, ...opCommon })
export const CreateChange = Type.Object({ create: CreateData, ...opCommon })
export const DelChange = Type.Object({ del: Type.Literal(true), ...opCommon })
export const OpFrame = frame(
  'op',
  {
    collection: Collection,
    document: DocumentId,
    data: Type.Union([OpChange, CreateChange, DelChange]),
  },
  'A change to a document, to its subscribers and its collection’s',
)

export const MessageFrame = frame(
  'message',
  {
    collection: Type.Optional(Collection),
    document: Type.Optional(DocumentId),
    data: Type.Object({
      message: Type.Unknown(),
      offset: Type.Optional(Offset),
      epoch: Type.Optional(Epoch),
    }),
  },
  'A REST broadcast: to a channel (with offset and epoch) or to a user (without)',
)

export const PresenceMember = Type.Object({
  user_id: Type.String(),
  connection_id: Type.String(),
  event: literals(['join', 'update'] as const),
  state: Type.Unknown({ description: 'null until the member sets one' }),
})
export const PresenceLeave = Type.Object({
  user_id: Type.String(),
  connection_id: Type.String(),
  event: Type.Literal('leave'),
})
export const PresenceCount = Type.Object({
  event: Type.Literal('count'),
  connections: Type.Integer({ minimum: 0 }),
  users: Type.Integer({ minimum: 0 }),
})
export const PresenceModeChange = Type.Object({
  event: Type.Literal('mode'),
  mode: literals(['full', 'count'] as const),
  connections: Type.Integer({ minimum: 0 }),
  users: Type.Integer({ minimum: 0 }),
})
export const PresenceEventFrame = frame(
  'presence',
  {
    ...about,
    data: Type.Union([PresenceMember, PresenceLeave, PresenceCount, PresenceModeChange]),
  },
  'Presence in a channel: join/update/leave (full), count, or a mode switch (member cap)',
)

/** Every frame the server sends, keyed for the AsyncAPI document. */
export const serverMessageSchemas = {
  connected: ConnectedFrame,
  subscribe: SubscribeReply,
  unsubscribe: UnsubscribeReply,
  query: QueryReply,
  submit: SubmitReply,
  presenceReply: PresenceReply,
  pong: PongFrame,
  disconnect: DisconnectFrame,
  error: ErrorFrame,
  op: OpFrame,
  message: MessageFrame,
  presence: PresenceEventFrame,
} as const

export const ServerMessage = Type.Union(Object.values(serverMessageSchemas))
export type ServerMessage = Static<typeof ServerMessage>

export type ConnectedData = Static<typeof ConnectedData>
export type SubscribeData = Static<typeof SubscribeData>
export type DocumentSnapshot = Static<typeof DocumentSnapshot>
export type CollectionQueryResult = Static<typeof CollectionQueryResult>
export type SubmitResult = Static<typeof SubmitResult>
export type PresenceModeValue = Static<typeof PresenceMode>
export type OpData = Static<(typeof OpFrame)['properties']['data']>
export type OpFrame = Static<typeof OpFrame>
export type MessageFrame = Static<typeof MessageFrame>
export type PresenceEventData = Static<(typeof PresenceEventFrame)['properties']['data']>
export type PresenceEventFrame = Static<typeof PresenceEventFrame>
export type ErrorFrame = Static<typeof ErrorFrame>
export type DisconnectFrame = Static<typeof DisconnectFrame>

/** The `data` of each request's success reply, by request type. */
export interface ReplyData {
  connect: ConnectedData
  subscribe: SubscribeData
  unsubscribe: Static<typeof ChannelData>
  query: DocumentSnapshot | CollectionQueryResult
  submit: SubmitResult
  presence: Static<(typeof PresenceReply)['properties']['data']>
  ping: Static<(typeof PongFrame)['properties']['data']>
  disconnect: Static<(typeof DisconnectFrame)['properties']['data']>
}
