import { afterAll, beforeAll, expect, test } from 'bun:test'
import { Parser } from '@asyncapi/parser'
import { clientMessageSchemas } from '../src/protocol/messages.ts'
import { serverMessageSchemas } from '../src/protocol/server-messages.ts'
import { startServer, type TestServer } from './helpers.ts'

let server: TestServer
beforeAll(() => {
  server = startServer()
})
afterAll(() => server.close())

test('GET /asyncapi.json is a valid AsyncAPI 3 document of every socket message', async () => {
  const response = await fetch(`${server.url}/asyncapi.json`)
  expect(response.status).toBe(200)
  const text = await response.text()
  const { document, diagnostics } = await new Parser().parse(text)
  // Severity 0 is an error, 1 a warning (2 and 3 are hints).
  expect(diagnostics.filter((d) => d.severity <= 1).map((d) => `${d.code}: ${d.message}`)).toEqual(
    [],
  )
  if (!document) throw new Error('not parsed')
  expect(document.version()).toStartWith('3.')
  const names = document
    .allMessages()
    .all()
    .map((message) => message.name())
  for (const type of Object.keys(clientMessageSchemas)) expect(names).toContain(`${type}Request`)
  for (const name of Object.keys(serverMessageSchemas)) expect(names).toContain(`${name}Frame`)
  const submit = document.operations().get('submit')
  expect(submit?.action()).toBe('receive')
  expect(
    submit
      ?.reply()
      ?.messages()
      .all()
      .map((m) => m.name()),
  ).toEqual(['submitFrame', 'errorFrame'])
  expect(document.servers().get('realtime')?.host()).toBe(new URL(server.url).host)
})

test('the Swagger UI description links the AsyncAPI document', async () => {
  const spec = (await (await fetch(`${server.url}/swagger/json`)).json()) as {
    info: { description: string }
  }
  expect(spec.info.description).toContain('(/asyncapi.json)')
})
