import { type TypeCheck, TypeCompiler } from '@sinclair/typebox/compiler'
import { type ValueError, ValueErrorType } from '@sinclair/typebox/errors'
import { badRequest, type ProtocolError } from './errors.ts'
import { type ClientMessage, type ClientMessageType, clientMessageSchemas } from './messages.ts'

type Checkers = { [K in ClientMessageType]: TypeCheck<(typeof clientMessageSchemas)[K]> }

const checkers = Object.fromEntries(
  Object.entries(clientMessageSchemas).map(([type, schema]) => [
    type,
    TypeCompiler.Compile(schema),
  ]),
) as Checkers

const knownTypes = Object.keys(clientMessageSchemas).join(', ')

export type ParseResult =
  | { ok: true; message: ClientMessage }
  | { ok: false; error: ProtocolError; id?: unknown; type?: string }

/**
 * Turns a received frame (text, or bytes for a binary frame) into a typed
 * message or a 400 that says which field was wrong. The envelope's `type` is
 * checked first, so a wrong field is named instead of "Expected union value".
 */
export function parseClientMessage(raw: string | Uint8Array, maxDepth: number): ParseResult {
  if (typeof raw !== 'string')
    return { ok: false, error: badRequest('binary frames are not supported; send JSON text') }
  if (nestingExceeds(raw, maxDepth))
    return { ok: false, error: badRequest(`JSON nested deeper than ${maxDepth} levels`) }
  let frame: unknown
  try {
    frame = JSON.parse(raw)
  } catch {
    return { ok: false, error: badRequest('malformed JSON') }
  }
  if (typeof frame !== 'object' || frame === null || Array.isArray(frame))
    return { ok: false, error: badRequest('a message must be a JSON object') }

  const record = frame as Record<string, unknown>
  const id = record.id
  const type = record.type
  if (typeof type !== 'string')
    return {
      ok: false,
      id,
      error: badRequest('missing or non-string "type"', { field: 'type', expected: knownTypes }),
    }
  if (!Object.hasOwn(checkers, type))
    return {
      ok: false,
      id,
      error: badRequest(`unknown message type "${type.slice(0, 64)}"`, {
        field: 'type',
        expected: knownTypes,
      }),
    }
  const checker = checkers[type as ClientMessageType]
  if (!checker.Check(frame)) {
    const found = checker.Errors(frame).First()
    const first = found && specific(found)
    const field = first?.path ? first.path.slice(1).replaceAll('/', '.') : 'message'
    return {
      ok: false,
      id,
      type,
      error: badRequest(`invalid "${field}": ${first?.message ?? 'schema violation'}`, {
        field,
        ...(first ? { expected: describe(first.schema as SchemaFacts) } : {}),
      }),
    }
  }
  return { ok: true, message: frame as ClientMessage }
}

/**
 * A JSON body of a REST request: refused (400) past `maxDepth` by the same
 * scan as a socket frame, before JSON.parse, so nothing deeper reaches the
 * store (whose JSON.stringify would overflow the stack on it).
 */
export function parseJsonBody(text: string, maxDepth: number): unknown {
  if (nestingExceeds(text, maxDepth)) throw badRequest(`JSON nested deeper than ${maxDepth} levels`)
  try {
    return JSON.parse(text)
  } catch {
    throw badRequest('malformed JSON body')
  }
}

interface SchemaFacts {
  type?: unknown
  pattern?: unknown
  const?: unknown
  required?: unknown
  anyOf?: SchemaFacts[]
}

/**
 * A union's error only says "Expected union value". When the value has the
 * shape of exactly one member (its JSON type and, for an object, all its
 * required keys), that member's first error names the field instead: `since:
 * {epoch, offset: "5"}` is reported at `since.offset`.
 */
function specific(error: ValueError): ValueError {
  if (error.type !== ValueErrorType.Union) return error
  const members = (error.schema as SchemaFacts).anyOf ?? []
  const fitting = members.flatMap((member, i) => (hasShapeOf(member, error.value) ? [i] : []))
  const inner = fitting.length === 1 ? error.errors[fitting[0] as number]?.First() : undefined
  return inner ? specific(inner) : error
}

function hasShapeOf(schema: SchemaFacts, value: unknown): boolean {
  switch (schema.type) {
    case 'object':
      return (
        typeof value === 'object' &&
        value !== null &&
        !Array.isArray(value) &&
        (Array.isArray(schema.required) ? schema.required : []).every((key) =>
          Object.hasOwn(value, key as string),
        )
      )
    case 'array':
      return Array.isArray(value)
    case 'string':
      return typeof value === 'string'
    case 'integer':
    case 'number':
      return typeof value === 'number'
    default:
      return false
  }
}

function describe(schema: SchemaFacts): string {
  if (typeof schema.pattern === 'string') return `string matching ${schema.pattern}`
  if (schema.const !== undefined) return JSON.stringify(schema.const)
  if (typeof schema.type === 'string') return schema.type
  return 'see docs/PROTOCOL.md'
}

/**
 * Whether brackets outside strings nest deeper than `max`: one pass over the
 * characters, before JSON.parse, so a hostile frame costs no parse and no
 * recursion. The frame size limit bounds the pass.
 */
function nestingExceeds(text: string, max: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 92)
        i++ // backslash: skip the escaped character
      else if (c === 34) inString = false
    } else if (c === 34) inString = true
    else if (c === 123 || c === 91) {
      if (++depth > max) return true
    } else if (c === 125 || c === 93) depth--
  }
  return false
}
