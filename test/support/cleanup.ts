/**
 * Runs a test body that registers its cleanups with `defer`; they run newest
 * first whatever happened. A cleanup's failure is thrown only when the body
 * passed (its own failure says more).
 */
export async function withCleanup(
  body: (defer: (step: () => unknown) => void) => Promise<void>,
): Promise<void> {
  const steps: Array<() => unknown> = []
  let failure: { error: unknown } | undefined
  try {
    await body((step) => steps.push(step))
  } catch (error) {
    failure = { error }
  }
  for (const step of steps.reverse()) {
    try {
      await step()
    } catch (error) {
      failure ??= { error }
    }
  }
  if (failure) throw failure.error
}
