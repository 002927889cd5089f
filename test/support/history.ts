import { type as json0 } from 'ot-json0'
import { getJson, type ServerMessage } from '../helpers.ts'

export interface History {
  head: number
  messages: ServerMessage[]
}

/** Every held entry of a collection, oldest first, paging through GET /api/ws/history. */
export async function fullHistory(
  server: { url: string },
  collection: string,
  headers: Record<string, string> = {},
): Promise<History> {
  const messages: ServerMessage[] = []
  let since = 0
  for (;;) {
    const page = await getJson(
      server,
      `/api/ws/history?channel=${collection}&since=${since}&limit=1000`,
      headers,
    )
    if (page.status !== 200) throw new Error(`history: ${page.status} ${JSON.stringify(page.body)}`)
    const { head, messages: got } = page.body as History
    messages.push(...got)
    if (got.length < 1000) return { head, messages }
    since = got.at(-1)?.data.offset
  }
}

/** The snapshot a document must have: its create, then every stored op, in offset order. */
export function replaySnapshot(messages: readonly ServerMessage[], document: string): unknown {
  let data: unknown = null
  for (const message of messages) {
    if (message.type !== 'op' || message.document !== document) continue
    if (message.data.create) data = structuredClone(message.data.create.data)
    else if (message.data.del) data = null
    else if (message.data.op) data = json0.apply(data, message.data.op)
  }
  return data
}
