import type Redis from 'ioredis'
import { ConfigError } from '../config.ts'
import type { Logger } from '../observability/logger.ts'
import { Lua, NOW_MS, RELEASE, RENEW } from './lua.ts'

/**
 * Redis keys of the cluster's shared state. One Redis (not Redis Cluster)
 * holds them all, so scripts may also touch keys they build from a prefix.
 */
export class Keys {
  /** Live nodes: member NODE_ID, score its last heartbeat (Redis ms). */
  readonly nodes: string
  /** Nodes declared lost whose cleanup is not finished (score: when declared). */
  readonly lost: string
  /** Connections per user over the whole cluster. */
  readonly users: string
  readonly leader: string

  constructor(readonly prefix: string) {
    this.nodes = `${prefix}nodes`
    this.lost = `${prefix}lost`
    this.users = `${prefix}users`
    this.leader = `${prefix}leader`
  }

  /** A node's info hash (token, started_at, counters), with a TTL. */
  info(nodeId: string): string {
    return `${this.prefix}node:${nodeId}`
  }

  /** A node's connections per user; what its share of `users` is. */
  nodeUsers(nodeId: string): string {
    return `${this.prefix}node-users:${nodeId}`
  }

  /** Channels where a node has presence entries (to find them when it is lost). */
  nodeChannels(nodeId: string): string {
    return `${this.prefix}node-channels:${nodeId}`
  }

  /** Who cleans up after a lost node (SET NX). */
  claim(nodeId: string): string {
    return `${this.prefix}claim:${nodeId}`
  }

  /** The token of a node's incarnation that was declared lost and cleaned up. */
  gone(nodeId: string): string {
    return `${this.prefix}gone:${nodeId}`
  }

  /** A channel's presence entries: field connection id → JSON entry. */
  presence(channel: string): string {
    return `${this.prefix}presence:${channel}`
  }
}

/** What a node publishes about itself with every heartbeat (GET /api/ws/stats sums them). */
export interface NodeCounters {
  connections: number
  users: number
  channels: number
  subscriptions: number
  messagesIn: Record<string, number>
  messagesOut: Record<string, number>
  errors: Record<string, number>
}

export interface NodeInfo extends NodeCounters {
  nodeId: string
  /** ms */
  startedAt: number
  /** Its last heartbeat, Redis ms. */
  lastSeen: number
}

export interface RegistryTimings {
  /** Between two heartbeats (and counter writes). */
  heartbeatMs: number
  /** Silence after which a node is declared lost and cleaned up after. */
  lostAfterMs: number
  /** The leader lease's life... */
  leaseMs: number
  /** ...and how often its holder renews it. */
  renewMs: number
}

export const DEFAULT_TIMINGS: RegistryTimings = {
  heartbeatMs: 2000,
  lostAfterMs: 10_000,
  leaseMs: 15_000,
  renewMs: 5000,
}

export interface RegistryHooks {
  counters(): NodeCounters
  /**
   * Removes what a lost node left apart from its registration and user
   * counts: presence entries (with `leave` events) and, when `endSessions`,
   * its open sessions (`node_lost`).
   */
  cleanup(nodeId: string, endSessions: boolean): Promise<void>
  /**
   * The others declared this node lost (`lost`) or another process now
   * heartbeats under its NODE_ID (`taken`): its connections must go.
   */
  declaredLost(reason: 'lost' | 'taken'): void
  /** Writes the whole local state again (after Redis forgot it, or writes were skipped). */
  resync(): Promise<void>
  /**
   * Whether a process under this NODE_ID still holds a connection to Redis
   * (its pub/sub inbox): a killed process's connections close with it.
   */
  listening(nodeId: string): Promise<boolean>
}

/**
 * - `live`: registered and heartbeating;
 * - `lost`: declared lost by the others; sockets closed, registers again once
 *   its cleanup is done;
 * - `taken`: another process registered this NODE_ID: writes nothing more.
 */
export type RegistryState = 'starting' | 'live' | 'lost' | 'taken' | 'stopped'

const SET_COUNT = `
local function set(user, count, old)
  if count == old then return end
  if count == 0 then redis.call('HDEL', KEYS[1], user) else redis.call('HSET', KEYS[1], user, count) end
  if redis.call('HINCRBY', KEYS[2], user, count - old) <= 0 then redis.call('HDEL', KEYS[2], user) end
end
`

/**
 * Sets this node's connection count of users (absolute values, so a write
 * replayed after a reconnection changes nothing) and moves the cluster count
 * by the difference. KEYS: node users, cluster users; ARGV: user, count, ...
 */
const SET_USERS = new Lua(`${SET_COUNT}
for i = 1, #ARGV, 2 do
  set(ARGV[i], tonumber(ARGV[i + 1]), tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0'))
end
return 1`)

/** Like SET_USERS, for every user of the node: the ones not given go to 0 (no ARGV: drops the node). */
const REPLACE_USERS = new Lua(`${SET_COUNT}
local want = {}
for i = 1, #ARGV, 2 do want[ARGV[i]] = tonumber(ARGV[i + 1]) end
local have = redis.call('HGETALL', KEYS[1])
for i = 1, #have, 2 do
  set(have[i], want[have[i]] or 0, tonumber(have[i + 1]))
  want[have[i]] = nil
end
for user, count in pairs(want) do set(user, count, 0) end
return 1`)

/**
 * Registers a node. KEYS: nodes, info, lost; ARGV: id, token, info TTL,
 * lostAfter, field, value, ... Answers `ok`; `cleaning` while a cleanup of
 * this NODE_ID runs; `live` (with its score and Redis' time) when another
 * process heartbeats under it; `stale` when another one did and went silent.
 */
const REGISTER = new Lua(`${NOW_MS}
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return {'cleaning', '0'} end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  local owner = redis.call('HGET', KEYS[2], 'token')
  if owner ~= ARGV[2] then
    if owner and now - tonumber(score) < tonumber(ARGV[4]) then return {'live', score, tostring(now)} end
    return {'stale', score}
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'token', ARGV[2], 'last_seen', now, unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {'ok', tostring(now)}`)

/**
 * A heartbeat. KEYS: nodes, info, gone; ARGV: id, token, info TTL, field,
 * value, ... Answers `ok`; `lost` when the others declared this incarnation
 * lost (its tombstone); `missing` when Redis forgot it without that (a Redis
 * restart, or a lone node's info outlived by a pause); `taken` when another
 * process registered the NODE_ID.
 */
const HEARTBEAT = new Lua(`${NOW_MS}
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then
  if redis.call('GET', KEYS[3]) == ARGV[2] then return 'lost' end
  return 'missing'
end
local owner = redis.call('HGET', KEYS[2], 'token')
if owner and owner ~= ARGV[2] then return 'taken' end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'token', ARGV[2], 'last_seen', now, unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 'ok'`)

/** Nodes silent for lostAfter (ARGV[1]), and lost ones whose cleanup is unfinished. KEYS: nodes, lost. */
const SWEEP = new Lua(`${NOW_MS}
return {
  redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1]))),
  redis.call('ZRANGE', KEYS[2], 0, -1)
}`)

/**
 * Claims the cleanup of a node (one survivor does it): it must still be
 * silent (or, with ARGV[5], still at that exact score), or be lost with an
 * expired claim. Moves it from `nodes` to `lost`, deletes its info and
 * leaves a tombstone with its token, so that, should it only have been
 * paused, it learns it was declared lost. KEYS: nodes, lost, claim, info,
 * gone; ARGV: id, claimer, lostAfter, claim ms, expected score or ''.
 */
const CLAIM = new Lua(`${NOW_MS}
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  if ARGV[5] ~= '' then
    if score ~= ARGV[5] then return 0 end
  elseif now - tonumber(score) < tonumber(ARGV[3]) then return 0 end
elseif not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[4]) then return 0 end
if score then
  local token = redis.call('HGET', KEYS[4], 'token')
  if token then redis.call('SET', KEYS[5], token, 'PX', ${24 * 3600 * 1000}) end
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('DEL', KEYS[4])
end
return 1`)

/** The claimer is done. KEYS: lost, claim, node channels; ARGV: id, claimer. */
const FINISH = new Lua(`
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1`)

/** A graceful stop. KEYS: nodes, info; ARGV: id, token. */
const DEREGISTER = new Lua(`
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1`)

/** Live nodes with their info hashes, and the cluster's distinct users. KEYS: nodes, users; ARGV: lostAfter, info prefix. */
const LIVE = new Lua(`${NOW_MS}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('HGETALL', ARGV[2] .. ids[i])
end
return {redis.call('HLEN', KEYS[2]), out}`)

/** Live nodes holding connections of a user. KEYS: nodes; ARGV: lostAfter, node-users prefix, user. */
const HOLDERS = new Lua(`${NOW_MS}
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')) do
  if redis.call('HEXISTS', ARGV[2] .. id, ARGV[3]) == 1 then out[#out + 1] = id end
end
return out`)

const counterFields = (counters: NodeCounters): Array<string | number> => [
  'connections',
  counters.connections,
  'users',
  counters.users,
  'channels',
  counters.channels,
  'subscriptions',
  counters.subscriptions,
  'messages_in',
  JSON.stringify(counters.messagesIn),
  'messages_out',
  JSON.stringify(counters.messagesOut),
  'errors',
  JSON.stringify(counters.errors),
]

function parseCounts(text: string | undefined): Record<string, number> {
  if (!text) return {}
  try {
    return JSON.parse(text) as Record<string, number>
  } catch {
    return {}
  }
}

function nodeInfo(nodeId: string, score: string, flat: string[]): NodeInfo {
  const fields = new Map<string, string>()
  for (let i = 0; i + 1 < flat.length; i += 2) fields.set(flat[i] as string, flat[i + 1] as string)
  const count = (name: string) => Number(fields.get(name) ?? 0)
  return {
    nodeId,
    startedAt: count('started_at'),
    lastSeen: Number(score),
    connections: count('connections'),
    users: count('users'),
    channels: count('channels'),
    subscriptions: count('subscriptions'),
    messagesIn: parseCounts(fields.get('messages_in')),
    messagesOut: parseCounts(fields.get('messages_out')),
    errors: parseCounts(fields.get('errors')),
  }
}

/**
 * This node's place in the cluster: a heartbeat every 2 s (the `nodes`
 * sorted set, scored by Redis' clock, and an info hash with a TTL carrying
 * the counters), the cleanup of nodes silent for 10 s (claimed with SET NX,
 * so one survivor does it), the leader lease, and the per-user connection
 * counts behind MAX_CONNECTIONS_PER_USER.
 */
export class Registry {
  readonly keys: Keys
  private state: RegistryState = 'starting'
  /** This incarnation: another process (or a restart) under the same NODE_ID has another one. */
  private token = crypto.randomUUID()
  private readonly startedAt = Date.now()
  private timers: Array<ReturnType<typeof setInterval>> = []
  /** performance.now() since when heartbeats have succeeded without a break; undefined while they fail. */
  private healthySince: number | undefined
  /** Local writes were skipped or failed: the next good heartbeat writes everything again. */
  private dirty = false
  private beating = false
  private sweeping = false
  private holdsLease = false
  private leaseUntil = 0
  /** User counts not yet written (absolute values; the latest wins). */
  private readonly pendingUsers = new Map<string, number>()
  private usersTimer: ReturnType<typeof setTimeout> | undefined

  constructor(
    private readonly redis: Redis,
    readonly nodeId: string,
    prefix: string,
    private readonly hooks: RegistryHooks,
    private readonly logger: Logger,
    private readonly timings: RegistryTimings = DEFAULT_TIMINGS,
  ) {
    this.keys = new Keys(prefix)
  }

  get status(): RegistryState {
    return this.state
  }

  /** Whether this node may write its shared state (not once its NODE_ID is another's). */
  get writable(): boolean {
    return this.state === 'live' || this.state === 'lost'
  }

  /** Holds the leader lease now: runs the once-per-cluster jobs (retention, session pruning). */
  get leader(): boolean {
    return this.holdsLease && this.state === 'live' && performance.now() < this.leaseUntil
  }

  private get claimer(): string {
    return `${this.nodeId}/${this.token}`
  }

  /**
   * Registers, then heartbeats. A NODE_ID another live process heartbeats
   * under is refused (a ConfigError naming NODE_ID). One that a process
   * which just died still holds (a quick restart) is taken over once it
   * missed a heartbeat (two while Redis still holds a connection of it),
   * cleaning up after the old incarnation
   * first (its presence entries leave, its sessions end `node_lost`): start
   * this before the server accepts sockets.
   */
  async start(): Promise<void> {
    let told = false
    for (;;) {
      const [status, score, now] = (await REGISTER.run(
        this.redis,
        [this.keys.nodes, this.keys.info(this.nodeId), this.keys.lost],
        [this.nodeId, this.token, this.infoTtl, this.timings.lostAfterMs, ...this.infoFields()],
      )) as [string, string, string]
      if (status === 'ok') break
      if (this.state === 'stopped') return // stopped while waiting
      if (status === 'cleaning') {
        if (!told)
          this.logger.warn(
            { node_id: this.nodeId },
            'waiting for the cleanup after a previous process with this NODE_ID',
          )
        told = true
        await Bun.sleep(this.timings.heartbeatMs)
      } else if (status === 'stale') {
        await this.claimAndClean(this.nodeId, '')
      } else {
        // Another process heartbeats under this NODE_ID, or did until it died just now (a
        // quick restart). Gone with its connections: one missed heartbeat confirms it. Still
        // connected (alive, paused, or its host unreachable): two missed heartbeats tell.
        const { heartbeatMs } = this.timings
        const silence = (await this.hooks.listening(this.nodeId)) ? 2 * heartbeatMs : heartbeatMs
        await Bun.sleep(Math.max(0, Number(score) + silence + 500 - Number(now)))
        const latest = await this.redis.zscore(this.keys.nodes, this.nodeId)
        if (latest !== null && latest !== score)
          throw new ConfigError(
            'NODE_ID',
            `"${this.nodeId}" is in use by a live process (it heartbeats in Redis under REDIS_PREFIX "${this.keys.prefix}"); give each process its own NODE_ID`,
          )
        if (latest !== null) await this.claimAndClean(this.nodeId, score)
      }
    }
    if (this.state === 'stopped') {
      // Stopped while registering: leave again at once.
      await DEREGISTER.run(
        this.redis,
        [this.keys.nodes, this.keys.info(this.nodeId)],
        [this.nodeId, this.token],
      )
      return
    }
    this.state = 'live'
    this.healthySince = performance.now()
    const { heartbeatMs, renewMs } = this.timings
    this.timers = [
      setInterval(() => void this.beat(), heartbeatMs),
      setInterval(() => void this.sweep(), Math.max(50, heartbeatMs / 2)),
      setInterval(() => void this.lease(), renewMs),
    ]
    await this.lease()
  }

  /**
   * Graceful stop: the lease is released and the node deregistered, with
   * whatever it still has in Redis (its sessions are the session store's).
   * Call it after the sockets are closed, before the bus.
   */
  async stop(): Promise<void> {
    const was = this.state
    this.state = 'stopped'
    for (const timer of this.timers) clearInterval(timer)
    clearTimeout(this.usersTimer)
    if (was !== 'live' && was !== 'lost') return
    try {
      await RELEASE.run(this.redis, [this.keys.leader], [this.nodeId])
      this.holdsLease = false
      await DEREGISTER.run(
        this.redis,
        [this.keys.nodes, this.keys.info(this.nodeId)],
        [this.nodeId, this.token],
      )
      await this.dropUsers(this.nodeId)
      await this.hooks.cleanup(this.nodeId, false)
      await this.redis.del(this.keys.nodeChannels(this.nodeId))
    } catch (error) {
      // The survivors clean up after a silent node anyway.
      this.logger.warn({ err: error }, 'leaving the cluster cleanly failed')
    }
  }

  /** Local writes were lost (Redis away): write the whole local state again at the next heartbeat. */
  markDirty(): void {
    this.dirty = true
  }

  /** This node now has `count` connections of `userId` (written within a tick, batched). */
  noteUser(userId: string, count: number): void {
    this.pendingUsers.set(userId, count)
    this.usersTimer ??= setTimeout(() => void this.flushUsers(), 0)
  }

  /** Writes every local user count, removing the ones no longer here. */
  async replaceUsers(counts: Iterable<[string, number]>): Promise<void> {
    this.pendingUsers.clear()
    const args: Array<string | number> = []
    for (const [userId, count] of counts) args.push(userId, count)
    await REPLACE_USERS.run(this.redis, [this.keys.nodeUsers(this.nodeId), this.keys.users], args)
  }

  /**
   * A user's connections: `total` over the cluster as Redis has it, and
   * `here` as Redis has this node's share (the caller swaps it for its exact
   * local count).
   */
  async userConnections(userId: string): Promise<{ total: number; here: number }> {
    const [total, here] = await Promise.all([
      this.redis.hget(this.keys.users, userId),
      this.redis.hget(this.keys.nodeUsers(this.nodeId), userId),
    ])
    return { total: Number(total ?? 0), here: Number(here ?? 0) }
  }

  /** Live nodes holding connections of the user (by their counts in Redis). */
  async holders(userId: string): Promise<string[]> {
    return (await HOLDERS.run(
      this.redis,
      [this.keys.nodes],
      [this.timings.lostAfterMs, this.keys.nodeUsers(''), userId],
    )) as string[]
  }

  /**
   * Every live node's info as of its last heartbeat (counters at most one
   * heartbeat, 2 s, old; a node that stopped beating stays listed until it
   * is declared lost, 10 s), and the cluster's distinct users (exact).
   */
  async live(): Promise<{ nodes: NodeInfo[]; users: number }> {
    const [users, flat] = (await LIVE.run(
      this.redis,
      [this.keys.nodes, this.keys.users],
      [this.timings.lostAfterMs, this.keys.info('')],
    )) as [number, Array<string | string[]>]
    const nodes: NodeInfo[] = []
    for (let i = 0; i + 2 < flat.length; i += 3)
      nodes.push(nodeInfo(flat[i] as string, flat[i + 1] as string, flat[i + 2] as string[]))
    return { nodes, users }
  }

  private get infoTtl(): number {
    // Outlives the cleanup (lostAfter plus a sweep), so a paused node finds its tombstone.
    return 3 * this.timings.lostAfterMs
  }

  private infoFields(): Array<string | number> {
    return ['started_at', this.startedAt, ...counterFields(this.hooks.counters())]
  }

  private async flushUsers(): Promise<void> {
    this.usersTimer = undefined
    if (this.pendingUsers.size === 0) return
    const args: Array<string | number> = []
    for (const [userId, count] of this.pendingUsers) args.push(userId, count)
    this.pendingUsers.clear()
    if (!this.writable) return
    try {
      await SET_USERS.run(this.redis, [this.keys.nodeUsers(this.nodeId), this.keys.users], args)
    } catch {
      this.dirty = true
    }
  }

  private dropUsers(nodeId: string): Promise<unknown> {
    return REPLACE_USERS.run(this.redis, [this.keys.nodeUsers(nodeId), this.keys.users])
  }

  private async beat(): Promise<void> {
    if (this.beating || this.state === 'stopped' || this.state === 'taken') return
    this.beating = true
    try {
      if (this.state === 'lost') await this.rejoin()
      else await this.heartbeat()
    } catch (error) {
      this.healthySince = undefined
      this.dirty = true
      this.logger.debug({ err: error }, 'heartbeat failed')
    } finally {
      this.beating = false
    }
  }

  private async heartbeat(): Promise<void> {
    const status = (await HEARTBEAT.run(
      this.redis,
      [this.keys.nodes, this.keys.info(this.nodeId), this.keys.gone(this.nodeId)],
      [this.nodeId, this.token, this.infoTtl, ...this.infoFields()],
    )) as string
    if (this.state !== 'live') return // stopped meanwhile
    if (status === 'ok') {
      this.healthySince ??= performance.now()
      if (this.dirty) await this.resync()
    } else if (status === 'missing') {
      // Redis lost the registration without anyone declaring this node lost: nobody told
      // its clients anything, so it registers again and re-publishes what it holds.
      this.logger.warn({ node_id: this.nodeId }, 'Redis forgot this node; registering again')
      await this.register()
      await this.resync()
    } else {
      this.giveUp(status === 'taken' ? 'taken' : 'lost')
    }
  }

  /**
   * Declared lost (a pause longer than lostAfter): the others told every
   * subscriber its members left and ended its sessions `node_lost`. It
   * closes its sockets rather than resurrect those connections: the clients
   * reconnect (to any node) and resume with `since`, which rebuilds sessions,
   * presence and delivery positions consistently, where re-publishing would
   * leave ended session rows live and subscribers with a leave then a join.
   */
  private giveUp(reason: 'lost' | 'taken'): void {
    this.state = reason
    this.holdsLease = false
    this.healthySince = undefined
    if (reason === 'taken')
      this.logger.error(
        { node_id: this.nodeId },
        'another process registered this NODE_ID: closing every connection and leaving the cluster',
      )
    else
      this.logger.error(
        { node_id: this.nodeId },
        'the cluster declared this node lost (silent too long): closing every connection, then registering again',
      )
    this.hooks.declaredLost(reason)
  }

  /** Lost: registers again (a new incarnation) once the survivors' cleanup is done. */
  private async rejoin(): Promise<void> {
    this.token = crypto.randomUUID()
    const status = await this.register()
    if (status === 'ok') {
      this.state = 'live'
      this.healthySince = performance.now()
      this.logger.info({ node_id: this.nodeId }, 'registered again after being declared lost')
      await this.resync()
    } else if (status === 'live') this.giveUp('taken')
    else if (status === 'stale') await this.claimAndClean(this.nodeId, '')
  }

  private async register(): Promise<string> {
    const [status] = (await REGISTER.run(
      this.redis,
      [this.keys.nodes, this.keys.info(this.nodeId), this.keys.lost],
      [this.nodeId, this.token, this.infoTtl, this.timings.lostAfterMs, ...this.infoFields()],
    )) as [string, string]
    return status
  }

  private async resync(): Promise<void> {
    this.dirty = false
    try {
      await this.hooks.resync()
    } catch (error) {
      this.dirty = true
      throw error
    }
  }

  /**
   * Cleans up after silent nodes. Only once this node's own heartbeats have
   * worked for lostAfter: after a Redis outage every node looks silent
   * until each had a chance to beat again.
   */
  private async sweep(): Promise<void> {
    if (this.sweeping || this.state !== 'live' || this.healthySince === undefined) return
    if (performance.now() - this.healthySince < this.timings.lostAfterMs) return
    this.sweeping = true
    try {
      const [silent, unfinished] = (await SWEEP.run(
        this.redis,
        [this.keys.nodes, this.keys.lost],
        [this.timings.lostAfterMs],
      )) as [string[], string[]]
      for (const nodeId of new Set([...silent, ...unfinished]))
        if (nodeId !== this.nodeId) await this.claimAndClean(nodeId, '')
    } catch (error) {
      this.logger.debug({ err: error }, 'sweep failed')
    } finally {
      this.sweeping = false
    }
  }

  /** Claims a node's cleanup and, if this node got it, does it. */
  private async claimAndClean(nodeId: string, expectedScore: string): Promise<void> {
    const claimed = await CLAIM.run(
      this.redis,
      [
        this.keys.nodes,
        this.keys.lost,
        this.keys.claim(nodeId),
        this.keys.info(nodeId),
        this.keys.gone(nodeId),
      ],
      [nodeId, this.claimer, this.timings.lostAfterMs, 30_000, expectedScore],
    )
    if (claimed !== 1) return
    const started = performance.now()
    this.logger.warn({ node_id: nodeId }, 'node lost: cleaning up after it')
    try {
      await this.dropUsers(nodeId)
      await this.hooks.cleanup(nodeId, true)
      await FINISH.run(
        this.redis,
        [this.keys.lost, this.keys.claim(nodeId), this.keys.nodeChannels(nodeId)],
        [nodeId, this.claimer],
      )
      this.logger.info(
        { node_id: nodeId, ms: Math.round(performance.now() - started) },
        'cleaned up after a lost node',
      )
    } catch (error) {
      // The claim expires; a sweep (here or on another node) tries again.
      this.logger.error({ err: error, node_id: nodeId }, 'cleanup after a lost node failed')
    }
  }

  /** Takes or renews the leader lease (compare-and-set: only the holder extends it). */
  private async lease(): Promise<void> {
    if (this.state !== 'live') return
    const sent = performance.now()
    try {
      if (this.holdsLease) {
        const renewed = await RENEW.run(
          this.redis,
          [this.keys.leader],
          [this.nodeId, this.timings.leaseMs],
        )
        if (renewed === 1) this.leaseUntil = sent + this.timings.leaseMs
        else {
          this.holdsLease = false
          this.logger.warn({ node_id: this.nodeId }, 'leader lease lost')
        }
      } else {
        const taken = await this.redis.set(
          this.keys.leader,
          this.nodeId,
          'PX',
          this.timings.leaseMs,
          'NX',
        )
        if (taken === 'OK') {
          this.holdsLease = true
          this.leaseUntil = sent + this.timings.leaseMs
          this.logger.info({ node_id: this.nodeId }, 'leader: running the cluster-wide jobs')
        }
      }
    } catch (error) {
      // Redis away: a held lease runs out by itself (leaseUntil), as it does in Redis.
      this.logger.debug({ err: error }, 'leader lease check failed')
    }
  }
}
