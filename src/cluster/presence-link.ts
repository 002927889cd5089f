import type Redis from 'ioredis'
import type { Logger } from '../observability/logger.ts'
import type { PresenceEvent, PresenceLink, PresenceRecord } from '../presence/presence.ts'
import type { Bus } from './bus.ts'
import { Lua } from './lua.ts'
import type { Registry } from './registry.ts'

/** Removes a node's entries from a channel's hash; returns their connection ids. KEYS: hash; ARGV: node id. */
const DROP_NODE = new Lua(`
local all = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if not ok or entry.node_id == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    gone[#gone + 1] = all[i]
  end
end
return gone`)

const eventChannel = (channel: string) => `presence:${channel}`

/**
 * Presence over Redis: a hash per channel (field: connection id, value: the
 * entry with its node_id) read by a node's first member of the channel and
 * by GET /api/ws/presence, and a pub/sub channel per presence channel that
 * carries joins, updates and leaves to the nodes with members there. Writes
 * are skipped while Redis is away (local delivery goes on) and the
 * registry's next heartbeat writes everything again (Presence.resync).
 */
export class RedisPresenceLink implements PresenceLink {
  private readonly wrapped = new WeakMap<
    (event: PresenceEvent) => void,
    (message: string) => void
  >()

  constructor(
    private readonly bus: Bus,
    private readonly redis: Redis,
    private readonly registry: Registry,
    private readonly logger: Logger,
  ) {}

  get up(): boolean {
    return this.bus.up
  }

  put(channel: string, event: 'join' | 'update', record: PresenceRecord): void {
    if (!this.writable()) return
    const { keys } = this.registry
    this.redis
      .hset(keys.presence(channel), record.connection_id, JSON.stringify(record))
      .catch(this.failed)
    if (event === 'join')
      this.redis.sadd(keys.nodeChannels(this.registry.nodeId), channel).catch(this.failed)
    const message: PresenceEvent = { event, record }
    this.bus.publish(eventChannel(channel), JSON.stringify(message)).catch(this.failed)
  }

  remove(channel: string, record: PresenceRecord, last: boolean): void {
    if (!this.writable()) return
    const { keys } = this.registry
    this.redis.hdel(keys.presence(channel), record.connection_id).catch(this.failed)
    if (last) this.redis.srem(keys.nodeChannels(this.registry.nodeId), channel).catch(this.failed)
    this.publishLeave(channel, record.connection_id, record.node_id)
  }

  async follow(
    channel: string,
    handler: (event: PresenceEvent) => void,
  ): Promise<PresenceRecord[]> {
    let wrapped = this.wrapped.get(handler)
    if (!wrapped) {
      wrapped = (message: string) => handler(JSON.parse(message) as PresenceEvent)
      this.wrapped.set(handler, wrapped)
    }
    try {
      await this.bus.subscribe(eventChannel(channel), wrapped)
      return await this.entries(channel)
    } catch (error) {
      this.failed(error)
      throw error
    }
  }

  unfollow(channel: string, handler: (event: PresenceEvent) => void): void {
    const wrapped = this.wrapped.get(handler)
    if (wrapped) this.bus.unsubscribe(eventChannel(channel), wrapped)
  }

  async entries(channel: string): Promise<PresenceRecord[]> {
    const all = await this.redis.hgetall(this.registry.keys.presence(channel))
    const records: PresenceRecord[] = []
    for (const value of Object.values(all)) {
      try {
        records.push(JSON.parse(value) as PresenceRecord)
      } catch {
        // Not ours to interpret; DROP_NODE clears it with its node.
      }
    }
    return records
  }

  ownChannels(): Promise<string[]> {
    return this.redis.smembers(this.registry.keys.nodeChannels(this.registry.nodeId))
  }

  async dropOwn(channel: string): Promise<void> {
    await this.dropIn(channel, this.registry.nodeId)
    await this.redis.srem(this.registry.keys.nodeChannels(this.registry.nodeId), channel)
  }

  /** A lost (or stopping) node's entries go, each with a `leave` event to the nodes that follow its channel. */
  async dropNode(nodeId: string): Promise<void> {
    const channels = await this.redis.smembers(this.registry.keys.nodeChannels(nodeId))
    let members = 0
    for (const channel of channels) members += await this.dropIn(channel, nodeId)
    if (members > 0)
      this.logger.info({ node_id: nodeId, members }, 'presence entries of a node removed')
  }

  private async dropIn(channel: string, nodeId: string): Promise<number> {
    const gone = (await DROP_NODE.run(
      this.redis,
      [this.registry.keys.presence(channel)],
      [nodeId],
    )) as string[]
    for (const connectionId of gone) this.publishLeave(channel, connectionId, nodeId)
    return gone.length
  }

  private publishLeave(channel: string, connectionId: string, nodeId: string): void {
    const message: PresenceEvent = { event: 'leave', connection_id: connectionId, node_id: nodeId }
    this.bus.publish(eventChannel(channel), JSON.stringify(message)).catch(this.failed)
  }

  /** Whether to write now: not while Redis is away (resync later), never once the NODE_ID is another's. */
  private writable(): boolean {
    if (!this.registry.writable) return false
    if (this.bus.up) return true
    this.registry.markDirty()
    return false
  }

  private readonly failed = (error: unknown): void => {
    this.registry.markDirty()
    this.logger.debug({ err: error }, 'presence write to Redis failed')
  }
}
