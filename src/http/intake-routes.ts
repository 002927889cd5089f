import { Elysia, status, t } from 'elysia'
import type { Gate } from '../auth/gate.ts'
import type { Intake } from '../intake/intake.ts'
import { adminGuard } from './api-routes.ts'
import { queryInteger } from './query-params.ts'

const ErrorReply = t.Object({ error: t.Object({ code: t.Integer(), message: t.String() }) })
const DeadId = t.String({ pattern: '^[0-9]+-[0-9]+$', description: 'A dead letter id' })
const exampleDead = {
  id: '1732550400123-0',
  source_id: '1732550399001-0',
  route: 'publish/record',
  body: '{"table_id":"tbl1","record_id":"rec1","operation":[{"p":["fields","fld1"],"oi":1}]}',
  error: { code: 400, message: 'path does not exist in the snapshot' },
  attempts: 1,
  failed_at: '2026-11-25T16:00:00.123Z',
}
const unknownDead = () => status(404, { error: { code: 404, message: 'no such dead letter' } })

const processCounters = (intake: Intake) => ({
  node_id: intake.settings.nodeId,
  consuming: intake.active,
  processed: intake.counters.processed,
  retried: intake.counters.retried,
  dead_lettered: intake.counters.deadLettered,
})

/** The intake queue's status and dead letters under /api/ws/intake (mounted with INTAKE_STREAM). */
export function intakeRoutes(intake: Intake, gate: Gate) {
  return new Elysia({ name: 'intake-routes', prefix: '/api/ws/intake' })
    .onBeforeHandle(adminGuard(gate))
    .get('', async () => ({ ...(await intake.status()), process: processCounters(intake) }), {
      response: {
        200: t.Object(
          {
            stream: t.String({ description: 'INTAKE_STREAM' }),
            group: t.String({ description: 'INTAKE_GROUP' }),
            length: t.Integer({ description: 'Entries in the stream (XLEN)' }),
            pending: t.Integer({
              description: 'Delivered, not yet acknowledged: being applied or waiting for a retry',
            }),
            dead: t.Integer({ description: 'Dead letters in `{INTAKE_STREAM}:dead`' }),
            lag: t.Integer({ description: 'Entries not yet delivered to the group' }),
            process: t.Object(
              {
                node_id: t.String({ description: 'NODE_ID of the process that answered' }),
                consuming: t.Boolean({
                  description: 'Whether it holds the consumer lease (one process at a time)',
                }),
                processed: t.Integer({
                  description: 'Entries it acknowledged after their effect (or found applied)',
                }),
                retried: t.Integer({
                  description: 'Times it left an entry pending after a passing failure',
                }),
                dead_lettered: t.Integer({ description: 'Entries it dead-lettered' }),
              },
              { description: "This process's share (counted since it started)" },
            ),
          },
          {
            examples: [
              {
                stream: 'teable:intake',
                group: 'teable-realtime',
                length: 1200,
                pending: 0,
                dead: 1,
                lag: 0,
                process: {
                  node_id: 'node-1',
                  consuming: true,
                  processed: 1199,
                  retried: 0,
                  dead_lettered: 1,
                },
              },
            ],
          },
        ),
      },
      detail: {
        tags: ['intake'],
        summary: 'Intake queue status',
        description:
          "The stream, its consumer group, its length, entries pending (delivered and not acknowledged), dead letters, and the lag (entries not yet delivered): the group's, answered from Redis by any process. `process`: the answering process's own counters and whether it is the one consuming.",
      },
    })
    .get(
      '/dead',
      async ({ query }) => ({ entries: await intake.deadLetters(query.limit ?? 100) }),
      {
        query: t.Object({
          limit: t.Optional(queryInteger('limit', { minimum: 1, maximum: 1000, default: 100 })),
        }),
        response: {
          200: t.Object(
            {
              entries: t.Array(
                t.Object({
                  id: DeadId,
                  source_id: t.String({ description: 'The original entry id' }),
                  route: t.String(),
                  body: t.String({ description: 'The entry body as it was on the stream' }),
                  error: t.Object({ code: t.Integer(), message: t.String() }),
                  attempts: t.Integer(),
                  failed_at: t.String({ format: 'date-time' }),
                }),
              ),
            },
            { examples: [{ entries: [exampleDead] }] },
          ),
        },
        detail: {
          tags: ['intake'],
          summary: 'List dead letters',
          description:
            'Oldest first. An entry is dead-lettered at once when it can never succeed (unknown route, invalid body, an op that does not apply: `error` is what the REST route answers), or after INTAKE_MAX_ATTEMPTS tries for a passing failure (store unavailable).',
        },
      },
    )
    .post(
      '/dead/:id/retry',
      async ({ params }) => {
        const id = await intake.retryDead(params.id)
        return id === undefined ? unknownDead() : { id }
      },
      {
        params: t.Object({ id: DeadId }),
        response: {
          200: t.Object(
            { id: t.String({ description: 'The id of the new stream entry' }) },
            { examples: [{ id: '1732550500456-0' }] },
          ),
          404: ErrorReply,
        },
        detail: {
          tags: ['intake'],
          summary: 'Retry a dead letter',
          description:
            'Appends its route and body to the stream as a new entry (at the end: it takes effect after what is already queued) and removes the dead letter.',
        },
      },
    )
    .delete(
      '/dead/:id',
      async ({ params }) =>
        (await intake.deleteDead(params.id)) ? { id: params.id } : unknownDead(),
      {
        params: t.Object({ id: DeadId }),
        response: {
          200: t.Object({ id: t.String() }, { examples: [{ id: '1732550400123-0' }] }),
          404: ErrorReply,
        },
        detail: { tags: ['intake'], summary: 'Delete a dead letter' },
      },
    )
}
