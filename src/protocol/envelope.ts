import type { ErrorBody } from './errors.ts'

/**
 * The envelope of every server → client frame as the encoder sees it;
 * `timestamp` is ISO-8601. Each frame's exact shape is in server-messages.ts.
 */
export interface Envelope {
  type: string
  id?: unknown
  collection?: string
  document?: string
  data?: unknown
  error?: ErrorBody
  timestamp: string
}

export type ServerMessageFields = Omit<Envelope, 'timestamp'>

/**
 * Serialises with the contract's key order; called once per publish, never per
 * recipient. `at` (ms) is the message's time; a stream entry passes its own.
 */
export function encode(fields: ServerMessageFields, at: number = Date.now()): string {
  const message = { type: fields.type } as Envelope
  if (fields.id !== undefined) message.id = fields.id
  if (fields.collection !== undefined) message.collection = fields.collection
  if (fields.document !== undefined) message.document = fields.document
  if (fields.data !== undefined) message.data = fields.data
  if (fields.error !== undefined) message.error = fields.error
  message.timestamp = new Date(at).toISOString()
  return JSON.stringify(message)
}
