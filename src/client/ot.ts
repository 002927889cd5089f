import { type as json0 } from 'ot-json0'
import type { Json0Component, Json0Op } from '../protocol/messages.ts'

/**
 * The json0 type (ShareDB's, from `ot-json0`) as the client uses it, with
 * the server's reading of the seed's shorthand: `{p, t, o}` with any `t`
 * but `text0` sets the value at `p`, and is sent, applied and transformed
 * as `{p, oi: o}` so that every client computes what the server stores.
 */
export function normalize(op: readonly Json0Component[]): Json0Op {
  return op.map((component) =>
    't' in component && component.t !== 'text0' && 'o' in component
      ? { p: component.p, oi: component.o }
      : component,
  )
}

/** Applies an op to a copy of the snapshot (a refused op leaves the original untouched). */
export function applyToCopy(snapshot: unknown, op: Json0Op): unknown {
  return json0.apply(structuredClone(snapshot), op)
}

/** Applies an op in place (json0 mutates containers) and returns the new root. */
export function applyInPlace(snapshot: unknown, op: Json0Op): unknown {
  return json0.apply(snapshot, op)
}

/**
 * ShareDB's transformX: a local op and a concurrent server op, each
 * rewritten to apply after the other. The local one is on the left, as the
 * server transforms a submitted op, so both sides pick the same winner.
 */
export function transformX(local: Json0Op, remote: Json0Op): [Json0Op, Json0Op] {
  return [
    json0.transform(local, remote, 'left') as Json0Op,
    json0.transform(remote, local, 'right') as Json0Op,
  ]
}

/**
 * json0's compose: one op with the effect of `first` then `second`. Set
 * instructions on one path merge (`oi`/`od` typed key by key is one
 * component), `na`s add up, text0 edits merge. Undefined if json0 cannot.
 */
export function compose(first: Json0Op, second: Json0Op): Json0Op | undefined {
  try {
    // Not in the shared ot-json0 declaration (src/documents), which the server owns.
    const type = json0 as typeof json0 & { compose(a: unknown[], b: unknown[]): unknown[] }
    return type.compose(first, second) as Json0Op
  } catch {
    return undefined
  }
}
