import { describe, expect, test } from 'bun:test'
import {
  canonicalAddress,
  clientAddress,
  forwardedAddress,
  isLoopback,
  viaProxy,
} from '../src/auth/address.ts'
import { ConfigError, loadConfig } from '../src/config.ts'
import {
  eventually,
  getJson,
  type TestServer,
  uniqueName,
  upgradeRequest,
  withServer,
} from './helpers.ts'

/** A socket upgrade carrying X-Forwarded-For: its HTTP status. */
async function upgradeVia(server: TestServer, forwardedFor: string): Promise<number> {
  const response = await upgradeRequest(server, `?user_id=${uniqueName('u')}`, {
    'X-Forwarded-For': forwardedFor,
  })
  return response.status
}

/** Which address the server recorded for a connection made through the given header. */
async function recordedAddress(server: TestServer, forwardedFor: string): Promise<string> {
  const user = uniqueName('addr')
  const upgrade = await upgradeRequest(server, `?user_id=${user}`, {
    'X-Forwarded-For': forwardedFor,
  })
  expect(upgrade.status).toBe(101)
  return eventually(async () => {
    const { body } = await getJson(server, '/api/ws/online', { Authorization: 'Bearer admin' })
    const entry = body.online.find((u: { user_id: string }) => u.user_id === user)
    return entry.sessions[0].remote_address as string
  })
}

describe('addresses are parsed as addresses', () => {
  test('canonical forms: IPv4-mapped IPv6 as IPv4, IPv6 compressed, ports dropped, names refused', () => {
    expect(canonicalAddress('203.0.113.7')).toBe('203.0.113.7')
    expect(canonicalAddress(' 203.0.113.7:8080 ')).toBe('203.0.113.7')
    expect(canonicalAddress('::ffff:127.0.0.1')).toBe('127.0.0.1')
    expect(canonicalAddress('::FFFF:7f00:1')).toBe('127.0.0.1')
    expect(canonicalAddress('0:0:0:0:0:0:0:1')).toBe('::1')
    expect(canonicalAddress('[2001:DB8::0:1]:443')).toBe('2001:db8::1')
    expect(canonicalAddress('127.evil.example')).toBeUndefined()
    expect(canonicalAddress('127.0.0.1.nip.io')).toBeUndefined()
    expect(canonicalAddress('localhost')).toBeUndefined()
    expect(canonicalAddress('')).toBeUndefined()
    expect(canonicalAddress('unknown')).toBeUndefined()
  })

  test('loopback is 127.0.0.0/8 and ::1 in any spelling, and nothing that is not an address', () => {
    for (const address of ['127.0.0.1', '127.9.8.7', '::1', '::ffff:127.0.0.1', '0:0::1'])
      expect(isLoopback(address)).toBe(true)
    for (const address of [
      '127.evil.example',
      '127.',
      '128.0.0.1',
      '::2',
      '::ffff:10.0.0.1',
      '10.0.0.1',
      'localhost',
      undefined,
    ])
      expect(isLoopback(address)).toBe(false)
  })

  test('X-Forwarded-For is read from the right: the last hop, or the one `hops` from the end', () => {
    expect(forwardedAddress('198.51.100.1, 203.0.113.7', 1)).toBe('203.0.113.7')
    expect(forwardedAddress('127.0.0.1, 203.0.113.7, 10.0.0.2', 2)).toBe('203.0.113.7')
    // Fewer entries than hops: the furthest address a trusted proxy saw.
    expect(forwardedAddress('203.0.113.7', 2)).toBe('203.0.113.7')
    expect(forwardedAddress('203.0.113.7, evil', 1)).toBeUndefined()
    expect(forwardedAddress(null, 1)).toBeUndefined()
    expect(forwardedAddress('203.0.113.7', 0)).toBeUndefined()
  })

  test('the client address: the peer unless proxies are trusted; a forged or bad header falls back to the peer', () => {
    const headers = new Headers({ 'X-Forwarded-For': '127.0.0.1, 203.0.113.7' })
    expect(clientAddress(headers, '::ffff:10.1.2.3', 0)).toBe('10.1.2.3')
    expect(clientAddress(headers, '10.1.2.3', 1)).toBe('203.0.113.7')
    expect(clientAddress(headers, '10.1.2.3', 2)).toBe('127.0.0.1')
    expect(clientAddress(new Headers({ 'X-Forwarded-For': 'x' }), '10.1.2.3', 1)).toBe('10.1.2.3')
    expect(clientAddress(new Headers(), '10.1.2.3', 1)).toBe('10.1.2.3')
    expect(clientAddress(new Headers(), undefined, 1)).toBe('unknown')
  })

  test('any proxy header marks a request as forwarded', () => {
    expect(viaProxy(new Headers())).toBe(false)
    expect(viaProxy(new Headers({ 'X-Forwarded-For': '1.2.3.4' }))).toBe(true)
    expect(viaProxy(new Headers({ Forwarded: 'for=1.2.3.4' }))).toBe(true)
    expect(viaProxy(new Headers({ 'X-Real-IP': '1.2.3.4' }))).toBe(true)
  })

  test('TRUST_PROXY: true is one proxy, a number is that many, false and 0 are off', () => {
    expect(loadConfig({}).trustProxy).toBe(0)
    expect(loadConfig({ TRUST_PROXY: 'false' }).trustProxy).toBe(0)
    expect(loadConfig({ TRUST_PROXY: '0' }).trustProxy).toBe(0)
    expect(loadConfig({ TRUST_PROXY: 'true' }).trustProxy).toBe(1)
    expect(loadConfig({ TRUST_PROXY: 'yes' }).trustProxy).toBe(1)
    expect(loadConfig({ TRUST_PROXY: '2' }).trustProxy).toBe(2)
    expect(() => loadConfig({ TRUST_PROXY: 'maybe' })).toThrow(ConfigError)
    expect(() => loadConfig({ TRUST_PROXY: '99' })).toThrow(ConfigError)
  })
})

describe('the server API behind a proxy', () => {
  test('a forwarded request is never loopback: forged 127.0.0.1, ::1 or 127.evil.example get 403', () =>
    withServer({ TRUST_PROXY: 'true' }, async (server) => {
      // Behind a trusted proxy no caller is loopback, not even one without proxy headers
      // (a proxy that adds none would make every remote caller look local).
      const direct = await getJson(server, '/api/ws/stats')
      expect(direct.status).toBe(403)
      expect(direct.body.error.message).toContain('TRUST_PROXY')
      for (const forged of [
        '127.0.0.1',
        '::1',
        '::ffff:127.0.0.1',
        '127.evil.example',
        '203.0.113.7, 127.0.0.1',
      ]) {
        const reply = await getJson(server, '/api/ws/stats', { 'X-Forwarded-For': forged })
        expect({ forged, status: reply.status }).toEqual({ forged, status: 403 })
        expect(reply.body.error.message).toContain('ADMIN_TOKEN')
      }
      for (const header of ['X-Real-IP', 'Forwarded'])
        expect((await getJson(server, '/api/ws/stats', { [header]: '127.0.0.1' })).status).toBe(403)
      const metrics = await fetch(`${server.url}/metrics`, {
        headers: { 'X-Forwarded-For': '127.0.0.1' },
      })
      expect(metrics.status).toBe(403)
    }))

  test('without TRUST_PROXY a proxied request from a local proxy is not loopback either', () =>
    withServer({}, async (server) => {
      expect((await getJson(server, '/api/ws/stats')).status).toBe(200)
      const proxied = await getJson(server, '/api/ws/stats', { 'X-Forwarded-For': '127.0.0.1' })
      expect(proxied.status).toBe(403)
    }))

  test('ADMIN_TOKEN still admits a forwarded request that carries it', () =>
    withServer({ TRUST_PROXY: 'true', ADMIN_TOKEN: 'admin' }, async (server) => {
      const headers = { 'X-Forwarded-For': '203.0.113.7', Authorization: 'Bearer admin' }
      expect((await getJson(server, '/api/ws/stats', headers)).status).toBe(200)
    }))
})

describe('CONNECT_RATE_PER_IP behind a proxy', () => {
  test('keys on the last hop: rotating the leftmost entry does not escape it', () =>
    withServer({ TRUST_PROXY: 'true', CONNECT_RATE_PER_IP: '2' }, async (server) => {
      const statuses: number[] = []
      for (let i = 0; i < 6; i++)
        statuses.push(await upgradeVia(server, `10.9.9.${i}, 203.0.113.7`))
      expect(statuses).toEqual([101, 101, 101, 101, 429, 429])
      // Another client behind the same proxy has its own budget.
      expect(await upgradeVia(server, '10.9.9.0, 203.0.113.8')).toBe(101)
      // Respelling the same address is the same address.
      expect(await upgradeVia(server, '::ffff:203.0.113.7')).toBe(429)
    }))

  test('with TRUST_PROXY=2 the second entry from the right is the client', () =>
    withServer(
      { TRUST_PROXY: '2', CONNECT_RATE_PER_IP: '2', ADMIN_TOKEN: 'admin' },
      async (server) => {
        const statuses: number[] = []
        for (let i = 0; i < 6; i++)
          statuses.push(await upgradeVia(server, `127.0.0.${i}, 203.0.113.9, 10.0.0.${i}`))
        expect(statuses).toEqual([101, 101, 101, 101, 429, 429])
        expect(await recordedAddress(server, 'forged, 198.51.100.4, 10.0.0.1')).toBe('198.51.100.4')
      },
    ))

  test('TRUST_PROXY=true records the last hop as the session address', () =>
    withServer({ TRUST_PROXY: 'true', ADMIN_TOKEN: 'admin' }, async (server) => {
      expect(await recordedAddress(server, '127.0.0.1, 198.51.100.5')).toBe('198.51.100.5')
      expect(await recordedAddress(server, 'not-an-address')).toBe('127.0.0.1')
    }))
})
