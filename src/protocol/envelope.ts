import type { ErrorBody } from './errors.ts'

/** Every server → client frame; `timestamp` is ISO-8601. */
export interface ServerMessage {
  type: string
  id?: unknown
  collection?: string
  document?: string
  data?: unknown
  error?: ErrorBody
  timestamp: string
}

export type ServerMessageFields = Omit<ServerMessage, 'timestamp'>

/**
 * Serialises with the contract's key order; called once per publish, never per
 * recipient. `at` (ms) is the message's time; a stream entry passes its own.
 */
export function encode(fields: ServerMessageFields, at: number = Date.now()): string {
  const message = { type: fields.type } as ServerMessage
  if (fields.id !== undefined) message.id = fields.id
  if (fields.collection !== undefined) message.collection = fields.collection
  if (fields.document !== undefined) message.document = fields.document
  if (fields.data !== undefined) message.data = fields.data
  if (fields.error !== undefined) message.error = fields.error
  message.timestamp = new Date(at).toISOString()
  return JSON.stringify(message)
}
