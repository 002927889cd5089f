// Swagger UI assets, imported as text (`with { type: 'text' }`) so the compiled binary embeds them.
declare module 'swagger-ui-dist/swagger-ui-bundle.js' {
  const text: string
  export default text
}
declare module 'swagger-ui-dist/swagger-ui.css' {
  const text: string
  export default text
}
// Text imports (`with { type: 'text' }`) of embedded assets.
declare module '*.sql' {
  const text: string
  export default text
}
