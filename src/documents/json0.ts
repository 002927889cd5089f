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
    if (has(component, 'na') && typeof component.na !== 'number')
      throw badRequest(`op component ${index}: na must be a number`, where)
    if (has(component, 'lm') && !Number.isInteger(component.lm))
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

/**
 * Applies an op to a copy of the snapshot, refusing (400) anything json0
 * would apply loosely: a path through a missing key, a delete of a missing
 * key, a list index out of range. The input snapshot is never modified.
 */
export function applyOp(snapshot: unknown, op: Json0Op): unknown {
  let data = structuredClone(snapshot)
  op.forEach((component, index) => {
    checkTarget(data, component, index)
    try {
      data = json0.apply(data, [component])
    } catch (error) {
      throw badRequest(`op component ${index} does not apply: ${(error as Error).message}`, {
        field: `op.${index}`,
      })
    }
  })
  return data
}

function checkTarget(data: unknown, c: OpComponent, index: number): void {
  const fail = (why: string) =>
    badRequest(`op component ${index} does not apply: ${why}`, { field: `op.${index}`, path: c.p })
  if (c.p.length === 0) return // replacing the root with oi
  let parent: unknown = data
  for (const step of c.p.slice(0, -1)) {
    if (!containerHas(parent, step)) throw fail(`path step ${JSON.stringify(step)} does not exist`)
    parent = (parent as Record<string | number, unknown>)[step]
  }
  const key = last(c.p) as string | number
  if (has(c, 'li') || has(c, 'ld') || has(c, 'lm')) {
    if (!Array.isArray(parent)) throw fail('the parent is not a list')
    const length = parent.length
    const index_ = key as number
    if (has(c, 'li') && !has(c, 'ld') && index_ > length)
      throw fail(`index ${index_} is past the end`)
    if ((has(c, 'ld') || has(c, 'lm')) && index_ >= length) throw fail(`no element at ${index_}`)
    if (has(c, 'lm') && (c.lm as number) >= length) throw fail(`cannot move to ${String(c.lm)}`)
    return
  }
  if (has(c, 'oi') || has(c, 'od')) {
    if (typeof parent !== 'object' || parent === null || Array.isArray(parent))
      throw fail('the parent is not an object')
    if (has(c, 'od') && !Object.hasOwn(parent, key))
      throw fail(`key ${JSON.stringify(key)} does not exist`)
    return
  }
  // na and text0 need an existing target of the right type; json0 checks the type.
  if (!containerHas(parent, key)) throw fail(`path step ${JSON.stringify(key)} does not exist`)
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
