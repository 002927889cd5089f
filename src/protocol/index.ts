/**
 * The wire protocol shared by the server and its clients: the schemas of
 * every client → server and server → client message, channel names, error
 * and close codes. Browser-safe: nothing here imports server code.
 */
export * from './channels.ts'
export * from './close.ts'
export * from './errors.ts'
export * from './messages.ts'
export * from './server-messages.ts'
