import { index, integer, primaryKey, sqliteTable, text } from 'drizzle-orm/sqlite-core'

/** Key/value facts about the store itself; `epoch` names the history stream. */
export const meta = sqliteTable('meta', {
  key: text('key').primaryKey(),
  value: text('value').notNull(),
})

/** The last offset handed out per collection; outlives pruned entries so offsets never repeat. */
export const streams = sqliteTable('streams', {
  collection: text('collection').primaryKey(),
  head: integer('head').notNull(),
})

/** Every message published on a collection, numbered by `offset` (1, 2, 3 … per collection). */
export const streamEntries = sqliteTable(
  'stream_entries',
  {
    collection: text('collection').notNull(),
    offset: integer('offset').notNull(),
    /** null for a message on the collection channel itself */
    document: text('document'),
    /** the version an op/create/del was applied at; null for messages */
    v: integer('v'),
    kind: text('kind', { enum: ['op', 'create', 'del', 'message'] }).notNull(),
    /** JSON of the op list, the created snapshot, or the broadcast message */
    payload: text('payload').notNull(),
    source: text('source', { enum: ['client', 'server'] }).notNull(),
    src: text('src'),
    seq: integer('seq'),
    /** ms since the epoch */
    createdAt: integer('created_at').notNull(),
    /**
     * The offset of the document's previous op/create/del: a document's
     * changes form a chain walked by primary-key lookups, which is far
     * cheaper to keep than an index on (collection, document) that every
     * insert would update at a random place.
     */
    prevOffset: integer('prev_offset'),
  },
  (table) => [primaryKey({ columns: [table.collection, table.offset] })],
)

/** Current state of every document that has a version (snapshot only when created through us). */
export const documents = sqliteTable(
  'documents',
  {
    collection: text('collection').notNull(),
    id: text('id').notNull(),
    v: integer('v').notNull(),
    /** 'json0' while a snapshot is held; null for external or deleted documents */
    type: text('type'),
    /** JSON of the snapshot, or null */
    data: text('data'),
    deleted: integer('deleted', { mode: 'boolean' }).notNull().default(false),
    updatedAt: integer('updated_at').notNull(),
    /** The offset of the document's latest change: the head of its chain in stream_entries. */
    lastOffset: integer('last_offset'),
  },
  (table) => [primaryKey({ columns: [table.collection, table.id] })],
)

/** One row per WebSocket connection, live or ended. */
export const sessions = sqliteTable(
  'sessions',
  {
    connectionId: text('connection_id').primaryKey(),
    userId: text('user_id').notNull(),
    sessionId: text('session_id').notNull(),
    /** The client's name and version, from `connect` `{data:{client}}`. */
    client: text('client'),
    userAgent: text('user_agent'),
    remoteAddress: text('remote_address'),
    /** The process the connection is (or was) on (NODE_ID): a start closes only its own dangling sessions. */
    nodeId: text('node_id').notNull().default(''),
    connectedAt: integer('connected_at').notNull(),
    /** Written every few seconds for live connections, not on every message. */
    lastSeen: integer('last_seen').notNull(),
    endedAt: integer('ended_at'),
    endReason: text('end_reason'),
  },
  (table) => [
    index('sessions_user').on(table.userId, table.connectedAt),
    index('sessions_ended').on(table.endedAt),
  ],
)

/**
 * Intake stream entries whose effect is committed: written in the same
 * transaction as the effect, so an entry redelivered after a crash before
 * its XACK is acknowledged without a second effect (src/intake/).
 */
export const intakeApplied = sqliteTable(
  'intake_applied',
  {
    stream: text('stream').notNull(),
    entryId: text('entry_id').notNull(),
    appliedAt: integer('applied_at').notNull(),
  },
  (table) => [
    primaryKey({ columns: [table.stream, table.entryId] }),
    index('intake_applied_at').on(table.appliedAt),
  ],
)
