import { apiRoutes } from './http/api-routes.ts'

/**
 * Never called: its return type is what `App` names. Written as a function
 * whose type is inferred, so that the emitted declaration spells the route
 * tree out in full instead of pointing into the server's modules (a
 * frontend that imports `App` type-checks Elysia's types, not our server).
 */
const routes = () => apiRoutes(undefined as never)

/** The REST API's Elysia type, for Eden Treaty: `treaty<App>('localhost:3000')`. */
export type App = ReturnType<typeof routes>
