import { type IntegerOptions, Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { t } from 'elysia'
import { badRequest } from '../protocol/errors.ts'

/**
 * A query-string integer, taken from its text as Elysia's `t.Integer` does
 * (a query string has no numbers). Elysia checks the range only after
 * decoding, and its error there has lost the parameter's name (it says
 * "property"); this one refuses with a 400 naming `name`.
 */
export function queryInteger(name: string, options: IntegerOptions) {
  const range = TypeCompiler.Compile(Type.Integer(options))
  return t
    .Transform(t.Union([t.String({ format: 'integer' }), Type.Integer(options)], options))
    .Decode((value) => {
      const number = Number(value)
      if (range.Check(number)) return number
      const why = range.Errors(number).First()?.message ?? 'out of range'
      throw badRequest(`invalid query "${name}": ${why}`, { field: name, in: 'query' })
    })
    .Encode((value) => value)
}
