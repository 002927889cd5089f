import { defineConfig } from 'drizzle-kit'

/** The PostgreSQL store's migrations (cluster mode); drizzle.config.ts has SQLite's. */
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/store/postgres/schema.ts',
  out: './drizzle/postgres',
})
