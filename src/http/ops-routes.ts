import { Elysia, status } from 'elysia'
import type { Gate } from '../auth/gate.ts'
import type { Hub } from '../hub/hub.ts'
import type { Metrics } from '../observability/metrics.ts'
import type { Throughput } from '../observability/throughput.ts'
import type { Readiness } from '../store/store.ts'
import { adminPage } from './admin-page.ts'
import { adminGuard } from './api-routes.ts'

export interface OpsParts {
  hub: Hub
  gate: Gate
  metrics: Metrics
  throughput: Throughput
  /** Whether the store takes writes and the server is not stopping. */
  ready(): Readiness | Promise<Readiness>
}

/** Health (public), Prometheus metrics and the admin dashboard (guarded like the server API). */
export function opsRoutes({ hub, gate, metrics, throughput, ready }: OpsParts) {
  const hidden = { detail: { hide: true } }
  const health = new Elysia({ name: 'health' })
    .get('/healthz', () => ({ status: 'ok' }), hidden)
    .get(
      '/readyz',
      async () => {
        const state = await ready()
        return state.ok
          ? { status: 'ready' }
          : status(503, { status: 'unavailable', reason: state.reason })
      },
      hidden,
    )
  const guarded = new Elysia({ name: 'ops' })
    .onBeforeHandle(adminGuard(gate, { queryToken: true }))
    .get(
      '/metrics',
      async () =>
        new Response(await metrics.text(), { headers: { 'content-type': metrics.contentType } }),
      hidden,
    )
    .get(
      '/admin',
      () => new Response(adminPage, { headers: { 'content-type': 'text/html; charset=utf-8' } }),
      hidden,
    )
    .get(
      '/admin/data',
      () => ({
        connections: hub.connectionCount,
        users: hub.userCount,
        channels: hub.channelCount,
        subscriptions: hub.totalSubscriptions,
        throughput: throughput.series(),
        busiest: hub.busiestChannels(10),
        online: [...hub.userCounts()]
          .map(([user_id, connections]) => ({ user_id, connections }))
          .sort((a, b) => b.connections - a.connections)
          .slice(0, 50),
      }),
      hidden,
    )
  return new Elysia({ name: 'ops-routes' }).use(health).use(guarded)
}
