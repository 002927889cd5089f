import { BlockList, isIP } from 'node:net'

/**
 * Client addresses, parsed as addresses rather than matched as text: a
 * header can say anything ("127.evil.example" starts with "127." too).
 */

const loopback = new BlockList()
loopback.addSubnet('127.0.0.0', 8, 'ipv4')
loopback.addAddress('::1', 'ipv6')

/**
 * The canonical text of an IP address (IPv6 compressed and lower-case,
 * IPv4-mapped IPv6 as plain IPv4, a port or brackets dropped), or undefined
 * when `raw` is not an IP address. One address has one spelling, so a rate
 * limit keyed by it cannot be escaped by respelling it.
 */
export function canonicalAddress(raw: string): string | undefined {
  let text = raw.trim()
  const bracketed = /^\[([^\]]+)\](?::\d{1,5})?$/.exec(text)
  if (bracketed) text = bracketed[1] as string
  else if (/^\d{1,3}(?:\.\d{1,3}){3}:\d{1,5}$/.test(text)) text = text.slice(0, text.indexOf(':'))
  const family = isIP(text)
  if (family === 4) return text
  if (family !== 6) return undefined
  let v6: string
  try {
    // WHATWG URL serialisation is the canonical IPv6 form (RFC 5952).
    v6 = new URL(`http://[${text}]/`).hostname.slice(1, -1)
  } catch {
    return text.toLowerCase() // a zone index (fe80::1%eth0): valid, but URL refuses it
  }
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6)
  if (!mapped) return v6
  const high = Number.parseInt(mapped[1] as string, 16)
  const low = Number.parseInt(mapped[2] as string, 16)
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`
}

/** 127.0.0.0/8, ::1 and their IPv4-mapped forms; anything that is not an address is not loopback. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false
  const canonical = canonicalAddress(address)
  if (canonical === undefined) return false
  return loopback.check(canonical, isIP(canonical) === 4 ? 'ipv4' : 'ipv6')
}

/** Headers a proxy adds: a request carrying one came through a proxy (or says it did). */
const PROXY_HEADERS = ['x-forwarded-for', 'forwarded', 'x-real-ip'] as const

export function viaProxy(headers: Headers): boolean {
  return PROXY_HEADERS.some((name) => headers.has(name))
}

/**
 * The client's address behind `hops` trusted proxies: each proxy appends
 * the address it was connected from to X-Forwarded-For, so the entry
 * `hops` from the right was written by the outermost trusted proxy; the
 * ones left of it are whatever the client sent. With fewer entries than
 * hops, the leftmost is the furthest any trusted proxy saw. Undefined when
 * there is no header or that entry is not an IP address.
 */
export function forwardedAddress(header: string | null, hops: number): string | undefined {
  if (header === null || hops < 1) return undefined
  const entries = header.split(',')
  const entry = entries[Math.max(0, entries.length - hops)]
  return entry === undefined ? undefined : canonicalAddress(entry)
}

/**
 * The address limits and sessions key on: the socket peer's, or with
 * `trustProxyHops` > 0 the one the trusted proxies recorded in
 * X-Forwarded-For (the peer's when there is none, or when it is not an
 * address). Never used to decide loopback trust: see Gate.admitAdmin.
 */
export function clientAddress(
  headers: Headers,
  peer: string | undefined,
  trustProxyHops: number,
): string {
  const forwarded =
    trustProxyHops > 0
      ? forwardedAddress(headers.get('x-forwarded-for'), trustProxyHops)
      : undefined
  if (forwarded !== undefined) return forwarded
  if (peer === undefined) return 'unknown'
  return canonicalAddress(peer) ?? peer
}
