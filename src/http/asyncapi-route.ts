import { Elysia } from 'elysia'
import { asyncApiDocument } from '../protocol/asyncapi.ts'

/** `GET /asyncapi.json`: the socket protocol (AsyncAPI 3), public like /swagger. */
export function asyncApiRoute(version: string) {
  return new Elysia({ name: 'asyncapi' }).get(
    '/asyncapi.json',
    ({ request }) => asyncApiDocument(version, request.headers.get('host') ?? 'localhost'),
    { detail: { hide: true } },
  )
}
