// The parts of ot-json0 (ShareDB's json0 type) this server uses; it ships no types.
declare module 'ot-json0' {
  export interface Json0Type {
    name: 'json0'
    apply(snapshot: unknown, op: unknown[]): unknown
    transform(op: unknown[], otherOp: unknown[], side: 'left' | 'right'): unknown[]
  }
  export const type: Json0Type
}
