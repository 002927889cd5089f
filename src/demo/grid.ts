/**
 * The /demo page's script: a small collaborative grid built only on the
 * client SDK. Each record is a json0 document of `record_demo`; the
 * selected cell of each user is presence in the collection's channel.
 */
import {
  type Doc,
  type Json0Component,
  RealtimeClient,
  type Text0Component,
} from '../client/index.ts'

const COLLECTION = 'record_demo'
const RECORDS = ['rec1', 'rec2', 'rec3', 'rec4', 'rec5']
const FIELDS = [
  { id: 'name', label: 'Name' },
  { id: 'status', label: 'Status' },
  { id: 'notes', label: 'Notes' },
]
const COLORS = ['#e8590c', '#1c7ed6', '#2f9e44', '#ae3ec9', '#f08c00', '#0c8599']

interface Record {
  fields: { [field: string]: string }
}
interface Selection {
  cell: [string, string]
  color: string
}

const params = new URLSearchParams(location.search)
const userId =
  params.get('user') ??
  sessionStorage.getItem('demo-user') ??
  `guest-${Math.random().toString(36).slice(2, 6)}`
sessionStorage.setItem('demo-user', userId)
const color = COLORS[[...userId].reduce((sum, c) => sum + c.charCodeAt(0), 0) % COLORS.length]

const $ = <T extends HTMLElement>(selector: string) => document.querySelector(selector) as T
const banner = $<HTMLDivElement>('#banner')
const grid = $<HTMLTableElement>('#grid')
$<HTMLSpanElement>('#me').textContent = userId
$<HTMLSpanElement>('#me').style.background = color ?? '#333'

const client = new RealtimeClient({
  url: location.origin,
  userId,
  clientName: 'teable-realtime demo',
})
const presence = client.presence(COLLECTION)
const docs = new Map<string, Doc<Record>>(
  RECORDS.map((id) => [id, client.doc<Record>(COLLECTION, id)]),
)

/**
 * The grid's cells by record and field. Looked up in a map, never through a
 * selector: a cell named in someone else's presence state is their input.
 */
const cells = new Map<string, HTMLTableCellElement>()
const cellKey = (record: string, field: string) => JSON.stringify([record, field])

function cell(record: string, field: string): HTMLTableCellElement | undefined {
  return cells.get(cellKey(record, field))
}

function input(record: string, field: string): HTMLInputElement {
  return cell(record, field)?.querySelector('input') as HTMLInputElement
}

function render(): void {
  const head = `<tr><th></th>${FIELDS.map((f) => `<th>${f.label}</th>`).join('')}</tr>`
  const rows = RECORDS.map(
    (record, i) =>
      `<tr><th>${i + 1}</th>${FIELDS.map(
        (f) =>
          `<td data-rec="${record}" data-fld="${f.id}"><input aria-label="${record} ${f.label}"><span class="who"></span></td>`,
      ).join('')}</tr>`,
  ).join('')
  grid.innerHTML = head + rows
  cells.clear()
  for (const td of grid.querySelectorAll<HTMLTableCellElement>('td'))
    cells.set(cellKey(td.dataset.rec ?? '', td.dataset.fld ?? ''), td)
  for (const record of RECORDS)
    for (const field of FIELDS) {
      const box = input(record, field.id)
      box.addEventListener('input', () => edit(record, field.id, box.value))
      box.addEventListener('focus', () => select(record, field.id))
    }
}

/** Shows a record's values (leaving alone what the user is typing, if it agrees). */
function show(record: string): void {
  const data = docs.get(record)?.data
  for (const field of FIELDS) {
    const box = input(record, field.id)
    const value = data?.fields?.[field.id] ?? ''
    if (box.value === value) continue
    // Keep the caret where it was (as near as the new text allows) in the cell being typed in.
    const focused = document.activeElement === box
    const start = box.selectionStart
    const end = box.selectionEnd
    box.value = value
    if (focused && start !== null && end !== null) box.setSelectionRange(start, end)
  }
}

/**
 * The smallest text0 edit from one value to the next (what changed between
 * the common prefix and suffix): concurrent typing in one cell merges, as
 * json0 transforms text edits, instead of the last writer's value winning.
 */
function textEdit(before: string, after: string): Text0Component[] {
  let start = 0
  while (start < before.length && start < after.length && before[start] === after[start]) start++
  let end = 0
  while (
    end < before.length - start &&
    end < after.length - start &&
    before[before.length - 1 - end] === after[after.length - 1 - end]
  )
    end++
  const removed = before.slice(start, before.length - end)
  const inserted = after.slice(start, after.length - end)
  const edit: Text0Component[] = []
  if (removed) edit.push({ p: start, d: removed })
  if (inserted) edit.push({ p: start, i: inserted })
  return edit
}

function edit(record: string, field: string, value: string): void {
  const doc = docs.get(record)
  const data = doc?.data
  if (!doc || !data) return
  const previous = data.fields[field]
  const path = ['fields', field]
  let op: Json0Component
  if (typeof previous === 'string') {
    const text = textEdit(previous, value)
    if (text.length === 0) return
    op = { p: path, t: 'text0', o: text }
  } else op = previous === undefined ? { p: path, oi: value } : { p: path, oi: value, od: previous }
  // Not loaded (a reload after a reset): refused as a rejected promise; the reload shows the value.
  doc.submit([op]).catch((error: Error) => flash(`Change refused: ${error.message}`, 'error'))
}

function select(record: string, field: string): void {
  const selection: Selection = { cell: [record, field], color: color ?? '#333' }
  presence.set(selection).catch(() => {})
}

/** Marks each cell selected by someone else with their colour and name. */
function showPresence(): void {
  for (const td of grid.querySelectorAll<HTMLTableCellElement>('td')) {
    td.classList.remove('present')
    td.style.removeProperty('--who')
    ;(td.querySelector('.who') as HTMLSpanElement).textContent = ''
  }
  for (const user of presence.users())
    for (const member of user.connections) {
      // Someone else's state: any JSON. Only a known cell and a plain colour are used.
      const state = member.state as Partial<Selection> | null
      const [record, field] = Array.isArray(state?.cell) ? state.cell : []
      if (typeof record !== 'string' || typeof field !== 'string') continue
      const td = cell(record, field)
      if (!td) continue
      td.classList.add('present')
      const who = typeof state?.color === 'string' ? state.color : ''
      td.style.setProperty('--who', /^#[0-9a-f]{3,8}$/i.test(who) ? who : '#333')
      ;(td.querySelector('.who') as HTMLSpanElement).textContent = user.userId
    }
  const others = presence.users().map((u) => u.userId)
  $<HTMLSpanElement>('#others').textContent = others.length
    ? `Also here: ${others.join(', ')}`
    : 'Nobody else here'
}

let hideTimer: ReturnType<typeof setTimeout> | undefined
function flash(text: string, kind: 'warn' | 'ok' | 'error', sticky = false): void {
  clearTimeout(hideTimer)
  banner.textContent = text
  banner.className = `show ${kind}`
  if (!sticky) hideTimer = setTimeout(() => (banner.className = ''), 2500)
}

client.on('state', ({ state }) => {
  document.body.dataset.connection = state
  if (state === 'reconnecting' || state === 'connecting') flash('Reconnecting…', 'warn', true)
  if (state === 'offline')
    flash('Offline: your edits are kept and sent when the network is back', 'warn', true)
})
let connections = 0
client.on('resynced', () => {
  connections++
  document.body.dataset.resyncs = String(connections)
  if (connections > 1) flash('Resynced: back online, nothing lost', 'ok')
})
client.on('closed', ({ reason }) => flash(`Cannot connect: ${reason}`, 'error', true))
presence.on('change', showPresence)
for (const [record, doc] of docs) {
  doc.on('op', () => show(record))
  doc.on('load', () => show(record))
  doc.on('create', () => show(record))
}

render()
await Promise.all(
  [...docs].map(async ([record, doc]) => {
    await doc.subscribe()
    // The first visitor creates the records; a second one racing it gets 409 and the first's.
    if (doc.data === null)
      await doc
        .create({ fields: { name: '', status: '', notes: '' } } satisfies Record)
        .catch(() => doc.subscribe())
    show(record)
  }),
)
document.body.dataset.ready = 'true'
