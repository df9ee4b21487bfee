/**
 * The drain, run on every exit of the engine (end of source, failure,
 * interruption) before the lanes' and the subscription's scopes close: stop the
 * committers, let the lanes finish their in-flight batches within the drain
 * timeout, commit every checkpoint, and nack for retry what was received but
 * not applied.
 *
 * Finalizers are uninterruptible; each wait is made interruptible so that its
 * deadline holds even when the store or the source is down.
 */
import { Duration, Effect, Fiber, Metric, Option } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { Resolved } from "./options.js"
import type { Pipeline } from "./pipeline.js"

export interface Running {
  readonly pipeline: Pipeline
  readonly lanes: ReadonlyArray<Fiber.Fiber<void, ReconcilerError>>
  readonly committer: Fiber.Fiber<never, ReconcilerError>
}

export const drain = (running: ReadonlyArray<Running>, options: Resolved): Effect.Effect<void> => {
  const { drainTimeout } = options
  const withDeadline = <A, E>(effect: Effect.Effect<A, E>, what: string) =>
    effect.pipe(
      Effect.interruptible,
      Effect.timeoutOption(drainTimeout),
      Effect.flatMap(Option.match({
        onNone: () => Effect.logWarning(`${what} timed out after ${Duration.format(drainTimeout)}`),
        onSome: () => Effect.void
      }))
    )
  return Effect.gen(function*() {
    yield* Effect.forEach(running, (r) => Fiber.interrupt(r.committer), { discard: true })
    for (const r of running) {
      yield* Metric.set(r.pipeline.ctx.metrics.stalled, 0)
      r.pipeline.endLanes()
    }
    const lanes = running.flatMap((r) => r.lanes)
    // Every lane finishes its in-flight batch, even when another lane failed.
    yield* withDeadline(
      Effect.forEach(lanes, Fiber.await, { concurrency: "unbounded", discard: true }),
      "draining the lanes (in-flight work abandoned)"
    )
    yield* Effect.forEach(lanes, Fiber.interrupt, { discard: true })
    yield* withDeadline(
      Effect.forEach(
        running,
        (r) =>
          r.pipeline.committer.commit.pipe(
            Effect.catchAll((error) => Effect.logError("final checkpoint commit failed", error))
          ),
        { concurrency: "unbounded", discard: true }
      ),
      "the final checkpoint commit"
    )
    // Received but not applied: hand back for redelivery (catch-up resumes from the checkpoint).
    if (options.mode === "persistent") {
      yield* withDeadline(
        Effect.forEach(running, (r) => r.pipeline.settlement.nackUnsettled, { concurrency: "unbounded", discard: true }),
        "nacking what was not applied"
      )
    }
  })
}
