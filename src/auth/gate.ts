import { timingSafeEqual } from 'node:crypto'
import type { Config } from '../config.ts'
import type { Hub } from '../hub/hub.ts'
import { ProtocolError } from '../protocol/errors.ts'
import { clientAddress, isLoopback, viaProxy } from './address.ts'
import { AddressLimiter } from './limits.ts'
import { type Identity, TokenVerifier } from './tokens.ts'

export interface Refusal {
  status: 400 | 401 | 403 | 429 | 503
  message: string
  field?: string
}

export type Admission =
  | { ok: true; userId: string; identity: Identity | undefined }
  | { ok: false; refusal: Refusal }

const refuse = (status: Refusal['status'], message: string, field?: string): Admission => ({
  ok: false,
  refusal: field ? { status, message, field } : { status, message },
})

const MAX_ID_LENGTH = 256

/** What admission needs of a cluster (src/cluster/cluster.ts). */
export interface ClusterAdmission {
  /** A user's connections on every node. */
  connectionsOf(userId: string): Promise<number>
  /** Why this node takes no connection now, or undefined. */
  refusal(): string | undefined
}

/**
 * Who may connect and who may call the server API. Auth mode (AUTH_SECRET or
 * AUTH_PUBLIC_KEY set) needs a token; open mode trusts `user_id`. Connection
 * limits are checked before a socket is accepted, so a refusal is an HTTP
 * answer, never a silent close.
 */
export class Gate {
  readonly verifier: TokenVerifier | undefined
  private readonly addresses: AddressLimiter
  private stopping = false
  private cluster: ClusterAdmission | undefined

  constructor(
    private readonly config: Config,
    private readonly hub: Hub,
  ) {
    this.verifier =
      config.authSecret !== undefined || config.authPublicKey !== undefined
        ? new TokenVerifier({ secret: config.authSecret, publicKey: config.authPublicKey })
        : undefined
    this.addresses = new AddressLimiter(config.connectRatePerIp)
  }

  /**
   * Cluster mode: MAX_CONNECTIONS_PER_USER counts the user's connections on
   * every node. Read from Redis at each upgrade (this node's own count is
   * exact; the others' are as their last writes, a few ms behind), so two
   * upgrades of one user racing on two nodes may both pass at the limit.
   * With Redis away, this node's count alone. MAX_CONNECTIONS stays per
   * process: it protects the process's own resources.
   */
  useCluster(cluster: ClusterAdmission): void {
    this.cluster = cluster
  }

  /** The server is stopping: no new connection is admitted (503). */
  stop(): void {
    this.stopping = true
  }

  get authMode(): boolean {
    return this.verifier !== undefined
  }

  /**
   * The client's address for limits and sessions: the socket peer's, or with
   * TRUST_PROXY the entry its proxies appended to X-Forwarded-For (see
   * auth/address.ts), never the leftmost one a client can write.
   */
  clientAddress(request: Request, peer: string | undefined): string {
    return clientAddress(request.headers, peer, this.config.trustProxy)
  }

  async admitSocket(
    request: Request,
    query: { user_id?: string; session_id?: string; token?: string },
    address: string,
  ): Promise<Admission> {
    // Here, not by path, so every way to an upgrade (and the socket check) refuses alike.
    if (this.stopping) return refuse(503, 'server is shutting down')
    const clusterRefusal = this.cluster?.refusal()
    if (clusterRefusal !== undefined) return refuse(503, clusterRefusal)
    // Monotonic: a wall clock stepped back must not empty every bucket.
    if (!this.addresses.allow(address, performance.now()))
      return refuse(429, `too many connection attempts from ${address}; retry in a second`)
    if (this.hub.connectionCount >= this.config.maxConnections)
      return refuse(429, 'the server is at MAX_CONNECTIONS; retry later')
    if ((query.session_id?.length ?? 0) > MAX_ID_LENGTH)
      return refuse(400, 'session_id is too long', 'session_id')
    const requested = query.user_id?.trim()
    if (requested !== undefined && requested.length > MAX_ID_LENGTH)
      return refuse(400, 'user_id is too long', 'user_id')

    let userId: string
    let identity: Identity | undefined
    if (this.verifier) {
      const bearer = request.headers.get('authorization')?.match(/^Bearer\s+(.+)$/i)?.[1]
      const token = query.token ?? bearer
      if (!token)
        return refuse(
          401,
          'a token is required (token query parameter or Authorization: Bearer)',
          'token',
        )
      try {
        identity = await this.verifier.verify(token)
      } catch (error) {
        return refuse(
          401,
          error instanceof ProtocolError ? error.message : 'invalid token',
          'token',
        )
      }
      if (requested && requested !== identity.userId)
        return refuse(403, 'user_id does not match the token', 'user_id')
      userId = identity.userId
    } else {
      if (!requested) return refuse(400, 'user_id is required', 'user_id')
      userId = requested
    }
    const connections = this.cluster
      ? await this.cluster.connectionsOf(userId)
      : this.hub.connectionsOf(userId)
    if (connections >= this.config.maxConnectionsPerUser)
      return refuse(429, `user ${userId} is at MAX_CONNECTIONS_PER_USER`)
    return { ok: true, userId, identity }
  }

  /**
   * The server API (/api/ws/*, /metrics, /admin): with ADMIN_TOKEN, a Bearer
   * token equal to it; without, loopback callers only. Loopback is decided
   * by the socket peer alone, never by a header, and a request carrying a
   * proxy header is not loopback even from a loopback peer: that peer is a
   * proxy relaying someone else (nginx on the same host).
   */
  admitAdmin(request: Request, peer: string | undefined, queryToken?: string): Refusal | undefined {
    const expected = this.config.adminToken
    if (expected === undefined) {
      // Behind a proxy every caller's peer is the proxy, headers or not: loopback proves nothing.
      if (this.config.trustProxy > 0)
        return {
          status: 403,
          message:
            'with TRUST_PROXY the server API needs ADMIN_TOKEN (no caller counts as loopback)',
        }
      return isLoopback(peer) && !viaProxy(request.headers)
        ? undefined
        : { status: 403, message: 'the server API answers loopback only unless ADMIN_TOKEN is set' }
    }
    const given =
      request.headers.get('authorization')?.match(/^Bearer\s+(.+)$/i)?.[1] ?? queryToken ?? ''
    const a = Buffer.from(given)
    const b = Buffer.from(expected)
    if (a.length === b.length && timingSafeEqual(a, b)) return undefined
    return { status: 401, message: 'Authorization: Bearer <ADMIN_TOKEN> required' }
  }
}
