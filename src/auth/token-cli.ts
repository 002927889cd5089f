/**
 * `bun run token -- --sub alice --channels 'record_tbl1,view_*' --publish 'record_tbl1' --ttl 3600`
 * prints a connection token. HS256 with AUTH_SECRET (from the environment,
 * as the server reads it) or --secret; RS256/ES256 with --key <private PEM file>.
 */
import { createPrivateKey, createSecretKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { SignJWT } from 'jose'
import { loadConfig } from '../config.ts'

const { values } = parseArgs({
  options: {
    sub: { type: 'string' },
    channels: { type: 'string', default: '' },
    publish: { type: 'string', default: '' },
    ttl: { type: 'string', default: '3600' },
    secret: { type: 'string' },
    key: { type: 'string' },
  },
})
if (!values.sub) {
  process.stderr.write(
    'usage: bun run token -- --sub USER [--channels a,b*] [--publish a] [--ttl SECONDS] [--secret S | --key private.pem]\n',
  )
  process.exit(2)
}
const list = (csv: string) =>
  csv
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)

let key: ReturnType<typeof createSecretKey>
let alg: string
if (values.key) {
  key = createPrivateKey(readFileSync(values.key, 'utf8'))
  alg = key.asymmetricKeyType === 'ec' ? 'ES256' : 'RS256'
} else {
  const secret = values.secret ?? loadConfig(process.env).authSecret
  if (!secret) {
    process.stderr.write('no key: set AUTH_SECRET, or pass --secret or --key\n')
    process.exit(2)
  }
  key = createSecretKey(Buffer.from(secret))
  alg = 'HS256'
}

const token = await new SignJWT({ channels: list(values.channels), publish: list(values.publish) })
  .setProtectedHeader({ alg })
  .setSubject(values.sub)
  .setIssuedAt()
  .setExpirationTime(`${Number(values.ttl)}s`)
  .sign(key)
process.stdout.write(`${token}\n`)
