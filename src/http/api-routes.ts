import type { Server } from 'bun'
import { Elysia, status, t } from 'elysia'
import type { Gate } from '../auth/gate.ts'
import { type ClusterNode, liveSession, localOnline } from '../cluster/cluster.ts'
import type { Documents } from '../documents/documents.ts'
import type { Hub } from '../hub/hub.ts'
import { addCounts, total } from '../hub/stats.ts'
import type { Presence } from '../presence/presence.ts'
import type { SessionStore } from '../presence/sessions.ts'
import { NAME_PATTERN, parseChannel } from '../protocol/channels.ts'
import { entryMessage } from '../streams/entry.ts'
import type { Streams } from '../streams/streams.ts'
import { publishActions, publishBodies, publishTarget } from './publish-bodies.ts'
import { queryInteger } from './query-params.ts'

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
/** Cluster answers when Redis is unreachable: what this node knows (see ClusterNode). */
const RedisDown = t.Optional(
  t.Literal('down', { description: 'Redis is unreachable: the answer is what this node knows' }),
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
            node_id: t.String({ description: 'The process the connection is on' }),
          }),
        ),
      }),
    ),
  ),
  redis: RedisDown,
})

export interface ApiParts {
  hub: Hub
  documents: Documents
  streams: Streams
  presence: Presence
  sessions: SessionStore
  gate: Gate
  /** NODE_ID: this process's name in answers. */
  nodeId: string
  /** Cluster mode (REDIS_URL): the routes answer for every node. */
  cluster?: ClusterNode
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

const Session = t.Object({
  connection_id: t.String(),
  session_id: t.String(),
  client: t.Nullable(t.String()),
  user_agent: t.Nullable(t.String()),
  remote_address: t.Nullable(t.String()),
  connected_at: t.String({ format: 'date-time' }),
  last_seen: t.String({ format: 'date-time' }),
  node_id: t.String({ description: 'The process the connection is (or was) on' }),
})

/**
 * GET /stats: this node's counters, and in a cluster every live node's summed.
 * The other nodes' counters come from their last heartbeat (at most 2 s old;
 * a node that stopped beating is counted until it is declared lost, 10 s);
 * `users` is exact (distinct users over the cluster, from Redis).
 */
async function clusterStats(hub: Hub, nodeId: string, cluster: ClusterNode | undefined) {
  const { stats } = hub
  const now = Date.now()
  const nodes = [
    {
      node_id: nodeId,
      connections: hub.connectionCount,
      subscriptions: hub.totalSubscriptions,
      started_at: iso(stats.startedAt),
      last_seen: iso(now),
    },
  ]
  let { connectionCount: connections, userCount: users, channelCount: channels } = hub
  let subscriptions = hub.totalSubscriptions
  const messagesIn = { ...stats.messagesIn }
  const messagesOut = { ...stats.messagesOut }
  const errors = { ...stats.errors }
  let redis: 'down' | undefined
  if (cluster)
    try {
      const live = await cluster.nodes()
      users = live.users
      for (const node of live.nodes) {
        if (node.nodeId === nodeId) continue // this one's are live above
        nodes.push({
          node_id: node.nodeId,
          connections: node.connections,
          subscriptions: node.subscriptions,
          started_at: iso(node.startedAt),
          last_seen: iso(node.lastSeen),
        })
        connections += node.connections
        channels += node.channels
        subscriptions += node.subscriptions
        addCounts(messagesIn, node.messagesIn)
        addCounts(messagesOut, node.messagesOut)
        addCounts(errors, node.errors)
      }
    } catch {
      redis = 'down'
    }
  return {
    connections,
    users,
    channels,
    subscriptions,
    messages: {
      in: total(messagesIn),
      out: total(messagesOut),
      in_by_type: messagesIn,
      out_by_type: messagesOut,
    },
    errors: { total: total(errors), by_code: errors },
    uptime: Math.floor((now - stats.startedAt) / 1000),
    nodes,
    ...(redis && { redis }),
  }
}

/** The REST server API under /api/ws (the table app's backend calls it). */
export function apiRoutes({
  hub,
  documents,
  streams,
  presence,
  sessions,
  gate,
  nodeId,
  cluster,
}: ApiParts) {
  const actions = publishActions({ hub, documents, streams, cluster })
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
    .get('/stats', () => clusterStats(hub, nodeId, cluster), {
      detail: {
        tags: ['stats'],
        summary: 'Live counters',
        description:
          'Connections, distinct users, channels with at least one subscriber, logical subscriptions, messages in (client frames, by type; `invalid` for frames that were not a message) and out (frames sent, by type, one per recipient), errors sent by code, this process\'s uptime in seconds, and `nodes`: every live process with its connections, subscriptions, start and last heartbeat. In a cluster the counts are summed over the live processes as of their last heartbeat (at most 2 s old; `channels` counts a channel once per process following it) and `users` is exact over the cluster; with Redis unreachable, this process\'s alone and `redis: "down"`.',
      },
    })
    .post('/broadcast/channel', ({ body }) => actions.broadcastChannel(body), {
      body: publishBodies['broadcast/channel'],
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
    })
    .post(
      '/broadcast/user',
      ({ body }) => actions.sendToUser(body.user_id, actions.userFrame(body)),
      {
        body: publishBodies['broadcast/user'],
        response: {
          200: t.Object({
            delivered: t.Integer({
              description: "The user's live connections on the process that answered, sent to",
            }),
            nodes: t.Optional(
              t.Integer({
                description:
                  "Cluster mode: processes holding the user's connections it was handed to, the answering one included when it delivered any",
              }),
            ),
            redis: RedisDown,
          }),
          400: ErrorReply,
        },
        detail: {
          tags: ['broadcast'],
          summary: "Send to a user's live connections",
          description:
            "Not part of any stream: no offset, not stored, not replayed. Reaches the user's connections on every process of a cluster: `delivered` counts the ones on the process that answered, `nodes` the processes it was handed to (through Redis, which tells how many received it; each sends to the user's connections it holds). With Redis unreachable, this process's connections only and `redis: \"down\"`.",
        },
      },
    )
    .post(
      '/publish/document',
      ({ body }) => actions.publish(publishTarget('publish/document', body)),
      {
        body: publishBodies['publish/document'],
        response: { 200: PublishReply, ...errors },
        detail: publishDetail(
          'Publish an op on any document',
          'A json0 op on `collection.document`.',
        ),
      },
    )
    .post('/publish/record', ({ body }) => actions.publish(publishTarget('publish/record', body)), {
      body: publishBodies['publish/record'],
      response: { 200: PublishReply, ...errors },
      detail: publishDetail('Publish a record op', 'Collection `record_{table_id}`.'),
    })
    .post('/publish/view', ({ body }) => actions.publish(publishTarget('publish/view', body)), {
      body: publishBodies['publish/view'],
      response: { 200: PublishReply, ...errors },
      detail: publishDetail('Publish a view op', 'Collection `view_{table_id}`.'),
    })
    .post('/publish/field', ({ body }) => actions.publish(publishTarget('publish/field', body)), {
      body: publishBodies['publish/field'],
      response: { 200: PublishReply, ...errors },
      detail: publishDetail('Publish a field op', 'Collection `field_{table_id}`.'),
    })
    .post('/publish/table', ({ body }) => actions.publish(publishTarget('publish/table', body)), {
      body: publishBodies['publish/table'],
      response: { 200: PublishReply, ...errors },
      detail: publishDetail('Publish a table op', 'Collection `table_{base_id}` (table metadata).'),
    })
    .get(
      '/history',
      async ({ query }) => {
        const ref = parseChannel(query.channel)
        const since = query.since ?? 0
        const head = await streams.head(ref.collection)
        const entries = await streams.history(ref, since, query.limit ?? 100)
        return {
          channel: query.channel,
          epoch: streams.epoch,
          head,
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
    .get('/presence', async ({ query }) => presence.view(parseChannel(query.channel)), {
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
          'The picture a subscriber of the channel gets: in `full` mode every user present, with one entry (connection, session, presence state, join time, the process it is on) per connection; in `count` mode the numbers only; `off` when presence is switched off for the collection. `mode` is the mode in effect: a `full` channel with more than `PRESENCE_MAX_MEMBERS` connections says `count`. In a cluster, every process\'s members (read from Redis); with Redis unreachable, what this process knows and `redis: "down"`.',
      },
    })
    .get(
      '/online',
      async () => {
        if (!cluster) {
          const online = localOnline(hub, nodeId)
          return { users: online.length, online }
        }
        const { users, incomplete, redis } = await cluster.online()
        return {
          users: users.length,
          online: users,
          ...(incomplete && { incomplete }),
          ...(redis && { redis }),
        }
      },
      {
        response: {
          200: t.Object({
            users: t.Integer(),
            online: t.Array(t.Object({ user_id: t.String(), sessions: t.Array(Session) })),
            incomplete: t.Optional(
              t.Literal(true, {
                description: 'A process did not answer in time: its users are missing',
              }),
            ),
            redis: RedisDown,
          }),
        },
        detail: {
          tags: ['presence'],
          summary: 'Online users',
          description:
            'A user is online while any of their connections is open; each live connection is one session, with the process it is on. In a cluster every process is asked now; one that does not answer within 1.5 s is left out (`incomplete: true`); with Redis unreachable, this process\'s users and `redis: "down"`.',
        },
      },
    )
    .get(
      '/sessions',
      async ({ query }) => {
        const rows = await sessions.list(query.user_id, query.limit ?? 100)
        return {
          user_id: query.user_id,
          sessions: rows.map((row) => {
            const connection = hub.getById(row.connectionId)
            const here = connection?.open === true
            // Another node's open session is live: nodes end theirs, survivors a lost node's.
            const live =
              here || (cluster !== undefined && row.nodeId !== nodeId && row.endedAt === null)
            return {
              ...(here && connection
                ? liveSession(connection, nodeId)
                : {
                    connection_id: row.connectionId,
                    session_id: row.sessionId,
                    client: row.client,
                    user_agent: row.userAgent,
                    remote_address: row.remoteAddress,
                    connected_at: iso(row.connectedAt),
                    last_seen: iso(row.lastSeen),
                    node_id: row.nodeId,
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
            'Newest first. `end_reason` is `client` (sent disconnect), `client_close` (closed the socket), `timeout`, `shutdown`, `message_too_big`, `token_expired`, `rate_limited`, `slow_consumer`, `server_restart` (open when the server crashed), or `node_lost` (its process went silent and another one ended it). `node_id` is the process the connection is (or was) on; in a cluster an open session on another live process is `live`. Ended sessions are kept for SESSION_RETENTION, and at most SESSION_MAX_ROWS sessions in all (the ones that ended first go first).',
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
