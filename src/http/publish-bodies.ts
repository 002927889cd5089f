import { TypeCompiler } from '@sinclair/typebox/compiler'
import { type Static, t, ValidationError } from 'elysia'
import type { ClusterNode } from '../cluster/cluster.ts'
import type { Documents, SubmitRequest } from '../documents/documents.ts'
import type { OpComponent } from '../documents/json0.ts'
import type { Hub } from '../hub/hub.ts'
import { NAME_PATTERN, parseChannel } from '../protocol/channels.ts'
import { encode } from '../protocol/envelope.ts'
import { badRequest } from '../protocol/errors.ts'
import { JsonInteger, Op } from '../protocol/messages.ts'
import type { Streams } from '../streams/streams.ts'

/**
 * The bodies and handlers of the REST publish and broadcast routes, shared
 * by the routes (src/http/api-routes.ts) and the intake queue (src/intake/):
 * an intake entry is validated by the same schema and runs the same call as
 * its REST twin.
 */

const Name = t.String({ pattern: NAME_PATTERN })
const exampleOp = [{ p: ['fields', 'fld1'], oi: 'new value', od: 'old value' }]

export const publishBodies = {
  'publish/document': t.Object(
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
  'publish/record': t.Object(
    { table_id: Name, record_id: Name, operation: Op },
    { examples: [{ table_id: 'tbl1', record_id: 'rec1', operation: exampleOp }] },
  ),
  'publish/view': t.Object(
    { table_id: Name, view_id: Name, operation: Op },
    {
      examples: [{ table_id: 'tbl1', view_id: 'viw1', operation: [{ p: ['name'], oi: 'Grid' }] }],
    },
  ),
  'publish/field': t.Object(
    { table_id: Name, field_id: Name, operation: Op },
    {
      examples: [
        { table_id: 'tbl1', field_id: 'fld1', operation: [{ p: ['name'], oi: 'Status' }] },
      ],
    },
  ),
  'publish/table': t.Object(
    { base_id: Name, table_id: Name, operation: Op },
    {
      examples: [{ base_id: 'bse1', table_id: 'tbl1', operation: [{ p: ['name'], oi: 'Tasks' }] }],
    },
  ),
  'broadcast/channel': t.Object(
    {
      channel: t.String({ description: '`collection` or `collection.document`' }),
      message: t.Unknown({ description: 'Any JSON; delivered as `data.message`' }),
      exclude: t.Optional(
        t.Array(t.String(), { description: 'connection_ids not to send it to live' }),
      ),
    },
    { examples: [{ channel: 'record_tbl1', message: { kind: 'reload' } }] },
  ),
  'broadcast/user': t.Object(
    { user_id: t.String({ minLength: 1 }), message: t.Unknown() },
    { examples: [{ user_id: 'usr1', message: { notice: 'export ready' } }] },
  ),
}

export type PublishRoute = keyof typeof publishBodies
export type PublishBody<R extends PublishRoute> = Static<(typeof publishBodies)[R]>

export const publishRoutes = Object.keys(publishBodies) as PublishRoute[]

export function isPublishRoute(route: string): route is PublishRoute {
  return Object.hasOwn(publishBodies, route)
}

/** Where a publish goes: a document of a collection, and the op. */
export interface PublishTarget {
  collection: string
  document: string
  operation: OpComponent[]
  v?: number
}

/** The document a publish body writes (the REST route's mapping of its fields). */
export function publishTarget(
  route: Exclude<PublishRoute, 'broadcast/channel' | 'broadcast/user'>,
  body: PublishBody<typeof route>,
): PublishTarget {
  switch (route) {
    case 'publish/document': {
      const b = body as PublishBody<'publish/document'>
      return {
        collection: b.collection,
        document: b.document,
        operation: b.operation,
        ...(b.v !== undefined && { v: b.v }),
      }
    }
    case 'publish/record': {
      const b = body as PublishBody<'publish/record'>
      return { collection: `record_${b.table_id}`, document: b.record_id, operation: b.operation }
    }
    case 'publish/view': {
      const b = body as PublishBody<'publish/view'>
      return { collection: `view_${b.table_id}`, document: b.view_id, operation: b.operation }
    }
    case 'publish/field': {
      const b = body as PublishBody<'publish/field'>
      return { collection: `field_${b.table_id}`, document: b.field_id, operation: b.operation }
    }
    case 'publish/table': {
      const b = body as PublishBody<'publish/table'>
      return { collection: `table_${b.base_id}`, document: b.table_id, operation: b.operation }
    }
  }
}

export interface PublishParts {
  hub: Hub
  documents: Documents
  streams: Streams
  cluster: ClusterNode | undefined
}

/** The REST routes' effects; each queues its commit job synchronously (the intake relies on it). */
export function publishActions({ hub, documents, streams, cluster }: PublishParts) {
  return {
    publish({ collection, document, operation, v }: PublishTarget) {
      const request: SubmitRequest = { collection, document, op: operation, source: 'server' }
      if (v !== undefined) request.v = v
      return documents.publish(request).then(({ v: at, offset }) => ({ v: at, offset }))
    },
    async broadcastChannel(body: PublishBody<'broadcast/channel'>) {
      const ref = parseChannel(body.channel)
      const { offset, delivered } = await streams.publishMessage(ref, body.message, body.exclude)
      return { delivered, offset }
    },
    /** Throws the route's 400 for a missing message (Elysia lets a required t.Unknown() be absent). */
    userFrame(body: PublishBody<'broadcast/user'>): string {
      if (body.message === undefined) throw badRequest('message is required', { field: 'message' })
      return encode({ type: 'message', data: { message: body.message } })
    },
    sendToUser(userId: string, frame: string) {
      if (cluster) return cluster.sendToUser(userId, frame)
      return { delivered: hub.publishToUser(userId, 'message', frame) }
    },
  }
}

export type PublishActions = ReturnType<typeof publishActions>

const checkers = Object.fromEntries(
  publishRoutes.map((route) => [route, TypeCompiler.Compile(publishBodies[route])]),
) as { [R in PublishRoute]: ReturnType<typeof TypeCompiler.Compile<(typeof publishBodies)[R]>> }

/**
 * Checks a body against its route's schema outside Elysia (the intake),
 * throwing the 400 a REST caller gets for the same body (as the server's
 * error hook words a ValidationError).
 */
export function checkBody<R extends PublishRoute>(route: R, body: unknown): PublishBody<R> {
  const checker = checkers[route]
  if (checker.Check(body)) return body as PublishBody<R>
  throw validationFailure(new ValidationError('body', publishBodies[route], body))
}

/** A ValidationError as the REST API answers it: 400 `invalid body "field": reason`. */
export function validationFailure(error: ValidationError) {
  const first = error.valueError
  const field = first?.path ? first.path.slice(1).replaceAll('/', '.') : error.type
  return badRequest(
    `invalid ${error.type}${field ? ` "${field}"` : ''}: ${first?.message ?? 'schema violation'}`,
    { field, in: error.type },
  )
}
