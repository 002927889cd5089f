import { type Static, t } from 'elysia'
import { NAME_PATTERN } from './channels.ts'

/**
 * One TypeBox schema per client message type. `ClientMessage` is their
 * discriminated union (on `type`); validation picks the member by `type`
 * first so that errors name the field that was wrong (see validate.ts).
 * Unknown extra fields are ignored, as ShareDB does.
 */

const MessageId = t.Union([t.String({ maxLength: 256 }), t.Number()], {
  description: 'Echoed verbatim in the reply',
})
const ClientTimestamp = t.Union([t.Number(), t.String({ maxLength: 64 })])
const Collection = t.String({ pattern: NAME_PATTERN, description: 'Collection name' })
const DocumentId = t.String({ pattern: NAME_PATTERN, description: 'Document id' })
const Version = t.Integer({ minimum: 0 })

const base = {
  id: t.Optional(MessageId),
  timestamp: t.Optional(ClientTimestamp),
}

/** A json0 path step: an object key or an array index. */
export const PathStep = t.Union([t.String(), t.Integer({ minimum: 0 })])
/** One json0 component; its op keys are checked by documents/json0.ts. */
export const OpComponent = t.Object({ p: t.Array(PathStep) }, { additionalProperties: true })
export const Op = t.Array(OpComponent)

export const ConnectMessage = t.Object({
  type: t.Literal('connect'),
  ...base,
  data: t.Optional(
    t.Object({
      client: t.Optional(t.String({ maxLength: 256 })),
      /** A fresh token (auth mode), before the current one expires. */
      token: t.Optional(t.String({ maxLength: 8192 })),
    }),
  ),
})

export const CollectionSince = t.Object({ epoch: t.String(), offset: Version })
export const DocumentSince = t.Object({ v: Version })

export const SubscribeMessage = t.Object({
  type: t.Literal('subscribe'),
  ...base,
  collection: Collection,
  document: t.Optional(DocumentId),
  since: t.Optional(t.Union([CollectionSince, DocumentSince])),
})

export const UnsubscribeMessage = t.Object({
  type: t.Literal('unsubscribe'),
  ...base,
  collection: Collection,
  document: t.Optional(DocumentId),
})

export const QueryMessage = t.Object({
  type: t.Literal('query'),
  ...base,
  collection: Collection,
  document: t.Optional(DocumentId),
  data: t.Optional(
    t.Object({
      ids: t.Optional(t.Array(DocumentId, { maxItems: 1000 })),
      limit: t.Optional(t.Integer({ minimum: 1, maximum: 1000 })),
    }),
  ),
})

export const SubmitMessage = t.Object({
  type: t.Literal('submit'),
  ...base,
  collection: Collection,
  document: DocumentId,
  v: t.Optional(Version),
  op: t.Optional(Op),
  operation: t.Optional(Op),
  create: t.Optional(t.Object({ type: t.Optional(t.Literal('json0')), data: t.Unknown() })),
  del: t.Optional(t.Literal(true)),
  src: t.Optional(t.String({ minLength: 1, maxLength: 128 })),
  seq: t.Optional(t.Integer({ minimum: 0 })),
})

export const PresenceMessage = t.Object({
  type: t.Literal('presence'),
  ...base,
  collection: Collection,
  document: t.Optional(DocumentId),
  data: t.Unknown(),
})

export const PingMessage = t.Object({ type: t.Literal('ping'), ...base })
export const DisconnectMessage = t.Object({ type: t.Literal('disconnect'), ...base })

export const clientMessageSchemas = {
  connect: ConnectMessage,
  subscribe: SubscribeMessage,
  unsubscribe: UnsubscribeMessage,
  query: QueryMessage,
  submit: SubmitMessage,
  presence: PresenceMessage,
  ping: PingMessage,
  disconnect: DisconnectMessage,
} as const

export const ClientMessage = t.Union(Object.values(clientMessageSchemas))

export type ClientMessageType = keyof typeof clientMessageSchemas
export type ClientMessage = Static<typeof ClientMessage>
export type MessageOf<K extends ClientMessageType> = Static<(typeof clientMessageSchemas)[K]>
export type MessageIdValue = Static<typeof MessageId>
