import type { Server } from 'bun'
import { Elysia, status, t } from 'elysia'
import type { Gate } from '../auth/gate.ts'
import type { Documents, SubmitRequest } from '../documents/documents.ts'
import type { OpComponent } from '../documents/json0.ts'
import type { Connection } from '../hub/connection.ts'
import type { Hub } from '../hub/hub.ts'
import { total } from '../hub/stats.ts'
import type { Presence } from '../presence/presence.ts'
import type { SessionStore } from '../presence/sessions.ts'
import { NAME_PATTERN, parseChannel } from '../protocol/channels.ts'
import { encode } from '../protocol/envelope.ts'
import { badRequest } from '../protocol/errors.ts'
import { JsonInteger, Op } from '../protocol/messages.ts'
import { entryMessage } from '../streams/entry.ts'
import type { Streams } from '../streams/streams.ts'
import { queryInteger } from './query-params.ts'

const Name = t.String({ pattern: NAME_PATTERN })
const ErrorReply = t.Object({
  error: t.Object({
    code: t.Integer(),
    message: t.String(),
    details: t.Optional(t.Record(t.String(), t.Unknown())),
  }),
})
const PublishReply = t.Object(
  {
    v: t.Integer({ description: 'The version the op was applied at; the document is now v + 1' }),
    offset: t.Integer({ description: "The op's offset in its collection stream" }),
  },
  { examples: [{ v: 7, offset: 1042 }] },
)
const PresenceReply = t.Object({
  channel: t.String(),
  mode: t.Union([t.Literal('full'), t.Literal('count'), t.Literal('off')]),
  connections: t.Integer(),
  users: t.Integer(),
  members: t.Optional(
    t.Array(
      t.Object({
        user_id: t.String(),
        connections: t.Array(
          t.Object({
            connection_id: t.String(),
            session_id: t.String(),
            state: t.Unknown(),
            joined_at: t.String({ format: 'date-time' }),
          }),
        ),
      }),
    ),
  ),
})
const exampleOp = [{ p: ['fields', 'fld1'], oi: 'new value', od: 'old value' }]

export interface ApiParts {
  hub: Hub
  documents: Documents
  streams: Streams
  presence: Presence
  sessions: SessionStore
  gate: Gate
}

/**
 * The server API's guard (also for /metrics and /admin): ADMIN_TOKEN as a
 * Bearer token, or loopback callers when no ADMIN_TOKEN is set.
 */
export function adminGuard(gate: Gate, options: { queryToken?: boolean } = {}) {
  return ({ request, server }: { request: Request; server: Server<unknown> | null }) => {
    // The dashboard page is opened by a browser, which cannot send a header.
    const queryToken = options.queryToken
      ? (new URL(request.url).searchParams.get('token') ?? undefined)
      : undefined
    // The peer itself: a forwarded address never counts as loopback.
    const refusal = gate.admitAdmin(request, server?.requestIP(request)?.address, queryToken)
    if (refusal)
      return status(refusal.status, { error: { code: refusal.status, message: refusal.message } })
  }
}

const iso = (ms: number) => new Date(ms).toISOString()

/** A live connection as the online and sessions routes show it. */
function liveSession(connection: Connection) {
  return {
    connection_id: connection.id,
    session_id: connection.sessionId,
    client: connection.client ?? null,
    user_agent: connection.userAgent,
    remote_address: connection.remoteAddress,
    connected_at: iso(connection.connectedAt),
    last_seen: iso(connection.lastSeen),
  }
}

const Session = t.Object({
  connection_id: t.String(),
  session_id: t.String(),
  client: t.Nullable(t.String()),
  user_agent: t.Nullable(t.String()),
  remote_address: t.Nullable(t.String()),
  connected_at: t.String({ format: 'date-time' }),
  last_seen: t.String({ format: 'date-time' }),
})

/** The REST server API under /api/ws (the table app's backend calls it). */
export function apiRoutes({ hub, documents, streams, presence, sessions, gate }: ApiParts) {
  const publish = (collection: string, document: string, operation: OpComponent[], v?: number) => {
    const request: SubmitRequest = { collection, document, op: operation, source: 'server' }
    if (v !== undefined) request.v = v
    return documents.publish(request).then(({ v: at, offset }) => ({ v: at, offset }))
  }
  const publishDetail = (summary: string, description: string) => ({
    tags: ['publish'],
    summary,
    description: `${description} Goes through the same path as a client submit: versioned, stored, then fanned out to subscribers of the document and of its collection. 400 when the op cannot apply to a held snapshot (nothing is stored), 409 when \`v\` is too old to transform, 413 when the op has more than MAX_OP_COMPONENTS components, would make the document's JSON larger than MAX_DOCUMENT_SIZE (nothing is stored), or the body is over MAX_DOCUMENT_SIZE + 64 KiB.`,
    responses: {
      200: { description: 'Applied and stored' },
      400: { description: 'Invalid op' },
      409: { description: 'Version conflict' },
      413: { description: 'Too many components, document or body too large' },
    },
  })
  const errors = { 400: ErrorReply, 404: ErrorReply, 409: ErrorReply, 413: ErrorReply }

  return new Elysia({ name: 'api-routes', prefix: '/api/ws' })
    .onBeforeHandle(adminGuard(gate))
    .get(
      '/stats',
      () => ({
        connections: hub.connectionCount,
        users: hub.userCount,
        channels: hub.channelCount,
        subscriptions: hub.totalSubscriptions,
        messages: {
          in: total(hub.stats.messagesIn),
          out: total(hub.stats.messagesOut),
          in_by_type: hub.stats.messagesIn,
          out_by_type: hub.stats.messagesOut,
        },
        errors: { total: total(hub.stats.errors), by_code: hub.stats.errors },
        uptime: Math.floor((Date.now() - hub.stats.startedAt) / 1000),
      }),
      {
        detail: {
          tags: ['stats'],
          summary: 'Live counters',
          description:
            'Connections, distinct users, channels with at least one subscriber, logical subscriptions, messages in (client frames, by type; `invalid` for frames that were not a message) and out (frames sent, by type, one per recipient), errors sent by code, uptime in seconds.',
        },
      },
    )
    .post(
      '/broadcast/channel',
      async ({ body }) => {
        const ref = parseChannel(body.channel)
        const { offset, delivered } = await streams.publishMessage(ref, body.message, body.exclude)
        return { delivered, offset }
      },
      {
        body: t.Object(
          {
            channel: t.String({ description: '`collection` or `collection.document`' }),
            message: t.Unknown({ description: 'Any JSON; delivered as `data.message`' }),
            exclude: t.Optional(
              t.Array(t.String(), { description: 'connection_ids not to send it to live' }),
            ),
          },
          { examples: [{ channel: 'record_tbl1', message: { kind: 'reload' } }] },
        ),
        response: {
          200: t.Object({
            delivered: t.Integer({ description: 'Connections it was sent to live, each once' }),
            offset: t.Integer({ description: "Its offset in the collection's stream" }),
          }),
          400: ErrorReply,
        },
        detail: {
          tags: ['broadcast'],
          summary: 'Broadcast to a channel',
          description:
            'Sends `{type:"message", data:{message, offset, epoch}}` to the subscribers of the channel (and, for a document channel, of its collection). The message takes the next offset of its collection, is stored before it is sent, and is replayed to clients resuming with `since`.',
        },
      },
    )
    .post(
      '/broadcast/user',
      ({ body }) => {
        // Elysia lets a required t.Unknown() be absent; null is a message.
        if (body.message === undefined)
          throw badRequest('message is required', { field: 'message' })
        const frame = encode({ type: 'message', data: { message: body.message } })
        return { delivered: hub.publishToUser(body.user_id, 'message', frame) }
      },
      {
        body: t.Object(
          { user_id: t.String({ minLength: 1 }), message: t.Unknown() },
          { examples: [{ user_id: 'usr1', message: { notice: 'export ready' } }] },
        ),
        response: { 200: t.Object({ delivered: t.Integer() }), 400: ErrorReply },
        detail: {
          tags: ['broadcast'],
          summary: "Send to a user's live connections",
          description:
            'Not part of any stream: no offset, not stored, not replayed. `delivered` counts the live connections of the user.',
        },
      },
    )
    .post(
      '/publish/document',
      ({ body }) => publish(body.collection, body.document, body.operation, body.v),
      {
        body: t.Object(
          {
            collection: Name,
            document: Name,
            operation: Op,
            v: t.Optional(
              JsonInteger({ minimum: 0, description: 'Omit to apply at the current version' }),
            ),
          },
          { examples: [{ collection: 'record_tbl1', document: 'rec1', operation: exampleOp }] },
        ),
        response: { 200: PublishReply, ...errors },
        detail: publishDetail(
          'Publish an op on any document',
          'A json0 op on `collection.document`.',
        ),
      },
    )
    .post(
      '/publish/record',
      ({ body }) => publish(`record_${body.table_id}`, body.record_id, body.operation),
      {
        body: t.Object(
          { table_id: Name, record_id: Name, operation: Op },
          { examples: [{ table_id: 'tbl1', record_id: 'rec1', operation: exampleOp }] },
        ),
        response: { 200: PublishReply, ...errors },
        detail: publishDetail('Publish a record op', 'Collection `record_{table_id}`.'),
      },
    )
    .post(
      '/publish/view',
      ({ body }) => publish(`view_${body.table_id}`, body.view_id, body.operation),
      {
        body: t.Object(
          { table_id: Name, view_id: Name, operation: Op },
          {
            examples: [
              { table_id: 'tbl1', view_id: 'viw1', operation: [{ p: ['name'], oi: 'Grid' }] },
            ],
          },
        ),
        response: { 200: PublishReply, ...errors },
        detail: publishDetail('Publish a view op', 'Collection `view_{table_id}`.'),
      },
    )
    .post(
      '/publish/field',
      ({ body }) => publish(`field_${body.table_id}`, body.field_id, body.operation),
      {
        body: t.Object(
          { table_id: Name, field_id: Name, operation: Op },
          {
            examples: [
              { table_id: 'tbl1', field_id: 'fld1', operation: [{ p: ['name'], oi: 'Status' }] },
            ],
          },
        ),
        response: { 200: PublishReply, ...errors },
        detail: publishDetail('Publish a field op', 'Collection `field_{table_id}`.'),
      },
    )
    .post(
      '/publish/table',
      ({ body }) => publish(`table_${body.base_id}`, body.table_id, body.operation),
      {
        body: t.Object(
          { base_id: Name, table_id: Name, operation: Op },
          {
            examples: [
              { base_id: 'bse1', table_id: 'tbl1', operation: [{ p: ['name'], oi: 'Tasks' }] },
            ],
          },
        ),
        response: { 200: PublishReply, ...errors },
        detail: publishDetail(
          'Publish a table op',
          'Collection `table_{base_id}` (table metadata).',
        ),
      },
    )
    .get(
      '/history',
      ({ query }) => {
        const ref = parseChannel(query.channel)
        const since = query.since ?? 0
        const entries = streams.history(ref, since, query.limit ?? 100)
        return {
          channel: query.channel,
          epoch: streams.epoch,
          head: streams.head(ref.collection),
          messages: entries.map((entry) => ({
            ...entryMessage(entry, streams.epoch),
            timestamp: new Date(entry.createdAt).toISOString(),
          })),
        }
      },
      {
        query: t.Object({
          channel: t.String({
            description: '`collection`, or `collection.document` for one document',
            examples: ['record_tbl1'],
          }),
          since: t.Optional(
            queryInteger('since', {
              minimum: 0,
              description: 'Exclusive: entries with offset > since',
            }),
          ),
          limit: t.Optional(queryInteger('limit', { minimum: 1, maximum: 1000, default: 100 })),
        }),
        detail: {
          tags: ['history'],
          summary: 'Stored messages of a collection',
          description:
            'The held entries after `since`, oldest first, in the same form clients receive them (`op` and `message` frames). `head` is the last offset handed out; entries older than the retention limits are gone.',
        },
      },
    )
    .get('/presence', ({ query }) => presence.view(parseChannel(query.channel)), {
      query: t.Object({
        channel: t.String({
          description: '`collection` or `collection.document`',
          examples: ['record_tbl1.rec1'],
        }),
      }),
      // Declared (not inferred) so that `App` spells the reply out for Treaty clients.
      response: { 200: PresenceReply, 400: ErrorReply },
      detail: {
        tags: ['presence'],
        summary: 'Who is in a channel now',
        description:
          'The picture a subscriber of the channel gets: in `full` mode every user present, with one entry (connection, session, presence state, join time) per connection; in `count` mode the numbers only; `off` when presence is switched off for the collection. `mode` is the mode in effect: a `full` channel with more than `PRESENCE_MAX_MEMBERS` connections says `count`.',
      },
    })
    .get(
      '/online',
      () => {
        const users = [...hub.users()].map(([user_id, connections]) => ({
          user_id,
          sessions: [...connections].map(liveSession),
        }))
        return { users: users.length, online: users }
      },
      {
        response: {
          200: t.Object({
            users: t.Integer(),
            online: t.Array(t.Object({ user_id: t.String(), sessions: t.Array(Session) })),
          }),
        },
        detail: {
          tags: ['presence'],
          summary: 'Online users',
          description:
            'A user is online while any of their connections is open; each live connection is one session.',
        },
      },
    )
    .get(
      '/sessions',
      ({ query }) => {
        const rows = sessions.list(query.user_id, query.limit ?? 100)
        return {
          user_id: query.user_id,
          sessions: rows.map((row) => {
            const connection = hub.getById(row.connectionId)
            const live = connection?.open === true
            return {
              ...(live && connection
                ? liveSession(connection)
                : {
                    connection_id: row.connectionId,
                    session_id: row.sessionId,
                    client: row.client,
                    user_agent: row.userAgent,
                    remote_address: row.remoteAddress,
                    connected_at: iso(row.connectedAt),
                    last_seen: iso(row.lastSeen),
                  }),
              live,
              ended_at: live || row.endedAt === null ? null : iso(row.endedAt),
              end_reason: live ? null : row.endReason,
            }
          }),
        }
      },
      {
        query: t.Object({
          user_id: t.String({ minLength: 1, examples: ['usr1'] }),
          limit: t.Optional(queryInteger('limit', { minimum: 1, maximum: 1000, default: 100 })),
        }),
        detail: {
          tags: ['presence'],
          summary: "A user's sessions, live and ended",
          description:
            'Newest first. `end_reason` is `client` (sent disconnect), `client_close` (closed the socket), `timeout`, `shutdown`, `message_too_big`, `token_expired`, `rate_limited`, `slow_consumer`, or `server_restart` (open when the server crashed). Ended sessions are kept for SESSION_RETENTION, and at most SESSION_MAX_ROWS sessions in all (the ones that ended first go first).',
        },
      },
    )
    .get(
      '/documents/:collection/:id',
      ({ params }) => documents.snapshot(params.collection, params.id),
      {
        params: t.Object({
          collection: t.String({ pattern: NAME_PATTERN, examples: ['record_tbl1'] }),
          id: t.String({ pattern: NAME_PATTERN, examples: ['rec1'] }),
        }),
        response: {
          200: t.Object({ v: t.Integer(), data: t.Unknown() }),
          404: ErrorReply,
        },
        detail: {
          tags: ['documents'],
          summary: 'A document snapshot',
          description:
            '`data` is null for a document whose data lives elsewhere (never created here) or that was deleted. 404 only when the document has no version at all.',
        },
      },
    )
}
