/**
 * teable-realtime: the server's types for its consumers. `App` types the
 * REST API for Eden Treaty; the protocol module types every socket message
 * (and is browser-safe). The realtime client is `teable-realtime/client`.
 */
export type { App } from './app.ts'
export * from './protocol/index.ts'
