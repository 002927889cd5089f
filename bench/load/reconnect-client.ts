/**
 * Load client for bench:reconnect, run as its own process. Opens N sockets
 * from one address (127.0.0.1: clients behind one proxy), client i on
 * collection `storm{i % C}`, and notes each subscription's epoch and offset.
 * Prints {"phase":"subscribed"}; the driver then cuts the server (restart)
 * and publishes while the clients are away, and writes a line to stdin.
 * Then every client reconnects at once and resubscribes with `since`; the
 * client prints how long until every one has its subscribe reply
 * (`recovered:true`) and has received every missed entry.
 */
import { type Counter, maskedText, openCounted } from './ws-counter.ts'

const [url, countArg, collectionsArg, missedArg] = process.argv.slice(2)
if (!url || !countArg)
  throw new Error(
    'usage: reconnect-client <http url> <clients> <collections> <missed per collection>',
  )
const count = Number(countArg)
const collections = Number(collectionsArg ?? 50)
const missed = Number(missedArg ?? 100)
const port = Number(new URL(url).port)
const counter: Counter = { frames: 0, bytes: 0 }

interface Client {
  collection: string
  epoch: string
  offset: number
  messages: number
  recovered: boolean | undefined
}

const clients: Client[] = Array.from({ length: count }, (_, i) => ({
  collection: `storm${i % collections}`,
  epoch: '',
  offset: 0,
  messages: 0,
  recovered: undefined,
}))

/** Connects client i; resolves at its subscribe reply. */
function connect(i: number, resume: boolean): Promise<unknown> {
  const client = clients[i] as Client
  return new Promise((resolve, reject) => {
    openCounted('127.0.0.1', port, `/api/ws/socket?user_id=storm${i}`, counter, (text, sock) => {
      if (text.startsWith('{"type":"connected"')) {
        const subscribe: Record<string, unknown> = {
          type: 'subscribe',
          id: 1,
          collection: client.collection,
        }
        if (resume) subscribe.since = { epoch: client.epoch, offset: client.offset }
        sock.write(maskedText(JSON.stringify(subscribe)))
        return true
      }
      if (text.startsWith('{"type":"message"')) {
        client.messages++
        return true
      }
      if (!text.startsWith('{"type":"subscribe"')) return true
      const reply = JSON.parse(text) as {
        data: { epoch: string; offset: number; recovered?: boolean }
      }
      if (resume) client.recovered = reply.data.recovered
      else {
        client.epoch = reply.data.epoch
        client.offset = reply.data.offset
      }
      resolve(undefined)
      return false
    }).catch(reject)
  })
}

let refused = 0
/** A refused upgrade (429) retries after 100-300 ms, as a client's backoff would. */
async function connectRetrying(i: number, resume: boolean): Promise<unknown> {
  for (;;) {
    try {
      return await connect(i, resume)
    } catch {
      refused++
      await Bun.sleep(100 + Math.random() * 200)
    }
  }
}

for (let start = 0; start < count; start += 500) {
  const batch = []
  for (let i = start; i < Math.min(start + 500, count); i++) batch.push(connectRetrying(i, false))
  await Promise.all(batch)
}
console.log('{"phase":"subscribed"}')
refused = 0

// The driver restarts the server and publishes meanwhile, then says go.
const reader = Bun.stdin.stream().getReader()
await reader.read()

const started = performance.now()
// Every client at once, as after a restart.
await Promise.all(clients.map((_, i) => connectRetrying(i, true)))
const ms = performance.now() - started
const complete = clients.filter((c) => c.recovered === true && c.messages >= missed).length
console.log(
  JSON.stringify({
    clients: count,
    ms,
    complete,
    refused,
    messages: clients.reduce((n, c) => n + c.messages, 0),
  }),
)
process.exit(0)
