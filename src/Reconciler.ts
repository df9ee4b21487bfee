/**
 * The engine: runs a projection (or an effectful handler) over a subscription and
 * keeps its read model reconciled.
 *
 * ```
 * source ─▶ decode ─▶ route by key ─▶ lane 0..N-1 ─▶ batch ─▶ fold ─▶ guarded write
 *                                                                          │
 *               settle / checkpoint ◀── watermark (contiguous completions) ◀┘
 * ```
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
import { Effect } from "effect"
import { InvalidRunOptions, ReconcilerError } from "./Errors.js"
import type { EventSource } from "./EventSource.js"
import type { Runnable } from "./Projection.js"
import type { ReadModelStore } from "./ReadModelStore.js"
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
  /** Most events folded into one write per lane. Default 100. */
  readonly batchSize?: number | undefined
  /** Deliveries a lane may hold beyond its batch. Default 256. */
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
  /** Handlers: attempts before an event is dead-lettered or parked. Default 5. */
  readonly handlerAttempts?: number | undefined
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

/**
 * Runs a projection or handler until interrupted, or until a finite source ends
 * (then after draining everything). Fails with {@link ReconcilerError} on a
 * non-transient store or source error, after draining.
 *
 * @since 0.1.0
 */
export const run = (
  runnable: Runnable,
  options: RunOptions = {}
): Effect.Effect<void, ReconcilerError | InvalidRunOptions, EventSource | ReadModelStore> =>
  Effect.flatMap(Options.resolve(options), (resolved) => runGroup([runnable], resolved))

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
): Effect.Effect<void, ReconcilerError | InvalidRunOptions, EventSource | ReadModelStore> =>
  options.group !== undefined && runnables.length > 1
    ? Effect.fail(
      new InvalidRunOptions({
        message: "a consumer group serves one projection: leave group unset to name each group after its projection"
      })
    )
    : Effect.flatMap(Options.resolve(options), (resolved) =>
      Effect.all(groups(runnables, resolved.mode).map((group) => runGroup(group, resolved)), {
        concurrency: "unbounded",
        discard: true
      }))

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
