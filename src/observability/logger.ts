import pino, { type Logger } from 'pino'
import type { Config } from '../config.ts'

export type { Logger }

/**
 * JSON lines on stdout by default; LOG_FORMAT=pretty for people. The pretty
 * stream runs in-process (no transport worker) so it also works inside the
 * compiled binary.
 */
export function createLogger(config: Pick<Config, 'logLevel' | 'logFormat'>): Logger {
  const options = {
    level: config.logLevel,
    base: { service: 'teable-realtime' },
    redact: {
      paths: ['token', '*.token', 'authorization', '*.authorization'],
      censor: '[redacted]',
    },
  }
  if (config.logFormat === 'pretty') {
    // Loaded only when asked for (~2 MiB resident otherwise).
    const pretty = require('pino-pretty') as typeof import('pino-pretty')
    const build = (pretty as { default?: typeof pretty }).default ?? pretty
    return pino(options, build({ sync: true, colorize: false }))
  }
  return pino(options)
}
