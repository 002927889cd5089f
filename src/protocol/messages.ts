import { type IntegerOptions, Type } from '@sinclair/typebox'
import { type Static, t } from 'elysia'
import { NAME_PATTERN } from './channels.ts'

/**
 * One TypeBox schema per client message type. `ClientMessage` is their
 * discriminated union (on `type`); validation picks the member by `type`
 * first so that errors name the field that was wrong (see validate.ts).
 * Unknown extra fields are ignored, as ShareDB does.
 *
 * Every number here is TypeBox's own `Type.Integer`/`Type.Number`, never
 * Elysia's `t.Integer`: that one is a union with numeric strings, decoded
 * only on Elysia's request path, so the socket's check-only validation would
 * let `"5"` through as a string. Non-finite numbers (`1e999` parses to
 * Infinity) fail TypeBox's number checks.
 */

/** A count or position: a JSON integer, exact in a double (REST bodies use it too). */
export const JsonInteger = (options: IntegerOptions) =>
  Type.Integer({ maximum: Number.MAX_SAFE_INTEGER, ...options })

const MessageId = t.Union([t.String({ maxLength: 256 }), Type.Number()], {
  description: 'Echoed verbatim in the reply',
})
const ClientTimestamp = t.Union([Type.Number(), t.String({ maxLength: 64 })])
const Collection = t.String({ pattern: NAME_PATTERN, description: 'Collection name' })
const DocumentId = t.String({ pattern: NAME_PATTERN, description: 'Document id' })
const Version = JsonInteger({ minimum: 0 })

/**
 * Most steps in an op path. A path must exist in the snapshot (but its last
 * step), so a snapshot is at most this plus MAX_JSON_DEPTH (≤ 1000) deep:
 * far under the ~40,000 levels at which JSON.stringify and structuredClone
 * overflow the stack, which would make the document impossible to store.
 */
export const MAX_PATH_STEPS = 1000

const base = {
  id: t.Optional(MessageId),
  timestamp: t.Optional(ClientTimestamp),
}

/** A json0 path step: an object key or an array index. */
export const PathStep = t.Union([t.String(), JsonInteger({ minimum: 0 })])
/** One json0 component; its op keys are checked by documents/json0.ts. */
export const OpComponent = t.Object(
  { p: t.Array(PathStep, { maxItems: MAX_PATH_STEPS }) },
  { additionalProperties: true },
)
/** Non-empty: an empty op would take a version and an offset for no change (docs/PROTOCOL.md). */
export const Op = t.Array(OpComponent, { minItems: 1 })

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
      limit: t.Optional(JsonInteger({ minimum: 1, maximum: 1000 })),
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
  seq: t.Optional(JsonInteger({ minimum: 0 })),
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
