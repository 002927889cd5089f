import type { Server } from 'bun'
import { Elysia, status, ValidationError } from 'elysia'
import pkg from '../package.json' with { type: 'json' }
import { Gate } from './auth/gate.ts'
import type { Committed, NodeBroker } from './broker/broker.ts'
import { MemoryBroker } from './broker/memory-broker.ts'
import { RedisBroker } from './broker/redis-broker.ts'
import { type ClusterNode, createCluster } from './cluster/cluster.ts'
import type { RedisBus } from './cluster/redis-bus.ts'
import type { Config } from './config.ts'
import { DocumentStore } from './documents/document-store.ts'
import { Documents } from './documents/documents.ts'
import { apiRoutes } from './http/api-routes.ts'
import { asyncApiRoute } from './http/asyncapi-route.ts'
import { bodyLimit } from './http/body-limit.ts'
import { demoRoutes } from './http/demo-route.ts'
import { intakeRoutes } from './http/intake-routes.ts'
import { openapiRoutes } from './http/openapi.ts'
import { opsRoutes } from './http/ops-routes.ts'
import { publishActions } from './http/publish-bodies.ts'
import { socketCheckRoute } from './http/socket-check.ts'
import { socketFrames, socketRoute, transportFrameLimit } from './http/socket-route.ts'
import { BunTopicBroker } from './hub/broker.ts'
import { ClientHandler } from './hub/client.ts'
import type { Connection } from './hub/connection.ts'
import { Heartbeat } from './hub/heartbeat.ts'
import { Hub } from './hub/hub.ts'
import { Intake } from './intake/intake.ts'
import type { openIntakeRedis } from './intake/redis.ts'
import { createLogger, type Logger } from './observability/logger.ts'
import { Metrics } from './observability/metrics.ts'
import { Throughput } from './observability/throughput.ts'
import { Presence } from './presence/presence.ts'
import { SessionStore } from './presence/sessions.ts'
import { encode } from './protocol/envelope.ts'
import { ErrorCode, ProtocolError } from './protocol/errors.ts'
import { parseJsonBody } from './protocol/validate.ts'
import { openSqliteStore } from './store/sqlite.ts'
import { isPromise, type Readiness, type Store, then } from './store/store.ts'
import { CommitQueue } from './streams/commit-queue.ts'
import { entryMessage } from './streams/entry.ts'
import { LivePositions } from './streams/live-position.ts'
import { Retention } from './streams/retention.ts'
import { StreamStore } from './streams/stream-store.ts'
import { Streams } from './streams/streams.ts'

export interface RealtimeServer {
  /** The bound port (useful with SOCKET_PORT=0). */
  port: number
  /** http://host:port */
  url: string
  hub: Hub
  retention: Retention
  /** Cluster mode (REDIS_URL): this node's part in liveness, presence and stats. */
  cluster: ClusterNode | undefined
  /** The intake queue (INTAKE_STREAM). */
  intake: Intake | undefined
  /** Graceful stop: refuse new sockets, commit pending writes, tell clients, close. */
  stop(): Promise<void>
}

type IntakeRedis = Awaited<ReturnType<typeof openIntakeRedis>>

/** How long a graceful stop waits for clients to close after `disconnect`. */
const SHUTDOWN_GRACE_MS = 3000

function errorBody(code: number, message: string, details?: Record<string, unknown>) {
  return { error: details ? { code, message, details } : { code, message } }
}

/** The embedded server (SQLite, one process): built and listening when this returns. */
export function createServer(
  config: Config,
  logger: Logger = createLogger(config),
): RealtimeServer {
  if (config.databaseUrl !== undefined || config.redisUrl !== undefined)
    throw new Error('DATABASE_URL or REDIS_URL is set: start the server with startServer()')
  const server = build(config, logger, openSqliteStore(config.dbPath, logger), undefined)
  server.announce()
  return server
}

/**
 * Any mode: SQLite at DB_PATH, or PostgreSQL at DATABASE_URL, with Redis
 * at REDIS_URL for a cluster. Connects, migrates, then builds and listens.
 */
export async function startServer(
  config: Config,
  logger: Logger = createLogger(config),
): Promise<RealtimeServer> {
  if (config.databaseUrl === undefined && config.intake === undefined)
    return createServer(config, logger)
  // Loaded here, not at the top: the embedded server need not carry ioredis and the PostgreSQL client (~4.5 MiB).
  const { openPostgresStore } = await import('./store/postgres/postgres-store.ts')
  const { openRedisBus } = await import('./cluster/redis-bus.ts')
  const { openIntakeRedis } = await import('./intake/redis.ts')
  // SQLite with INTAKE_STREAM: one process, Redis for the intake queue alone (no cluster).
  const store: Store =
    config.databaseUrl === undefined
      ? openSqliteStore(config.dbPath, logger)
      : await openPostgresStore(config.databaseUrl, logger)
  let bus: RedisBus | undefined
  let intakeRedis: IntakeRedis | undefined
  try {
    if (config.redisUrl !== undefined && store.kind === 'postgres')
      bus = await openRedisBus(config.redisUrl, config.redisPrefix, config.nodeId, logger)
    if (config.redisUrl !== undefined && config.intake !== undefined)
      intakeRedis = await openIntakeRedis(config.redisUrl, `${config.redisPrefix}${config.nodeId}`)
    // In a cluster, start() closes them once it knows NODE_ID is not another live process's.
    if (bus === undefined && store.kind === 'postgres') {
      const dangling = await store.sessions.closeNode(config.nodeId, 'server_restart')
      if (dangling > 0) logger.warn({ sessions: dangling }, 'closed sessions left open by a crash')
    }
  } catch (error) {
    intakeRedis?.commands.disconnect()
    intakeRedis?.reader.disconnect()
    await bus?.close()
    await store.close()
    throw error
  }
  const server = build(config, logger, store, bus, intakeRedis)
  try {
    await server.cluster?.start()
    await server.intake?.start()
  } catch (error) {
    await server.stop()
    throw error
  }
  server.announce()
  return server
}

/** Builds every part on an opened store, wires them into one Elysia app and starts listening. */
function build(
  config: Config,
  logger: Logger,
  store: Store,
  bus: RedisBus | undefined,
  intakeRedis?: IntakeRedis,
): RealtimeServer & { announce(): void; intake: Intake | undefined } {
  const streamStore = new StreamStore(store)
  const documentStore = new DocumentStore(store)
  // Other processes write the same store: reads outside a batch go to it.
  documentStore.shared = bus !== undefined
  const hub = new Hub()

  let positions: LivePositions | undefined
  const deliver = ({ entry, exclude }: Committed): number => {
    positions?.delivered(entry)
    const ref =
      entry.document === undefined
        ? { collection: entry.collection }
        : { collection: entry.collection, document: entry.document }
    // Nobody follows it: no frame to build (a common case for backend publishes).
    if (!hub.hasFollowers(ref)) return 0
    try {
      const fields = entryMessage(entry, store.epoch)
      const excluded = exclude
        ?.map((id) => hub.getById(id))
        .filter((connection): connection is Connection => connection !== undefined)
      return hub.publish(ref, fields.type, encode(fields, entry.createdAt), excluded)
    } catch (error) {
      logger.error({ err: error, collection: entry.collection }, 'fan-out failed')
      return 0
    }
  }
  const broker: NodeBroker = bus
    ? new RedisBroker(bus, store, deliver, logger)
    : new MemoryBroker(
        deliver,
        (collection) =>
          store.kind === 'sqlite'
            ? streamStore.head(collection)
            : streamStore.committedHead(collection),
        logger,
      )
  const metrics = new Metrics(hub, () => streamStore.heldRows, store.health)
  const queue = new CommitQueue(store, streamStore, documentStore, broker, logger, {
    committed: (seconds) => metrics.commitDuration.observe(seconds),
    fannedOut: (seconds) => metrics.publishToFanout.observe(seconds),
  })
  const streams = new Streams(store, streamStore, queue, broker)
  positions = new LivePositions(documentStore, streams, bus !== undefined, queue)
  const livePositions = positions
  streams.onIdle = (collection) => livePositions.forget(collection)
  const documents = new Documents(
    queue,
    streamStore,
    documentStore,
    config.maxOpComponents,
    config.maxDocumentSize,
    (collection) => streams.head(collection),
  )
  const presence = new Presence(hub, config)
  const sessions = new SessionStore(
    store.sessions,
    { retentionMs: config.sessionRetention * 1000, maxRows: config.sessionMaxRows },
    () => hub.connections(),
    logger,
    config.nodeId,
    () => prunes(),
  )
  if (store.kind === 'sqlite') {
    const dangling = sessions.closeDangling()
    if (!isPromise(dangling) && dangling > 0)
      logger.warn({ sessions: dangling }, 'closed sessions left open by a crash')
  }
  hub.listen(presence)
  hub.listen(sessions)
  const gate = new Gate(config, hub)
  const cluster = bus
    ? createCluster({ bus, hub, presence, gate, sessions: store.sessions, logger })
    : undefined
  // Retention and session pruning run on one process of a cluster at a time.
  const prunes = () => cluster?.leader ?? true
  if (!gate.authMode)
    logger.warn(
      'open mode: neither AUTH_SECRET nor AUTH_PUBLIC_KEY is set, so any client may connect as any user_id and read or write any channel',
    )
  if (config.trustProxy > 0 && config.adminToken === undefined)
    logger.warn(
      'TRUST_PROXY is set without ADMIN_TOKEN: the server API (/api/ws/*, /metrics, /admin) refuses every caller',
    )
  const intake =
    intakeRedis && config.intake
      ? new Intake(
          intakeRedis,
          store,
          queue,
          publishActions({ hub, documents, streams, cluster }),
          {
            stream: config.intake.stream,
            group: config.intake.group,
            maxAttempts: config.intake.maxAttempts,
            retryAfterMs: config.intake.retryAfter * 1000,
            nodeId: config.nodeId,
            maxRequestSize: config.maxRequestSize,
            maxJsonDepth: config.maxJsonDepth,
          },
          logger,
        )
      : undefined
  if (intake) metrics.intake(intake)
  const client = new ClientHandler(
    hub,
    documents,
    streams,
    presence,
    sessions,
    gate,
    metrics,
    config,
    logger,
    livePositions,
    config.nodeId,
    (error) => store.isUnavailable(error),
  )
  const throughput = new Throughput(hub.stats)
  const heartbeat = new Heartbeat(
    hub,
    config.heartbeatInterval * 1000,
    config.connectionTimeout * 1000,
    config.maxSendBuffer,
    client.replays,
  )
  const retention = new Retention(
    store,
    streamStore,
    config.historyMaxPerCollection,
    config.historyTtl * 1000,
    config.historyPruneInterval * 1000,
    logger,
    prunes,
  )
  let shuttingDown = false

  const app = new Elysia({
    // Only options given here reach Bun.serve's websocket (per-route ones are ignored).
    websocket: {
      maxPayloadLength: transportFrameLimit(config.maxMessageSize),
      // The Heartbeat disconnects slow consumers past MAX_SEND_BUFFER (within
      // 100 ms). This hard cap is the last resort for a buffer that grows
      // faster than that: past it Bun would drop messages, so it must close.
      backpressureLimit: Math.max(config.maxSendBuffer * 16, 16 * 1024 * 1024),
      closeOnBackpressureLimit: true,
      // The Heartbeat owns liveness (CONNECTION_TIMEOUT), not Bun.
      idleTimeout: 0,
      sendPings: false,
      perMessageDeflate: false,
    },
  })
    .use(bodyLimit(config.maxRequestSize, (text) => parseJsonBody(text, config.maxJsonDepth)))
    // JSON bodies get the socket's MAX_JSON_DEPTH before they are parsed (as frames do);
    // other bodies stay text (every route takes JSON: their validation refuses them).
    .onParse(({ request, contentType }) =>
      request
        .text()
        .then((text) =>
          contentType === 'application/json' ? parseJsonBody(text, config.maxJsonDepth) : text,
        ),
    )
    // Never reached (the hook above takes every body): the OpenAPI plugin lists a body's
    // content types from named parsers only, and none at all behind a parse function.
    .guard({ parse: ['json'] })
    .onError(({ code, error }) => {
      if (error instanceof ProtocolError) return status(error.code, { error: error.toBody() })
      if (error instanceof ValidationError) {
        const first = error.valueError
        const field = first?.path ? first.path.slice(1).replaceAll('/', '.') : error.type
        return status(
          400,
          errorBody(
            400,
            `invalid ${error.type}${field ? ` "${field}"` : ''}: ${first?.message ?? 'schema violation'}`,
            {
              field,
              in: error.type,
            },
          ),
        )
      }
      if (code === 'PARSE')
        return error.cause instanceof ProtocolError
          ? status(error.cause.code, { error: error.cause.toBody() })
          : status(400, errorBody(400, 'malformed JSON body'))
      if (code === 'NOT_FOUND') return status(404, errorBody(404, 'no such route'))
      if (store.isUnavailable(error)) {
        logger.error({ err: error }, 'store unavailable')
        return status(503, errorBody(ErrorCode.Unavailable, 'store unavailable; retry later'))
      }
      logger.error({ err: error }, 'request failed')
      return status(500, errorBody(ErrorCode.Internal, 'internal error'))
    })
    .use(
      opsRoutes({
        hub,
        gate,
        metrics,
        throughput,
        ready(): Readiness | Promise<Readiness> {
          if (shuttingDown) return { ok: false, reason: 'shutting down' }
          const clusterState = cluster?.readiness()
          if (clusterState && !clusterState.ok) return clusterState
          // SQLite: the last write's outcome and the file's identity; PostgreSQL: a probe.
          return then(store.check(), (state) => state)
        },
      }),
    )
    .use(openapiRoutes(pkg.version))
    .use(asyncApiRoute(pkg.version))
    .use(demoRoutes())
    .use(
      apiRoutes({
        hub,
        documents,
        streams,
        presence,
        sessions,
        gate,
        nodeId: config.nodeId,
        cluster,
      }),
    )
    .use(socketRoute(client, gate))
    .use(socketCheckRoute(gate, client))
  if (intake) app.use(intakeRoutes(intake, gate))

  app.listen({
    port: config.port,
    hostname: config.host,
    // Elysia defaults to reusePort: a second server on the port would silently take half the clients.
    reusePort: false,
    // A backstop only (bodyLimit answers past maxRequestSize with a JSON body):
    // Bun refuses a Content-Length past this before any of our code runs.
    maxRequestBodySize: config.maxRequestSize * 4,
    websocket: socketFrames(client, config.maxMessageSize),
  })
  const server = app.server as Server<unknown>
  hub.attach(new BunTopicBroker(server))
  heartbeat.start()
  retention.start()
  sessions.start()
  throughput.start()
  const port = server.port ?? config.port
  const announce = () =>
    logger.info(
      {
        port,
        host: config.host,
        store: store.kind,
        db: store.location,
        redis: bus !== undefined,
        node_id: config.nodeId,
        epoch: store.epoch,
      },
      'listening',
    )

  return {
    port,
    url: `http://${config.host === '0.0.0.0' ? '127.0.0.1' : config.host}:${port}`,
    hub,
    retention,
    cluster,
    intake,
    announce,
    async stop() {
      if (shuttingDown) return
      shuttingDown = true
      gate.stop() // refuses upgrades (503) from now on
      heartbeat.stop()
      retention.stop()
      throughput.stop()
      server.stop(false) // stop listening; open sockets stay until told
      await intake?.stop() // the batch in hand is committed and acknowledged
      await queue.flush()
      const socketsClosed = new Promise<void>((resolve) => {
        if (hub.connectionCount === 0) resolve()
        hub.listen({ onClose: () => hub.connectionCount === 0 && resolve() })
      })
      for (const connection of [...hub.connections()]) hub.disconnect(connection, 'shutdown')
      await Promise.race([socketsClosed, Bun.sleep(SHUTDOWN_GRACE_MS)])
      await server.stop(true)
      await queue.flush() // anything REST requests queued while sockets were closing
      await sessions.stop()
      await cluster?.stop()
      await broker.close()
      await bus?.close()
      await store.close()
      client.flushLogs()
      logger.info('stopped')
    },
  }
}
