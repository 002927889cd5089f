import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { type Browser, chromium } from 'playwright-core'

/** Where screenshots go (git-ignored). */
export const ARTIFACTS = join(import.meta.dir, '..', 'artifacts')
mkdirSync(ARTIFACTS, { recursive: true })

/** Debian's Chromium, headless, kept off the network beyond what pages ask for. */
export function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
}
