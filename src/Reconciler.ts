/**
 * The engine: runs a projection (or an effectful handler) over a subscription and
 * keeps its read model reconciled.
 *
 * ```
 * intake ─▶ decode ─▶ fan out ─▶ route by partition ─▶ lane 0..N-1 ─▶ batch ─▶ fold ─▶ guarded write
 *                                                                                         │
 *                   settlement / committer (checkpoint) ◀── watermark (contiguous completions) ◀┘
 * ```
 *
 * The pieces live in `src/internal/`: `intake` (the subscription, shared by
 * projections over the same categories), `pipeline` (routing and the lanes'
 * batch loops), `batches` (fold and guarded write), `settlement`, `committer`
 * (the only writer of the checkpoint), `drain`, assembled by `engine`.
 *
 * Guarantees: nothing is dropped silently (unknown types are skipped and counted,
 * poison events are dead-lettered or parked with their reason and raw bytes); a
 * redelivered event is a no-op (per-document markers); events of one document
 * apply in order; the checkpoint never runs ahead of durably written documents;
 * on interruption the engine stops pulling, drains in-flight work within a
 * timeout, commits its checkpoint and nacks for retry what it did not apply.
 *
 * @since 0.1.0
 */
import type { Duration, Schedule } from "effect"
import { Effect, Metric } from "effect"
import { InvalidRunOptions, ReconcilerError } from "./Errors.js"
import { EventSource } from "./EventSource.js"
import type { Runnable } from "./Projection.js"
import * as ReadModels from "./ReadModels.js"
import { ReadModelStore } from "./ReadModelStore.js"
import { loggingDeadLetters, loggingParks } from "./internal/deadLetterLog.js"
import { runGroup } from "./internal/engine.js"
import type { Mode } from "./internal/fold.js"
import { metrics as engineMetrics } from "./internal/metrics.js"
import * as Options from "./internal/options.js"

export {
  /** @since 0.1.0 */
  InvalidRunOptions,
  /** @since 0.1.0 */
  ReconcilerError
}

/**
 * How the engine runs.
 *
 * @since 0.1.0
 */
export interface RunOptions {
  /** `catch-up` (ordered, own checkpoint; default) or `persistent` (consumer group). */
  readonly mode?: Mode | undefined
  /** Parallel lanes; one document always lands in the same lane. Default 4. */
  readonly lanes?: number | undefined
  /** Most events folded into one write per lane. Default 500. */
  readonly batchSize?: number | undefined
  /**
   * Deliveries a lane may hold beyond its batch (with `lanes` and `batchSize`, the
   * in-flight bound: `lanes × laneBuffer + batchSize`). Default `2 × batchSize`, so that a
   * lane's next batch fills under a backlog while its last one is written.
   */
  readonly laneBuffer?: number | undefined
  /** How long a drain may take before in-flight work is abandoned (and nacked). Default 10 s. */
  readonly drainTimeout?: Duration.DurationInput | undefined
  /** The watchdog flags the engine as stalled when work is in flight and nothing settles for this long. Default 30 s. */
  readonly stallAfter?: Duration.DurationInput | undefined
  /** How often the checkpoint is committed when nothing else commits it. Default 1 s. */
  readonly commitInterval?: Duration.DurationInput | undefined
  /** Retries of transient store errors. Default: jittered exponential from 50 ms, capped at 5 s, unbounded. */
  readonly retrySchedule?: Schedule.Schedule<unknown> | undefined
  /** Resubscribes after a retryable source error. Default: jittered exponential from 100 ms, capped at 10 s. */
  readonly resubscribeSchedule?: Schedule.Schedule<unknown> | undefined
  /** Persistent mode: the consumer group. Default: the projection's checkpoint id. */
  readonly group?: string | undefined
  /** Persistent mode: deliveries the server may push ahead. Default: the in-flight bound. */
  readonly bufferSize?: number | undefined
  /** Documents each lane keeps decoded between batches (saves loads and decodes). Default 10 000. */
  readonly cacheSize?: number | undefined
  /**
   * Handlers: attempts (on `retrySchedule`, per key in order) before the event
   * quarantines its key (catch-up) or is parked (persistent). Default 5.
   */
  readonly handlerAttempts?: number | undefined
  /**
   * Persistent mode: how often held deliveries (that overtook their stream)
   * re-read their streams' progress from the store. Default 100 ms.
   */
  readonly holdCheck?: Duration.DurationInput | undefined
  /**
   * Persistent mode: how long a delivery may be held before the engine reads
   * its stream's missing events itself (and skips, recorded, those that are
   * gone). Default 2 s.
   */
  readonly fillAfter?: Duration.DurationInput | undefined
  /**
   * Catch-up: commit the checkpoint in the same transaction as each batch's
   * documents, where the store supports transactions. Off by default: guarded
   * writes are idempotent by themselves and the committer moves the checkpoint
   * after them, without a transaction and without a document every lane writes.
   */
  readonly transactional?: boolean | undefined
  /**
   * Called by the committer every `commitInterval` and after each commit, with
   * the projection's progress (totals since start).
   */
  readonly onProgress?: ((progress: Progress) => Effect.Effect<void>) | undefined
}

/**
 * Where a projection stands, as the committer reports it to `onProgress`.
 *
 * @since 0.1.0
 */
export interface Progress {
  /** The checkpoint id (`name@version`). */
  readonly projection: string
  readonly mode: "catch-up" | "persistent"
  /** The committed checkpoint (catch-up). */
  readonly checkpoint: bigint | undefined
  /** The newest position taken in. */
  readonly received: bigint | undefined
  /** Deliveries taken in and not settled. */
  readonly inFlight: number
  readonly processed: number
  readonly skipped: number
  readonly duplicates: number
  readonly deadLettered: number
  /** Clock millis of the last settlement (0: none yet). */
  readonly lastSettledAt: number
}

/** Metrics, tagged with `projection`. @since 0.1.0 */
export const metrics = engineMetrics

/** What a run can fail with: the engine's errors, and the read-model guard's. @since 0.1.0 */
export type RunError = ReconcilerError | InvalidRunOptions | ReadModels.VersionConflict | ReadModels.ReadModelTaken

/**
 * Every run starts here: the projections pass the read-model guard
 * ({@link ReadModels.guard}: the version registry `App.run` and `Rebuild`
 * use, with its typed errors), and each dead letter recorded and each
 * delivery parked is logged as a warning, once.
 */
const entry = (
  runnables: ReadonlyArray<Runnable>,
  retrySchedule: Schedule.Schedule<unknown>,
  body: (guarded: ReadonlyArray<Runnable>) => Effect.Effect<void, RunError, EventSource | ReadModelStore>
): Effect.Effect<void, RunError, EventSource | ReadModelStore> =>
  Effect.gen(function*() {
    const source = yield* EventSource
    const store = yield* ReadModelStore
    const guarded = yield* Effect.forEach(runnables, (runnable) =>
      ReadModels.guard(runnable).pipe(
        // as every store operation of the engine: transient errors are retried (and counted)
        Effect.tapError((e) =>
          e._tag === "StoreError" && e.transient
            ? Metric.increment(Metric.tagged(engineMetrics.retries, "projection", runnable.name))
            : Effect.void
        ),
        Effect.retry({ schedule: retrySchedule, while: (e) => e._tag === "StoreError" && e.transient }),
        Effect.catchTag("StoreError", (cause) =>
          Effect.fail(
            new ReconcilerError({ projection: runnable.name, message: `reading the read-model registry: ${cause.message}`, cause })
          ))
      ))
    return yield* body(guarded).pipe(
      Effect.provideService(EventSource, loggingParks(source)),
      Effect.provideService(ReadModelStore, loggingDeadLetters(store))
    )
  })

/**
 * Runs a projection or handler until interrupted, or until a finite source ends
 * (then after draining everything). Fails with {@link ReconcilerError} on a
 * non-transient store or source error, after draining; before it starts, with
 * `VersionConflict` / `ReadModelTaken` when the projection's version may not
 * write its collection (see {@link ReadModels.guard}). Logs a warning per
 * dead-lettered or parked event.
 *
 * @since 0.1.0
 */
export const run = (
  runnable: Runnable,
  options: RunOptions = {}
): Effect.Effect<void, RunError, EventSource | ReadModelStore> =>
  Effect.flatMap(Options.resolve(options), (resolved) => entry([runnable], resolved.retrySchedule, (guarded) => runGroup(guarded, resolved)))

/**
 * Runs several projections and handlers side by side until interrupted, each
 * with its own checkpoint. Catch-up runnables over the same categories share one
 * subscription: each event is read and decoded from the source once and fanned
 * out to each of them (one that is further along ignores what it has).
 * Persistent runnables each have their own consumer group. If one fails, the
 * others are interrupted and drain; the failure is the result.
 *
 * @since 0.1.0
 */
export const runAll = (
  runnables: ReadonlyArray<Runnable>,
  options: RunOptions = {}
): Effect.Effect<void, RunError, EventSource | ReadModelStore> =>
  options.group !== undefined && runnables.length > 1
    ? Effect.fail(
      new InvalidRunOptions({
        message: "a consumer group serves one projection: leave group unset to name each group after its projection"
      })
    )
    : Effect.flatMap(Options.resolve(options), (resolved) =>
      entry(runnables, resolved.retrySchedule, (guarded) =>
        Effect.all(groups(guarded, resolved.mode).map((group) => runGroup(group, resolved)), {
          concurrency: "unbounded",
          discard: true
        })))

/** Catch-up runnables grouped by their set of categories (one subscription each); persistent ones alone. */
const groups = (runnables: ReadonlyArray<Runnable>, mode: Mode): Array<Array<Runnable>> => {
  if (mode !== "catch-up") return runnables.map((r) => [r])
  const byCategories = new Map<string, Array<Runnable>>()
  for (const runnable of runnables) {
    const key = JSON.stringify([...new Set(runnable.categories)].sort())
    const group = byCategories.get(key)
    if (group === undefined) byCategories.set(key, [runnable])
    else group.push(runnable)
  }
  return [...byCategories.values()]
}
