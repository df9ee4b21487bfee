/**
 * What every piece of one projection's pipeline shares: its identity, the
 * store, its tagged metrics, its running totals, and the way store calls are
 * retried.
 */
import { Effect, Metric, Schedule } from "effect"
import { ReconcilerError } from "../Errors.js"
import type { EventSourceError } from "../EventSource.js"
import type { Runnable } from "../Projection.js"
import { checkpointId } from "../Projection.js"
import type { DeadLetter, ReadModelStore, StoreError } from "../ReadModelStore.js"
import { metrics } from "./metrics.js"
import type { Resolved } from "./options.js"
import type { EngineQuarantine } from "./quarantine.js"
import { makeEngineQuarantine } from "./quarantine.js"

/** A store call, retried while its error is transient, failing as a {@link ReconcilerError}. */
export type Durably = <A>(effect: Effect.Effect<A, StoreError>, what: string) => Effect.Effect<A, ReconcilerError>

/** Totals since start, for progress reports. */
export interface Totals {
  processed: number
  skipped: number
  duplicates: number
  deadLettered: number
}

export interface Context {
  readonly runnable: Runnable
  /** The checkpoint id (`name@version`). */
  readonly id: string
  readonly options: Resolved
  readonly store: ReadModelStore["Type"]
  readonly durably: Durably
  readonly fail: (message: string) => (cause: StoreError | EventSourceError) => ReconcilerError
  readonly totals: Totals
  /** The quarantined documents (or handler keys) and how they are held (both modes). */
  readonly quarantine: EngineQuarantine | undefined
  /** Handlers: `handlerAttempts` on the retry schedule. */
  readonly handlerSchedule: Schedule.Schedule<unknown>
  readonly metrics: {
    readonly processed: Metric.Metric.Counter<number>
    readonly skipped: Metric.Metric.Counter<number>
    readonly duplicates: Metric.Metric.Counter<number>
    readonly deadLettered: Metric.Metric.Counter<number>
    readonly retries: Metric.Metric.Counter<number>
    readonly batchSizes: Metric.Metric.Histogram<number>
    readonly writeLatency: Metric.Metric.Histogram<number>
    readonly lag: Metric.Metric.Gauge<number>
    readonly stalled: Metric.Metric.Gauge<number>
  }
}

/** `letters`: the projection's open dead letters, whose documents start quarantined. */
export const make = (
  runnable: Runnable,
  options: Resolved,
  store: ReadModelStore["Type"],
  letters?: ReadonlyArray<DeadLetter>
): Context => {
  const tag = <A extends Metric.Metric<any, any, any>>(metric: A): A => Metric.tagged(metric, "projection", runnable.name) as A
  const tagged = {
    processed: tag(metrics.processed),
    skipped: tag(metrics.skipped),
    duplicates: tag(metrics.duplicates),
    deadLettered: tag(metrics.deadLettered),
    retries: tag(metrics.retries),
    batchSizes: tag(metrics.batchSize),
    writeLatency: tag(metrics.writeLatency),
    lag: tag(metrics.lag),
    stalled: tag(metrics.stalled)
  }
  const fail = (message: string) => (cause: StoreError | EventSourceError) =>
    new ReconcilerError({ projection: runnable.name, message: `${message}: ${cause.message}`, cause })
  const durably: Durably = (effect, what) =>
    effect.pipe(
      Effect.tapError((error) => error.transient ? Metric.increment(tagged.retries) : Effect.void),
      Effect.retry({ schedule: options.retrySchedule, while: (error) => error.transient }),
      Effect.mapError(fail(what))
    )
  const handlerSchedule = Schedule.intersect(options.retrySchedule, Schedule.recurs(Math.max(0, options.handlerAttempts - 1)))
  return {
    runnable,
    id: checkpointId(runnable),
    quarantine: letters !== undefined
      ? makeEngineQuarantine(runnable, store, letters, { handlerSchedule, mode: options.mode })
      : undefined,
    handlerSchedule,
    options,
    store,
    durably,
    fail,
    totals: { processed: 0, skipped: 0, duplicates: 0, deadLettered: 0 },
    metrics: tagged
  }
}
