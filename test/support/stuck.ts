/**
 * A handler that never finishes its first event: a service running it cannot
 * complete its drain, which is how the command-line tests reach "a second
 * signal during the drain".
 */
import { Effect, Schema } from "effect"
import { Projection } from "../../src/index.js"

export const stuck = Projection.handler({
  name: "stuck",
  categories: ["stuck"],
  events: { Stuck: Schema.Struct({ n: Schema.Number }) },
  handle: (event) =>
    Effect.sync(() => console.log(`handling ${event.id}, forever`)).pipe(Effect.zipRight(Effect.never))
})
