import { ConfigError, loadConfig } from './config.ts'
import { StoreError } from './db/database.ts'
import { createLogger } from './observability/logger.ts'
import { type RealtimeServer, startServer } from './server.ts'

function fail(message: string): never {
  process.stderr.write(`teable-realtime: ${message}\n`)
  process.exit(1)
}

let config: ReturnType<typeof loadConfig>
try {
  config = loadConfig(process.env)
} catch (error) {
  if (error instanceof ConfigError) fail(`invalid configuration: ${error.message}`)
  throw error
}

const logger = createLogger(config)
let server: RealtimeServer | undefined

// Installed before the server starts, so a signal right after "listening" is never the default kill.
for (const signal of ['SIGTERM', 'SIGINT'] as const)
  process.once(signal, () => {
    logger.info({ signal }, 'shutting down')
    if (!server) process.exit(0)
    server.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed')
        process.exit(1)
      },
    )
  })

try {
  server = await startServer(config, logger)
} catch (error) {
  if (error instanceof StoreError) fail(error.message)
  const code = (error as { code?: string }).code
  if (code === 'EADDRINUSE')
    fail(`port ${config.port} on ${config.host} is already in use (SOCKET_PORT)`)
  fail(`cannot start: ${(error as Error).message}`)
}
