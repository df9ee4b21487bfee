/**
 * Run options with their defaults applied and their ranges checked, once, before
 * anything starts.
 */
import { Duration, Effect, Schedule } from "effect"
import { InvalidRunOptions } from "../Errors.js"
import type { Progress, RunOptions } from "../Reconciler.js"
import type { Mode } from "./fold.js"

/** What every piece of the engine reads; never changes while it runs. */
export interface Resolved {
  readonly mode: Mode
  readonly lanes: number
  readonly batchSize: number
  readonly laneBuffer: number
  readonly cacheSize: number
  readonly drainTimeout: Duration.Duration
  readonly commitInterval: Duration.Duration
  readonly stallAfter: number
  readonly retrySchedule: Schedule.Schedule<unknown>
  readonly resubscribeSchedule: Schedule.Schedule<unknown>
  readonly group: string | undefined
  readonly bufferSize: number | undefined
  readonly handlerAttempts: number
  readonly transactional: boolean
  readonly onProgress: ((progress: Progress) => Effect.Effect<void>) | undefined
  /** The in-flight bound of one projection: lanes × lane buffer + batch size. */
  readonly bound: number
  /** Persistent mode: how often held streams re-read their progress. */
  readonly holdCheck: Duration.Duration
  /** Persistent mode: how long a delivery is held before its stream's missing events are read, in ms. */
  readonly fillAfter: number
}

/**
 * Most parts per lane batch by default. Under a backlog a batch is one load and one
 * bulk write for this many events; live, lanes flush at once whatever its size.
 */
export const DEFAULT_BATCH_SIZE = 500

const defaultRetry: Schedule.Schedule<unknown> = Schedule.exponential("50 millis").pipe(
  Schedule.union(Schedule.spaced("5 seconds")),
  Schedule.jittered
)

const defaultResubscribe: Schedule.Schedule<unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.union(Schedule.spaced("10 seconds")),
  Schedule.jittered
)

const positiveInt = (name: string, value: number): Effect.Effect<number, InvalidRunOptions> =>
  Number.isInteger(value) && value >= 1
    ? Effect.succeed(value)
    : Effect.fail(new InvalidRunOptions({ message: `option ${name} must be a positive integer, got ${value}` }))

/** The options with defaults; a value out of range is an {@link InvalidRunOptions}. */
export const resolve = (options: RunOptions): Effect.Effect<Resolved, InvalidRunOptions> =>
  Effect.gen(function*() {
    const mode: Mode = options.mode ?? "catch-up"
    const lanes = yield* positiveInt("lanes", options.lanes ?? 4)
    const batchSize = yield* positiveInt("batchSize", options.batchSize ?? DEFAULT_BATCH_SIZE)
    // Room for a lane's next batch to fill while its last one is written: under a backlog
    // the intake flushes the lanes when it reaches the in-flight bound, so with less a
    // batch holds only bound / lanes parts whatever batchSize says.
    const laneBuffer = yield* positiveInt("laneBuffer", options.laneBuffer ?? 2 * batchSize)
    const cacheSize = yield* positiveInt("cacheSize", options.cacheSize ?? 10_000)
    if (mode !== "catch-up" && mode !== "persistent") {
      return yield* new InvalidRunOptions({ message: `mode must be "catch-up" or "persistent", got ${String(mode)}` })
    }
    return {
      mode,
      lanes,
      batchSize,
      laneBuffer,
      cacheSize,
      drainTimeout: Duration.decode(options.drainTimeout ?? "10 seconds"),
      commitInterval: Duration.decode(options.commitInterval ?? "1 second"),
      stallAfter: Duration.toMillis(options.stallAfter ?? "30 seconds"),
      retrySchedule: options.retrySchedule ?? defaultRetry,
      resubscribeSchedule: options.resubscribeSchedule ?? defaultResubscribe,
      group: options.group,
      bufferSize: options.bufferSize,
      handlerAttempts: options.handlerAttempts ?? 5,
      transactional: options.transactional === true,
      onProgress: options.onProgress,
      bound: lanes * laneBuffer + batchSize,
      holdCheck: Duration.decode(options.holdCheck ?? "100 millis"),
      fillAfter: Duration.toMillis(options.fillAfter ?? "2 seconds")
    }
  })
