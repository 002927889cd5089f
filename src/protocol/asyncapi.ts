import type { TSchema } from '@sinclair/typebox'
import { closeCodes } from './close.ts'
import { ErrorCode } from './errors.ts'
import { type ClientMessageType, clientMessageSchemas } from './messages.ts'
import { serverMessageSchemas } from './server-messages.ts'

/** What each request is answered with on success (the error reply is common to all). */
const replies: Record<ClientMessageType, keyof typeof serverMessageSchemas> = {
  connect: 'connected',
  subscribe: 'subscribe',
  unsubscribe: 'unsubscribe',
  query: 'query',
  submit: 'submit',
  presence: 'presenceReply',
  ping: 'pong',
  disconnect: 'disconnect',
}

const requestSummaries: Record<ClientMessageType, string> = {
  connect: 'Names the client, or refreshes the token over the open socket',
  subscribe: 'Follows a collection or a document; with since, replays what was missed first',
  unsubscribe: 'Stops following a channel (and leaves its presence)',
  query: "A document's snapshot, or a collection's documents and stream position",
  submit: 'A json0 op, create or del on a document; src+seq make a resubmission apply once',
  presence: "Sets this connection's presence state in a channel it follows",
  ping: 'Round trip; counts as activity',
  disconnect: 'Asks the server to close (1000)',
}

const eventSummaries: Partial<Record<keyof typeof serverMessageSchemas, string>> = {
  connected: 'On open: the connection, user and session ids and the heartbeat interval',
  op: 'A change to a followed document (live, or replayed after subscribe with since)',
  message: 'A REST broadcast to a followed channel (numbered) or to this user (not numbered)',
  presence: 'Presence of the other connections in a followed channel',
  disconnect: 'Sent before the server closes the connection: code and reason',
  error: 'A message without id failed',
}

/** JSON Schema text of a TypeBox schema (its symbol keys are TypeBox's own bookkeeping). */
const plain = (schema: TSchema): Record<string, unknown> => JSON.parse(JSON.stringify(schema))

/**
 * The socket protocol as an AsyncAPI 3 document, generated from the same
 * schemas the server validates with, from the server's point of view:
 * it receives the client's requests (each with its reply) and sends events.
 */
export function asyncApiDocument(version: string, host: string): Record<string, unknown> {
  const schemas: Record<string, unknown> = {}
  const messages: Record<string, unknown> = {}
  const channelMessages: Record<string, unknown> = {}
  const messageRef = (name: string) => ({ $ref: `#/channels/socket/messages/${name}` })
  const add = (name: string, schema: TSchema, summary: string) => {
    schemas[name] = plain(schema)
    messages[name] = {
      name,
      title: name,
      summary,
      contentType: 'application/json',
      payload: { $ref: `#/components/schemas/${name}` },
    }
    channelMessages[name] = { $ref: `#/components/messages/${name}` }
  }
  for (const [type, schema] of Object.entries(clientMessageSchemas))
    add(`${type}Request`, schema, requestSummaries[type as ClientMessageType])
  for (const [name, schema] of Object.entries(serverMessageSchemas))
    add(
      `${name}Frame`,
      schema,
      eventSummaries[name as keyof typeof eventSummaries] ??
        `Reply (type "${schema.properties.type.const}")`,
    )

  const operations: Record<string, unknown> = {}
  for (const type of Object.keys(clientMessageSchemas) as ClientMessageType[])
    operations[type] = {
      action: 'receive',
      channel: { $ref: '#/channels/socket' },
      summary: requestSummaries[type],
      messages: [messageRef(`${type}Request`)],
      reply: {
        channel: { $ref: '#/channels/socket' },
        messages: [messageRef(`${replies[type]}Frame`), messageRef('errorFrame')],
      },
    }
  for (const name of ['connected', 'op', 'message', 'presence', 'disconnect', 'error'] as const)
    operations[`send_${name}`] = {
      action: 'send',
      channel: { $ref: '#/channels/socket' },
      summary: eventSummaries[name],
      messages: [messageRef(`${name}Frame`)],
    }

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'teable-realtime socket protocol',
      version,
      description: [
        'JSON messages over one WebSocket. Every client message with an `id` gets exactly one reply with that `id`: a message of its type (connect → connected, ping → pong) or `type: "error"`.',
        `Error codes: ${Object.entries(ErrorCode)
          .map(([name, code]) => `${code} ${name}`)
          .join(', ')}.`,
        `Close codes: ${Object.entries(closeCodes)
          .map(([reason, code]) => `${code} ${reason}`)
          .join(', ')}.`,
        'The full contract, with every decision: docs/PROTOCOL.md. A client that implements it (reconnects, resumes with since, documents, presence): teable-realtime/client, docs/CLIENT.md.',
      ].join('\n\n'),
    },
    defaultContentType: 'application/json',
    servers: {
      realtime: {
        host,
        protocol: 'ws',
        description: 'This server (wss behind TLS)',
      },
    },
    channels: {
      socket: {
        address: '/api/ws/socket',
        title: 'The realtime socket',
        description:
          'Open mode: ?user_id= (and optional session_id). Auth mode: ?token= or Authorization: Bearer. A refused upgrade is an HTTP error with a JSON body {error:{code,message}}.',
        servers: [{ $ref: '#/servers/realtime' }],
        messages: channelMessages,
        bindings: {
          ws: {
            query: {
              type: 'object',
              properties: {
                user_id: { type: 'string', description: 'Open mode: who connects' },
                session_id: {
                  type: 'string',
                  description: 'Optional; made by the server if absent',
                },
                token: { type: 'string', description: 'Auth mode: a signed token (JWT)' },
              },
            },
          },
        },
      },
    },
    operations,
    components: { schemas, messages },
  }
}
