import { sql } from 'drizzle-orm'
import { bigint, boolean, customType, index, pgTable, primaryKey, text } from 'drizzle-orm/pg-core'

/**
 * The SQLite store's tables in PostgreSQL (src/db/schema.ts has the why of
 * each column). Offsets, versions and times are int8 read as numbers (all
 * below 2^53); JSON is kept as text, as SQLite keeps it (drizzle 0.45 with
 * bun-sql double-encodes json/jsonb).
 */
const int8 = (name: string) => bigint(name, { mode: 'number' })

/**
 * Text compared byte by byte, as SQLite's BINARY collation does: document
 * lists are ordered by id the same on both stores, whatever the database's
 * locale, and the primary key's index still serves that order.
 */
const byteText = customType<{ data: string }>({ dataType: () => 'text COLLATE "C"' })

export const meta = pgTable('meta', {
  key: text('key').primaryKey(),
  value: text('value').notNull(),
})

export const streams = pgTable('streams', {
  collection: text('collection').primaryKey(),
  head: int8('head').notNull(),
})

export const streamEntries = pgTable(
  'stream_entries',
  {
    collection: text('collection').notNull(),
    offset: int8('offset').notNull(),
    document: text('document'),
    v: int8('v'),
    kind: text('kind', { enum: ['op', 'create', 'del', 'message'] }).notNull(),
    payload: text('payload').notNull(),
    source: text('source', { enum: ['client', 'server'] }).notNull(),
    src: text('src'),
    seq: int8('seq'),
    createdAt: int8('created_at').notNull(),
    prevOffset: int8('prev_offset'),
  },
  (table) => [primaryKey({ columns: [table.collection, table.offset] })],
)

export const documents = pgTable(
  'documents',
  {
    collection: text('collection').notNull(),
    id: byteText('id').notNull(),
    v: int8('v').notNull(),
    type: text('type'),
    data: text('data'),
    deleted: boolean('deleted').notNull().default(false),
    updatedAt: int8('updated_at').notNull(),
    lastOffset: int8('last_offset'),
  },
  (table) => [primaryKey({ columns: [table.collection, table.id] })],
)

export const sessions = pgTable(
  'sessions',
  {
    connectionId: text('connection_id').primaryKey(),
    userId: text('user_id').notNull(),
    sessionId: text('session_id').notNull(),
    client: text('client'),
    userAgent: text('user_agent'),
    remoteAddress: text('remote_address'),
    /** The process the connection is (or was) on. */
    nodeId: text('node_id').notNull(),
    connectedAt: int8('connected_at').notNull(),
    lastSeen: int8('last_seen').notNull(),
    endedAt: int8('ended_at'),
    endReason: text('end_reason'),
  },
  (table) => [
    index('sessions_user').on(table.userId, table.connectedAt),
    index('sessions_ended').on(table.endedAt),
    // closeNode finds a node's open sessions without reading its ended ones.
    index('sessions_node_open').on(table.nodeId).where(sql`${table.endedAt} IS NULL`),
  ],
)

/** Intake stream entries whose effect is committed (src/db/schema.ts has the why). */
export const intakeApplied = pgTable(
  'intake_applied',
  {
    stream: text('stream').notNull(),
    entryId: text('entry_id').notNull(),
    appliedAt: int8('applied_at').notNull(),
  },
  (table) => [
    primaryKey({ columns: [table.stream, table.entryId] }),
    index('intake_applied_at').on(table.appliedAt),
  ],
)
