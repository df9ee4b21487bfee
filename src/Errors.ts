/**
 * The engine's public errors, in a module of their own so that users can match
 * on them without pulling in the engine.
 *
 * @since 0.1.0
 */
import { Data } from "effect"
import type { EventSourceError } from "./EventSource.js"
import type { StoreError } from "./ReadModelStore.js"

/**
 * The engine failed and stopped: a store or source error that is not transient.
 * In-flight work was drained and the checkpoint committed before it stopped.
 *
 * @since 0.1.0
 */
export class ReconcilerError extends Data.TaggedError("ReconcilerError")<{
  readonly projection: string
  readonly message: string
  readonly cause: StoreError | EventSourceError
}> {}

/**
 * A run option is out of range.
 *
 * @since 0.1.0
 */
export class InvalidRunOptions extends Data.TaggedError("InvalidRunOptions")<{
  readonly message: string
}> {}
