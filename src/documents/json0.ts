import { type as json0 } from 'ot-json0'
import { badRequest, ErrorCode, ProtocolError } from '../protocol/errors.ts'

/** One json0 component: a path and its instruction keys (na, li, ld, lm, oi, od, t+o). */
export type OpComponent = { p: Array<string | number> } & Record<string, unknown>
export type Json0Op = OpComponent[]

/** Path steps that could reach Object.prototype through a snapshot. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype'])

const has = (c: OpComponent, key: string) => Object.hasOwn(c, key) && c[key] !== undefined

/**
 * Checks an op's shape and turns the seed's shorthand `{p, t, o}` ("set the
 * value at p", when `t` is not the text0 subtype) into json0 `{p, oi}`.
 * Throws 400 naming the component.
 */
export function normalizeOp(op: readonly OpComponent[]): Json0Op {
  return op.map((component, index) => {
    const where = { field: `op.${index}` }
    for (const step of component.p)
      if (typeof step === 'string' && FORBIDDEN_KEYS.has(step))
        throw badRequest(`op component ${index}: path step "${step}" is not allowed`, where)
    // json0 turns si/sd into a text edit one path step up whatever else the
    // component says; they were never accepted alone, and are not beside others.
    if (has(component, 'si') || has(component, 'sd'))
      throw badRequest(
        `op component ${index}: si/sd are not supported; use {p, t: 'text0', o}`,
        where,
      )
    if (has(component, 't') && has(component, 'o') && !isText0(component))
      return { p: component.p, oi: component.o }
    const kinds = [
      has(component, 'na'),
      has(component, 'li') || has(component, 'ld'),
      has(component, 'lm'),
      has(component, 'oi') || has(component, 'od'),
      isText0(component),
    ].filter(Boolean).length
    if (kinds !== 1)
      throw badRequest(
        `op component ${index} needs exactly one json0 instruction (na, li/ld, lm, oi/od, or t:'text0' with o)`,
        where,
      )
    // A JSON number, finite (1e999 parses to Infinity, which the store writes as null).
    if (has(component, 'na') && !Number.isFinite(component.na))
      throw badRequest(`op component ${index}: na must be a finite number`, where)
    if (has(component, 'lm') && !isIndex(component.lm))
      throw badRequest(`op component ${index}: lm must be an index`, where)
    if (
      (has(component, 'li') || has(component, 'ld') || has(component, 'lm')) &&
      !isIndex(last(component.p))
    )
      throw badRequest(
        `op component ${index}: a list instruction needs an index as the last path step`,
        where,
      )
    if ((has(component, 'oi') || has(component, 'od')) && typeof last(component.p) !== 'string')
      throw badRequest(
        `op component ${index}: an object instruction needs a key as the last path step`,
        where,
      )
    if (component.p.length === 0 && !has(component, 'oi') && !has(component, 'od'))
      throw badRequest(`op component ${index}: empty path`, where)
    return component
  })
}

function isText0(c: OpComponent): boolean {
  return c.t === 'text0' && Array.isArray(c.o)
}

function isIndex(step: unknown): step is number {
  return typeof step === 'number' && Number.isInteger(step) && step >= 0
}

function last<T>(items: readonly T[]): T | undefined {
  return items[items.length - 1]
}

/** UTF-8 bytes of a value's JSON text, as the store writes it. */
export function jsonBytes(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value) ?? 'null')
}

/** 413: a document would pass MAX_DOCUMENT_SIZE. */
export function tooLarge(size: number, limit: number, field: string): ProtocolError {
  return new ProtocolError(
    ErrorCode.TooLarge,
    `the document would be ${size} bytes of JSON; the limit is ${limit}`,
    { field, limit, size },
  )
}

/** The snapshot after an op and its size in bytes of JSON (see `applyOp`). */
export interface Applied {
  data: unknown
  size: number
}

/**
 * Escaping of a string edit's edges can differ from the text measured alone
 * (a surrogate pair split or joined: 4 bytes raw, 6 for each lone half).
 */
const TEXT_EDGE_SLACK = 16

/** The running size of an op being applied: removed values are measured once it applied. */
interface Tally {
  size: number
  removed: unknown[]
}

/**
 * Applies an op to the snapshot **in place**, so its cost follows the op, not
 * the document, and returns the root (a new value only when the op replaced
 * it) and the document's new size.
 *
 * `size` is the snapshot's size in UTF-8 bytes of its JSON text, as the
 * store writes it. The result is a safe upper bound: exact for every
 * component but object inserts and deletes (the comma beside the key is
 * counted on insert and not subtracted on delete: knowing whether the object
 * has other keys costs O(keys) in JSC) and text0 edits (up to
 * TEXT_EDGE_SLACK per edit), and the store makes it exact again at each
 * commit. Values an op replaces or removes are measured only once every
 * component applied, so a refused op never pays for them.
 *
 * Refuses (400) anything json0 would apply loosely: a path through a missing
 * key, a delete of a missing key, a list index out of range; and (413) an op
 * that leaves the document larger than `maxSize` and larger than it was (one
 * that shrinks an oversize document is let through). On a refusal the
 * components already applied are undone from an undo log of the values they
 * really replaced (not json0's `invert`, which trusts the op's `od`/`ld`:
 * json0 never checks them against the snapshot). The snapshot is then equal
 * to what it was; only a key removed and put back moves to the end of its
 * object (JSON objects are unordered; restoring the order costs O(keys)).
 */
export function applyOp(snapshot: unknown, size: number, op: Json0Op, maxSize: number): Applied {
  const root = { data: snapshot }
  const undo: Array<() => void> = []
  const tally: Tally = { size, removed: [] }
  try {
    op.forEach((component, index) => {
      applyComponent(root, tally, component, index, undo)
    })
    let bytes = tally.size
    for (const value of tally.removed) bytes -= jsonBytes(value)
    if (bytes > maxSize && bytes > size) throw tooLarge(bytes, maxSize, 'op')
    return { data: root.data, size: bytes }
  } catch (error) {
    for (let i = undo.length - 1; i >= 0; i--) (undo[i] as () => void)()
    throw error
  }
}

type Container = Record<string | number, unknown>

/**
 * Applies one component in place, adds its size change to the tally and
 * pushes what undoes it. json0 applies a single component atomically (it
 * throws before mutating), so a refused component needs no undo of its own.
 */
function applyComponent(
  root: { data: unknown },
  tally: Tally,
  c: OpComponent,
  index: number,
  undo: Array<() => void>,
): void {
  const parent = checkTarget(root.data, c, index)
  const apply = () => {
    try {
      root.data = json0.apply(root.data, [c])
    } catch (error) {
      throw badRequest(`op component ${index} does not apply: ${(error as Error).message}`, {
        field: `op.${index}`,
      })
    }
  }
  if (parent === undefined) {
    // p: [] replaces the root (oi) or removes it (od: the snapshot becomes null).
    const old = root.data
    apply()
    if (root.data === undefined) root.data = null
    undo.push(() => {
      root.data = old
    })
    tally.size = jsonBytes(root.data)
    tally.removed = []
    return
  }
  const key = last(c.p) as string | number
  const old = parent[key]
  if (has(c, 'na')) {
    apply()
    undo.push(() => {
      parent[key] = old
    })
    tally.size += jsonBytes(parent[key]) - jsonBytes(old)
    return
  }
  if (isText0(c)) {
    apply()
    undo.push(() => {
      parent[key] = old
    })
    for (const edit of c.o as Array<{ i?: unknown; d?: unknown }>) {
      if (typeof edit.i === 'string') tally.size += jsonBytes(edit.i) - 2 + TEXT_EDGE_SLACK
      // A delete that splits a pair can grow the text: a lone half is escaped.
      if (typeof edit.d === 'string') tally.size -= jsonBytes(edit.d) - 2 - TEXT_EDGE_SLACK
    }
    return
  }
  if (Array.isArray(parent)) {
    const at = key as number
    const length = parent.length
    apply()
    if (has(c, 'li') && has(c, 'ld')) {
      undo.push(() => {
        parent[at] = old
      })
      tally.size += jsonBytes(c.li)
      tally.removed.push(old)
    } else if (has(c, 'li')) {
      undo.push(() => parent.splice(at, 1))
      tally.size += jsonBytes(c.li) + (length > 0 ? 1 : 0)
    } else if (has(c, 'ld')) {
      undo.push(() => parent.splice(at, 0, old))
      tally.size -= length > 1 ? 1 : 0
      tally.removed.push(old)
    } else {
      // lm: a move changes no size.
      const to = c.lm as number
      undo.push(() => {
        if (to === at) return
        const moved = parent[to]
        parent.splice(to, 1)
        parent.splice(at, 0, moved)
      })
    }
    return
  }
  // oi / od on an object (checkTarget made sure the parent is one).
  const had = Object.hasOwn(parent, key)
  const keyBytes = Buffer.byteLength(JSON.stringify(key)) + 1 // "key":
  apply()
  undo.push(() => {
    if (had) parent[key] = old
    else delete parent[key]
  })
  if (had) tally.removed.push(old)
  if (has(c, 'oi')) tally.size += jsonBytes(c.oi) + (had ? 0 : keyBytes + 1)
  else tally.size -= keyBytes
}

/**
 * Checks that the component's target exists as json0 needs it and returns
 * the container it changes (undefined for the root itself).
 */
function checkTarget(data: unknown, c: OpComponent, index: number): Container | undefined {
  const fail = (why: string) =>
    badRequest(`op component ${index} does not apply: ${why}`, { field: `op.${index}`, path: c.p })
  if (c.p.length === 0) return undefined // replacing the root with oi
  let parent: unknown = data
  for (const step of c.p.slice(0, -1)) {
    if (!containerHas(parent, step)) throw fail(`path step ${JSON.stringify(step)} does not exist`)
    parent = (parent as Container)[step]
  }
  const key = last(c.p) as string | number
  if (has(c, 'li') || has(c, 'ld') || has(c, 'lm')) {
    if (!Array.isArray(parent)) throw fail('the parent is not a list')
    const length = parent.length
    const index_ = key as number
    if (has(c, 'li') && !has(c, 'ld') && index_ > length)
      throw fail(`index ${index_} is past the end`)
    if ((has(c, 'ld') || has(c, 'lm')) && index_ >= length) throw fail(`no element at ${index_}`)
    if (has(c, 'lm') && ((c.lm as number) < 0 || (c.lm as number) >= length))
      throw fail(`cannot move to ${String(c.lm)}`)
    return parent as unknown as Container
  }
  if (has(c, 'oi') || has(c, 'od')) {
    if (typeof parent !== 'object' || parent === null || Array.isArray(parent))
      throw fail('the parent is not an object')
    if (has(c, 'od') && !Object.hasOwn(parent, key))
      throw fail(`key ${JSON.stringify(key)} does not exist`)
    return parent as Container
  }
  // na and text0 need an existing target of the right type; json0 checks na's.
  if (!containerHas(parent, key)) throw fail(`path step ${JSON.stringify(key)} does not exist`)
  if (isText0(c) && typeof (parent as Container)[key] !== 'string')
    throw fail('a text0 edit needs a string')
  return parent as Container
}

function containerHas(container: unknown, step: string | number): boolean {
  if (Array.isArray(container)) return typeof step === 'number' && step < container.length
  if (typeof container === 'object' && container !== null)
    return typeof step === 'string' && Object.hasOwn(container, step)
  return false
}

/** Transforms `op` so it applies after `applied` (ShareDB: the incoming op is 'left'). */
export function transformOp(op: Json0Op, applied: Json0Op): Json0Op {
  try {
    return json0.transform(op, applied, 'left') as Json0Op
  } catch (error) {
    throw new ProtocolError(
      ErrorCode.Conflict,
      `op cannot be transformed: ${(error as Error).message}`,
    )
  }
}
