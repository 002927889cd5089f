import { type IntegerOptions, type Static, Type } from '@sinclair/typebox'
import { NAME_PATTERN } from './channels.ts'

/**
 * One TypeBox schema per client message type. `ClientMessage` is their
 * discriminated union (on `type`); validation picks the member by `type`
 * first so that errors name the field that was wrong (see validate.ts).
 * Unknown extra fields are ignored, as ShareDB does.
 *
 * Plain TypeBox (never Elysia's `t`), so that the schemas and their types can
 * be shared with clients without pulling in the server framework. Elysia's
 * `t.Integer` in particular is a union with numeric strings, decoded only on
 * Elysia's request path, so the socket's check-only validation would let
 * `"5"` through as a string. Non-finite numbers (`1e999` parses to Infinity)
 * fail TypeBox's number checks.
 */

/** A count or position: a JSON integer, exact in a double (REST bodies use it too). */
export const JsonInteger = (options: IntegerOptions) =>
  Type.Integer({ maximum: Number.MAX_SAFE_INTEGER, ...options })

export const MessageId = Type.Union([Type.String({ maxLength: 256 }), Type.Number()], {
  description: 'Echoed verbatim in the reply',
})
const ClientTimestamp = Type.Union([Type.Number(), Type.String({ maxLength: 64 })], {
  description: 'ms since the epoch or ISO-8601; echoed in pong',
})
export const Collection = Type.String({ pattern: NAME_PATTERN, description: 'Collection name' })
export const DocumentId = Type.String({ pattern: NAME_PATTERN, description: 'Document id' })
export const Version = JsonInteger({ minimum: 0 })

/**
 * Most steps in an op path. A path must exist in the snapshot (but its last
 * step), so a snapshot is at most this plus MAX_JSON_DEPTH (≤ 1000) deep:
 * far under the ~40,000 levels at which JSON.stringify and structuredClone
 * overflow the stack, which would make the document impossible to store.
 */
export const MAX_PATH_STEPS = 1000

const base = {
  id: Type.Optional(MessageId),
  timestamp: Type.Optional(ClientTimestamp),
}

/** A json0 path step: an object key or an array index. */
export const PathStep = Type.Union([Type.String(), JsonInteger({ minimum: 0 })])
export type JsonPath = Array<string | number>

/** A text0 edit inside a string (json0's `{p, t: 'text0', o}` component). */
export type Text0Component = { p: number; i: string } | { p: number; d: string }

/**
 * One json0 component as the server takes it: object insert/replace/delete,
 * list insert/replace/delete/move, number add, a text0 edit, or the seed's
 * shorthand `{p, t, o}` ("set the value at p", stored as `{p, oi}`). `si`/`sd`
 * are absent on purpose: the server refuses them (use text0).
 */
export type Json0Component =
  | { p: JsonPath; oi: unknown; od?: unknown }
  | { p: JsonPath; od: unknown }
  | { p: JsonPath; li: unknown; ld?: unknown }
  | { p: JsonPath; ld: unknown }
  | { p: JsonPath; lm: number }
  | { p: JsonPath; na: number }
  | { p: JsonPath; t: 'text0'; o: Text0Component[] }
  | { p: JsonPath; t: string; o: unknown }
export type Json0Op = Json0Component[]

const instruction = (description: string) => Type.Optional(Type.Unknown({ description }))

/**
 * One json0 component. Its static type is the precise union above (so a
 * typed client or a Treaty body says what an op is); the check done here is
 * only the path and the known keys, because documents/json0.ts checks the
 * instruction and names the component and reason, which a failed schema
 * union ("Expected union value") would not.
 */
export const OpComponent = Type.Unsafe<Json0Component>(
  Type.Object(
    {
      p: Type.Array(PathStep, {
        maxItems: MAX_PATH_STEPS,
        description: 'Path: object keys and list indexes',
      }),
      oi: instruction('Object insert: the value set at p (replaces it, with od)'),
      od: instruction('Object delete: the value removed at p'),
      li: instruction('List insert: the value inserted at index p (replaces it, with ld)'),
      ld: instruction('List delete: the value removed at index p'),
      lm: instruction('List move: the index the item at p moves to'),
      na: instruction('Number add: a finite number added to the number at p'),
      t: instruction("Subtype: 'text0' for a text edit; any other with o sets the value at p"),
      o: instruction('The subtype op (text0: [{p, i} | {p, d}]), or the value set at p'),
    },
    {
      additionalProperties: true,
      description:
        'A json0 component: exactly one instruction (oi/od, li/ld, lm, na, or t+o) at path p',
    },
  ),
)
/** Non-empty: an empty op would take a version and an offset for no change (docs/PROTOCOL.md). */
export const Op = Type.Array(OpComponent, { minItems: 1 })

export const ConnectMessage = Type.Object({
  type: Type.Literal('connect'),
  ...base,
  data: Type.Optional(
    Type.Object({
      client: Type.Optional(
        Type.String({ maxLength: 256, description: 'A client name shown in sessions' }),
      ),
      /** A fresh token (auth mode), before the current one expires. */
      token: Type.Optional(Type.String({ maxLength: 8192, description: 'A fresh token' })),
    }),
  ),
})

export const CollectionSince = Type.Object({ epoch: Type.String(), offset: Version })
export const DocumentSince = Type.Object({ v: Version })

export const SubscribeMessage = Type.Object({
  type: Type.Literal('subscribe'),
  ...base,
  collection: Collection,
  document: Type.Optional(DocumentId),
  since: Type.Optional(Type.Union([CollectionSince, DocumentSince])),
})

export const UnsubscribeMessage = Type.Object({
  type: Type.Literal('unsubscribe'),
  ...base,
  collection: Collection,
  document: Type.Optional(DocumentId),
})

export const QueryMessage = Type.Object({
  type: Type.Literal('query'),
  ...base,
  collection: Collection,
  document: Type.Optional(DocumentId),
  data: Type.Optional(
    Type.Object({
      ids: Type.Optional(Type.Array(DocumentId, { maxItems: 1000 })),
      limit: Type.Optional(JsonInteger({ minimum: 1, maximum: 1000 })),
    }),
  ),
})

export const CreateData = Type.Object({
  type: Type.Optional(Type.Literal('json0')),
  data: Type.Unknown(),
})

export const SubmitMessage = Type.Object({
  type: Type.Literal('submit'),
  ...base,
  collection: Collection,
  document: DocumentId,
  v: Type.Optional(Version),
  op: Type.Optional(Op),
  operation: Type.Optional(Op),
  create: Type.Optional(CreateData),
  del: Type.Optional(Type.Literal(true)),
  src: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  seq: Type.Optional(JsonInteger({ minimum: 0 })),
})

export const PresenceMessage = Type.Object({
  type: Type.Literal('presence'),
  ...base,
  collection: Collection,
  document: Type.Optional(DocumentId),
  data: Type.Unknown({ description: 'Any JSON up to PRESENCE_MAX_SIZE; null clears' }),
})

export const PingMessage = Type.Object({ type: Type.Literal('ping'), ...base })
export const DisconnectMessage = Type.Object({ type: Type.Literal('disconnect'), ...base })

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

export const ClientMessage = Type.Union(Object.values(clientMessageSchemas))

export type ClientMessageType = keyof typeof clientMessageSchemas
export type ClientMessage = Static<typeof ClientMessage>
export type MessageOf<K extends ClientMessageType> = Static<(typeof clientMessageSchemas)[K]>
export type MessageIdValue = Static<typeof MessageId>
