/**
 * A parent process for the embedded-process test: starts the embedded servers'
 * child, prints its pid, and waits to be killed.
 */
import { Effect } from "effect"
import * as EmbeddedProcess from "../../src/internal/embeddedProcess.js"

Effect.runPromise(Effect.scoped(Effect.gen(function*() {
  const running = yield* EmbeddedProcess.make({ eventStore: {}, mongo: {} })
  console.log(JSON.stringify({ child: running.pid }))
  return yield* Effect.never
}))).catch((error) => {
  console.error(error)
  process.exit(1)
})
