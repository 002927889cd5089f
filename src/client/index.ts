/**
 * teable-realtime/client: the realtime client for browsers, Bun and Node
 * (≥ 22, or pass `WebSocket`). It imports the shared protocol module only,
 * never server code.
 */

export { type CloseReason, closeCodes } from '../protocol/close.ts'
export type { ErrorCodeValue } from '../protocol/errors.ts'
export { ErrorCode } from '../protocol/errors.ts'
export type {
  Json0Component,
  Json0Op,
  JsonPath,
  Text0Component,
} from '../protocol/messages.ts'
export type {
  CollectionQueryResult,
  ConnectedData,
  DocumentSnapshot,
  OpData,
  ReplyData,
  SubmitResult,
} from '../protocol/server-messages.ts'
export { Backoff, type BackoffOptions } from './backoff.ts'
export {
  type ClientEvents,
  type ClientOptions,
  type ClosedEvent,
  type ConnectionState,
  type DisconnectedEvent,
  RealtimeClient,
  type RequestOptions,
  type TokenSource,
  type UserMessage,
} from './client.ts'
export { Doc, type DocEvents, type DocOpEvent } from './doc.ts'
export { Emitter, type Listener } from './emitter.ts'
export {
  ConnectionError,
  type LocalErrorCode,
  RealtimeError,
  RequestError,
  TimeoutError,
} from './errors.ts'
export {
  ChannelPresence,
  type PresenceCounts,
  type PresenceEvents,
  type PresenceMember,
  type PresenceUser,
} from './presence.ts'
export {
  type ChannelMessage,
  type CollectionPosition,
  type OpEvent,
  type ResetEvent,
  type SubscribedEvent,
  Subscription,
  type SubscriptionEvents,
  type SubscriptionState,
} from './subscription.ts'

import { RealtimeClient as Client, type ClientOptions as Options } from './client.ts'

/** `new RealtimeClient(options)`, connecting at once. */
export function connect(options: Options): Client {
  return new Client(options)
}
