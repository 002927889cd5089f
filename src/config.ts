import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'

/**
 * Configuration: the only place that reads the environment. Every value has a
 * default here; a bad value throws a ConfigError naming the variable, and
 * main.ts turns that into a clean exit.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent'

export interface Config {
  port: number
  host: string
  /** Seconds between server pings. */
  heartbeatInterval: number
  /** Seconds of silence (no message, no pong) before a connection is closed. */
  connectionTimeout: number
  /** Largest accepted WebSocket frame, bytes; larger frames close with 1009. */
  maxMessageSize: number
  logLevel: LogLevel
  logFormat: 'json' | 'pretty'
  /** Seconds over which repeated warnings (same cause and source) are summarised; 0: off. */
  logRepeatInterval: number
  /** SQLite file; ':memory:' keeps everything in memory (tests). Unused with databaseUrl. */
  dbPath: string
  /** PostgreSQL store (DATABASE_URL); unset: SQLite at dbPath. */
  databaseUrl: string | undefined
  /** Redis for fan-out between processes, presence and stats (REDIS_URL); unset: one process. */
  redisUrl: string | undefined
  /** Prefix of every Redis key and channel (REDIS_PREFIX). */
  redisPrefix: string
  /** This process's name in the cluster (NODE_ID; default host name and pid). */
  nodeId: string
  /** Entries kept per collection stream. */
  historyMaxPerCollection: number
  /** Seconds a stream entry is kept. */
  historyTtl: number
  /** Seconds between retention passes. */
  historyPruneInterval: number
  /** Largest presence state, bytes of JSON. */
  presenceMaxSize: number
  /** Presence updates sent per connection and channel per second, at most. */
  presenceRate: number
  /** Presence mode by collection-name prefix, longest prefix first; '' is the default. */
  presenceModes: Array<{ prefix: string; mode: PresenceMode }>
  /** Connections in a `full` channel past which it switches to `count` (back at half). */
  presenceMaxMembers: number
  /** Seconds an ended session is kept. */
  sessionRetention: number
  /** Most session rows kept; the oldest ended ones go first, live ones never. */
  sessionMaxRows: number
  /** HS256 secret for connection tokens; with authPublicKey unset, auth mode is on when set. */
  authSecret: string | undefined
  /** PEM public key (RS256 or ES256) for connection tokens. */
  authPublicKey: string | undefined
  /** Bearer token for the REST API, /metrics and /admin; without it they answer loopback only. */
  adminToken: string | undefined
  /**
   * Proxies in front of the server whose X-Forwarded-For entries are
   * trusted: the client address is the entry this many from the right. 0: off.
   */
  trustProxy: number
  maxConnections: number
  maxConnectionsPerUser: number
  maxSubscriptionsPerConnection: number
  /** Upgrade attempts per remote address per second (twice that in a burst). */
  connectRatePerIp: number
  /** Messages per connection per second (twice that in a burst). */
  messageRate: number
  /** Deepest JSON nesting accepted in a frame. */
  maxJsonDepth: number
  /** Most components in one op. */
  maxOpComponents: number
  /** Largest document snapshot, bytes of JSON; an op or create past it is 413. */
  maxDocumentSize: number
  /** Largest HTTP request body, bytes: a whole document plus REQUEST_ENVELOPE (413). */
  maxRequestSize: number
  /**
   * The intake queue (INTAKE_STREAM, INTAKE_GROUP, INTAKE_MAX_ATTEMPTS,
   * INTAKE_RETRY_AFTER in seconds); undefined: no intake.
   */
  intake: IntakeConfig | undefined
  /** Bytes queued for a client that does not read before it is disconnected. */
  maxSendBuffer: number
}

export type PresenceMode = 'full' | 'count' | 'off'
const PRESENCE_MODES: readonly PresenceMode[] = ['full', 'count', 'off']

export type Env = Record<string, string | undefined>

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`)
    this.name = 'ConfigError'
  }
}

function read(env: Env, name: string): string | undefined {
  const raw = env[name]
  if (raw === undefined) return undefined
  const trimmed = raw.trim()
  return trimmed === '' ? undefined : trimmed
}

function number(
  env: Env,
  name: string,
  fallback: number,
  opts: { min: number; max: number; integer?: boolean },
): number {
  const raw = read(env, name)
  if (raw === undefined) return fallback
  const value = Number(raw)
  if (!Number.isFinite(value)) throw new ConfigError(name, `expected a number, got "${raw}"`)
  if (opts.integer && !Number.isInteger(value))
    throw new ConfigError(name, `expected a whole number, got "${raw}"`)
  if (value < opts.min || value > opts.max)
    throw new ConfigError(name, `expected ${opts.min}..${opts.max}, got ${value}`)
  return value
}

function oneOf<T extends string>(env: Env, name: string, fallback: T, allowed: readonly T[]): T {
  const raw = read(env, name)
  if (raw === undefined) return fallback
  const value = raw.toLowerCase() as T
  if (!allowed.includes(value))
    throw new ConfigError(name, `expected one of ${allowed.join(', ')}, got "${raw}"`)
  return value
}

const DAY = 24 * 60 * 60
/** Bytes an HTTP body may carry beyond MAX_DOCUMENT_SIZE (the JSON around an op). */
export const REQUEST_ENVELOPE = 64 * 1024

/** `record_=count,view_=off,*=full`: a mode per collection-name prefix (`*` for the rest). */
function presenceModes(env: Env): Config['presenceModes'] {
  const raw = read(env, 'PRESENCE_MODES')
  const modes: Config['presenceModes'] = []
  for (const part of (raw ?? '').split(',')) {
    if (part.trim() === '') continue
    const [prefix, mode] = part.split('=').map((x) => x.trim())
    if (prefix === undefined || prefix === '' || !PRESENCE_MODES.includes(mode as PresenceMode))
      throw new ConfigError(
        'PRESENCE_MODES',
        `expected prefix=${PRESENCE_MODES.join('|')} pairs separated by commas, got "${part}"`,
      )
    modes.push({ prefix: prefix === '*' ? '' : prefix, mode: mode as PresenceMode })
  }
  if (!modes.some((m) => m.prefix === '')) modes.push({ prefix: '', mode: 'full' })
  return modes.sort((a, b) => b.prefix.length - a.prefix.length)
}

function flag(env: Env, name: string): boolean {
  const raw = read(env, name)?.toLowerCase()
  if (raw === undefined || raw === 'false' || raw === '0' || raw === 'no') return false
  if (raw === 'true' || raw === '1' || raw === 'yes') return true
  throw new ConfigError(name, `expected true or false, got "${raw}"`)
}

/** TRUST_PROXY: false (0), true (1 proxy), or the number of proxies in front. */
function proxyHops(env: Env): number {
  if (/^\d+$/.test(read(env, 'TRUST_PROXY') ?? ''))
    return number(env, 'TRUST_PROXY', 0, { min: 0, max: 16, integer: true })
  return flag(env, 'TRUST_PROXY') ? 1 : 0
}

/** A PEM in the variable itself, or the path of a file holding one. */
function pem(env: Env, name: string): string | undefined {
  const raw = read(env, name)
  if (raw === undefined || raw.includes('-----BEGIN')) return raw?.replaceAll('\\n', '\n')
  try {
    return readFileSync(raw, 'utf8')
  } catch {
    throw new ConfigError(name, `not a PEM key and not a readable file: "${raw}"`)
  }
}

/** A URL with one of the given schemes (the message never repeats a password). */
function url(env: Env, name: string, schemes: readonly string[]): string | undefined {
  const raw = read(env, name)
  if (raw === undefined) return undefined
  let parsed: URL
  try {
    parsed = new URL(raw)
  } catch {
    throw new ConfigError(name, `expected a ${schemes[0]}// URL`)
  }
  if (!schemes.includes(parsed.protocol))
    throw new ConfigError(
      name,
      `expected a ${schemes.join(' or ')}// URL, got ${parsed.protocol}//`,
    )
  return raw
}

/** NODE_ID: names made of letters, digits and `._:-` (it is part of Redis keys and logs). */
function nodeName(env: Env): string {
  const raw = read(env, 'NODE_ID') ?? `${hostname()}-${process.pid}`
  if (!/^[A-Za-z0-9._:-]{1,128}$/.test(raw))
    throw new ConfigError('NODE_ID', `expected 1-128 letters, digits or ._:- , got "${raw}"`)
  return raw
}

export interface IntakeConfig {
  stream: string
  group: string
  maxAttempts: number
  retryAfter: number
}

/** INTAKE_*: read only with INTAKE_STREAM set, which needs REDIS_URL. */
function intakeConfig(env: Env): IntakeConfig | undefined {
  const stream = read(env, 'INTAKE_STREAM')
  if (stream === undefined) return undefined
  if (read(env, 'REDIS_URL') === undefined)
    throw new ConfigError('INTAKE_STREAM', 'needs REDIS_URL: the intake queue is a Redis stream')
  return {
    stream,
    group: read(env, 'INTAKE_GROUP') ?? 'teable-realtime',
    maxAttempts: number(env, 'INTAKE_MAX_ATTEMPTS', 5, { min: 1, max: 1000, integer: true }),
    retryAfter: number(env, 'INTAKE_RETRY_AFTER', 5, { min: 0.05, max: 86400 }),
  }
}

export function loadConfig(env: Env): Config {
  if (read(env, 'AUTH_SECRET') !== undefined && read(env, 'AUTH_PUBLIC_KEY') !== undefined)
    throw new ConfigError(
      'AUTH_PUBLIC_KEY',
      'set AUTH_SECRET (HS256) or AUTH_PUBLIC_KEY (RS256/ES256), not both',
    )
  // One SQLite process may use Redis for the intake queue alone (no cluster).
  if (
    read(env, 'REDIS_URL') !== undefined &&
    read(env, 'DATABASE_URL') === undefined &&
    read(env, 'INTAKE_STREAM') === undefined
  )
    throw new ConfigError(
      'REDIS_URL',
      'needs DATABASE_URL: processes that share Redis must share one PostgreSQL store (an SQLite file belongs to one process); without it, REDIS_URL is taken only for INTAKE_STREAM',
    )
  const heartbeatInterval = number(env, 'HEARTBEAT_INTERVAL', 30, { min: 0.05, max: 3600 })
  const connectionTimeout = number(env, 'CONNECTION_TIMEOUT', 60, { min: 0.1, max: 86400 })
  if (connectionTimeout <= heartbeatInterval)
    throw new ConfigError(
      'CONNECTION_TIMEOUT',
      `must be longer than HEARTBEAT_INTERVAL (${heartbeatInterval} s), got ${connectionTimeout} s`,
    )
  const maxDocumentSize = number(env, 'MAX_DOCUMENT_SIZE', 1024 * 1024, {
    min: 1024,
    max: 256 * 1024 * 1024,
    integer: true,
  })
  return {
    port: number(env, 'SOCKET_PORT', 3000, { min: 0, max: 65535, integer: true }),
    host: read(env, 'HOST') ?? '0.0.0.0',
    heartbeatInterval,
    connectionTimeout,
    maxMessageSize: number(env, 'MAX_MESSAGE_SIZE', 64 * 1024, {
      min: 1024,
      max: 16 * 1024 * 1024,
      integer: true,
    }),
    logLevel: oneOf(env, 'LOG_LEVEL', 'info', ['debug', 'info', 'warn', 'error', 'silent']),
    logFormat: oneOf(env, 'LOG_FORMAT', 'json', ['json', 'pretty']),
    logRepeatInterval: number(env, 'LOG_REPEAT_INTERVAL', 10, { min: 0, max: 3600 }),
    dbPath: read(env, 'DB_PATH') ?? './data/realtime.db',
    databaseUrl: url(env, 'DATABASE_URL', ['postgres:', 'postgresql:']),
    redisUrl: url(env, 'REDIS_URL', ['redis:', 'rediss:']),
    redisPrefix: env.REDIS_PREFIX ?? 'teable-realtime:',
    nodeId: nodeName(env),
    historyMaxPerCollection: number(env, 'HISTORY_MAX_PER_COLLECTION', 10_000, {
      min: 1,
      max: 100_000_000,
      integer: true,
    }),
    historyTtl: number(env, 'HISTORY_TTL', DAY, { min: 0.01, max: 365 * DAY }),
    historyPruneInterval: number(env, 'HISTORY_PRUNE_INTERVAL', 60, { min: 0.05, max: DAY }),
    presenceMaxSize: number(env, 'PRESENCE_MAX_SIZE', 4096, {
      min: 16,
      max: 1024 * 1024,
      integer: true,
    }),
    presenceRate: number(env, 'PRESENCE_RATE', 10, { min: 0.1, max: 1000 }),
    presenceModes: presenceModes(env),
    // Full presence is N² frames for N joins: 200 members cost ~40k join frames.
    presenceMaxMembers: number(env, 'PRESENCE_MAX_MEMBERS', 200, {
      min: 2,
      max: 10_000_000,
      integer: true,
    }),
    sessionRetention: number(env, 'SESSION_RETENTION', 7 * DAY, { min: 1, max: 3650 * DAY }),
    // ~300 bytes a row: the default bounds the table near 30 MB whatever the churn.
    sessionMaxRows: number(env, 'SESSION_MAX_ROWS', 100_000, {
      min: 10,
      max: 100_000_000,
      integer: true,
    }),
    authSecret: read(env, 'AUTH_SECRET'),
    authPublicKey: pem(env, 'AUTH_PUBLIC_KEY'),
    adminToken: read(env, 'ADMIN_TOKEN'),
    trustProxy: proxyHops(env),
    maxConnections: number(env, 'MAX_CONNECTIONS', 10_000, {
      min: 1,
      max: 10_000_000,
      integer: true,
    }),
    maxConnectionsPerUser: number(env, 'MAX_CONNECTIONS_PER_USER', 50, {
      min: 1,
      max: 1_000_000,
      integer: true,
    }),
    maxSubscriptionsPerConnection: number(env, 'MAX_SUBSCRIPTIONS_PER_CONNECTION', 128, {
      min: 1,
      max: 1_000_000,
      integer: true,
    }),
    // Sized for a reconnect storm behind one address (see docs/SECURITY.md).
    connectRatePerIp: number(env, 'CONNECT_RATE_PER_IP', 1000, { min: 0.1, max: 1_000_000 }),
    messageRate: number(env, 'MESSAGE_RATE', 100, { min: 0.1, max: 10_000_000 }),
    maxJsonDepth: number(env, 'MAX_JSON_DEPTH', 32, { min: 2, max: 1000, integer: true }),
    maxOpComponents: number(env, 'MAX_OP_COMPONENTS', 1000, {
      min: 1,
      max: 1_000_000,
      integer: true,
    }),
    maxDocumentSize,
    // The largest write that can succeed replaces a whole document: a body
    // past that and its envelope can only be refused, so it is not read.
    maxRequestSize: maxDocumentSize + REQUEST_ENVELOPE,
    intake: intakeConfig(env),
    maxSendBuffer: number(env, 'MAX_SEND_BUFFER', 1024 * 1024, {
      min: 1024,
      max: 1024 * 1024 * 1024,
      integer: true,
    }),
  }
}
