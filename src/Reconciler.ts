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
import { Cause, Data, Duration, Effect, ExecutionStrategy, Exit, Fiber, Metric, MetricBoundaries, Option, Queue, Schedule, Scope, Stream } from "effect"
import type { Delivery } from "./EventSource.js"
import { ack, EventSource, EventSourceError, nack } from "./EventSource.js"
import type { Event, Handler, Projection, Runnable } from "./Projection.js"
import { checkpointId, decoder } from "./Projection.js"
import type { DocumentWrite, StoredDocument } from "./ReadModelStore.js"
import { ReadModelStore, StoreError } from "./ReadModelStore.js"
import type { Mode } from "./internal/fold.js"
import { describe, documentCodec, foldDocument } from "./internal/fold.js"
import { laneOf } from "./internal/lanes.js"
import { Watermark } from "./internal/watermark.js"

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
  /** Handlers: attempts before an event is dead-lettered or parked. Default 5. */
  readonly handlerAttempts?: number | undefined
}

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

/** Metrics, tagged with `projection`. @since 0.1.0 */
export const metrics = {
  processed: Metric.counter("reconciler_events_processed", { description: "events applied to documents or handled" }),
  skipped: Metric.counter("reconciler_events_skipped", { description: "events of types the projection does not declare" }),
  duplicates: Metric.counter("reconciler_duplicates_ignored", { description: "redelivered events found already applied" }),
  deadLettered: Metric.counter("reconciler_events_dead_lettered", { description: "poison events dead-lettered or parked" }),
  retries: Metric.counter("reconciler_retries", { description: "retried store operations and resubscriptions" }),
  batchSize: Metric.histogram(
    "reconciler_batch_size",
    MetricBoundaries.exponential({ start: 1, factor: 2, count: 12 }),
    "events per lane batch"
  ),
  lag: Metric.gauge("reconciler_lag_ms", { description: "age of the newest applied event" })
}

const defaultRetry: Schedule.Schedule<unknown> = Schedule.exponential("50 millis").pipe(
  Schedule.union(Schedule.spaced("5 seconds")),
  Schedule.jittered
)

const defaultResubscribe: Schedule.Schedule<unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.union(Schedule.spaced("10 seconds")),
  Schedule.jittered
)

/** A delivery being worked on: settled once all its parts are done. */
interface Tracked {
  readonly delivery: Delivery
  readonly ticket: number
  remaining: number
  poison: string | undefined
  settled: boolean
}

interface Part {
  readonly tracked: Tracked
  readonly event: Event
  readonly key: string
}

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
  Effect.scoped(
    Effect.gen(function*() {
      const source = yield* EventSource
      const store = yield* ReadModelStore
      const mode: Mode = options.mode ?? "catch-up"
      const laneCount = yield* positiveInt("lanes", options.lanes ?? 4)
      const batchSize = yield* positiveInt("batchSize", options.batchSize ?? 100)
      const laneBuffer = yield* positiveInt("laneBuffer", options.laneBuffer ?? 256)
      if (mode !== "catch-up" && mode !== "persistent") {
        return yield* new InvalidRunOptions({ message: `mode must be "catch-up" or "persistent", got ${String(mode)}` })
      }
      const maxInFlight = laneCount * laneBuffer + batchSize
      const drainTimeout = Duration.decode(options.drainTimeout ?? "10 seconds")
      const commitInterval = Duration.decode(options.commitInterval ?? "1 second")
      const retrySchedule = options.retrySchedule ?? defaultRetry
      const id = checkpointId(runnable)
      const tag = <A extends Metric.Metric<any, any, any>>(metric: A): A => Metric.tagged(metric, "projection", runnable.name) as A
      const processed = tag(metrics.processed)
      const skipped = tag(metrics.skipped)
      const duplicates = tag(metrics.duplicates)
      const deadLettered = tag(metrics.deadLettered)
      const retries = tag(metrics.retries)
      const batchSizes = tag(metrics.batchSize)
      const lag = tag(metrics.lag)

      const fail = (message: string) => (cause: StoreError | EventSourceError) =>
        new ReconcilerError({ projection: runnable.name, message: `${message}: ${cause.message}`, cause })

      /** A store call, retried while its error is transient. */
      const durably = <A>(effect: Effect.Effect<A, StoreError>, what: string) =>
        effect.pipe(
          Effect.tapError((error) => error.transient ? Metric.increment(retries) : Effect.void),
          Effect.retry({ schedule: retrySchedule, while: (error) => error.transient }),
          Effect.mapError(fail(what))
        )

      // Created first so that it closes last: subscriptions stay open through the
      // drain, so that what was received but not applied can still be nacked.
      const subscriptions = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)

      const checkpoint = mode === "catch-up" ? yield* durably(store.readCheckpoint(id), "reading the checkpoint") : Option.none()
      const watermark = new Watermark(Option.getOrUndefined(checkpoint))
      let committed = Option.getOrUndefined(checkpoint)
      let lastDispatched = Option.getOrUndefined(checkpoint)
      const inFlight = new Set<Tracked>()
      const permits = yield* Effect.makeSemaphore(maxInFlight)

      const commit = Effect.suspend(() => {
        const position = watermark.current
        if (mode !== "catch-up" || position === undefined || (committed !== undefined && position <= committed)) {
          return Effect.void
        }
        return durably(store.commitCheckpoint({ projection: id, position }), "committing the checkpoint").pipe(
          Effect.tap(() => {
            if (committed === undefined || position > committed) committed = position
          })
        )
      })

      const deadLetter = (delivery: Delivery, reason: string) =>
        durably(
          store.deadLetter({
            id: `${id}:${delivery.id}`,
            projection: id,
            eventId: delivery.id,
            eventType: delivery.type,
            streamId: delivery.streamId,
            revision: delivery.revision,
            position: delivery.position,
            data: delivery.data,
            metadata: delivery.metadata,
            reason,
            at: new Date()
          }),
          "dead-lettering"
        )

      /** Settles a delivery whose parts are all done. Poison is dead-lettered (catch-up) or parked (persistent). */
      const settle = (tracked: Tracked): Effect.Effect<void, ReconcilerError> => {
        if (tracked.settled) return Effect.void
        tracked.settled = true
        inFlight.delete(tracked)
        const poison = tracked.poison
        const record = poison === undefined
          ? Effect.void
          : Metric.increment(deadLettered).pipe(
            Effect.zipRight(
              mode === "catch-up"
                ? deadLetter(tracked.delivery, poison).pipe(Effect.zipRight(tracked.delivery.settle(ack)))
                : tracked.delivery.settle(nack("park", poison))
            )
          )
        const ackIt = poison === undefined ? tracked.delivery.settle(ack) : Effect.void
        return record.pipe(
          Effect.zipRight(ackIt),
          // A settle the source cannot deliver is redelivered later; the markers make that harmless.
          Effect.catchTag("EventSourceError", (error) => Effect.logWarning("settling a delivery failed", error)),
          Effect.zipRight(Effect.sync(() => {
            if (mode === "catch-up") watermark.complete(tracked.ticket)
          })),
          Effect.zipRight(permits.release(1))
        )
      }

      const partDone = (tracked: Tracked, poison?: string) => {
        if (poison !== undefined && tracked.poison === undefined) tracked.poison = poison
        tracked.remaining--
        return tracked.remaining === 0 ? settle(tracked) : Effect.void
      }

      // ---- lanes ------------------------------------------------------------
      // The in-flight permits bound what is queued (a delivery holds one permit
      // however many documents it touches), so offering never blocks a drain.
      const queues = yield* Effect.forEach(
        Array.from({ length: laneCount }),
        () => Queue.unbounded<Part | "end">()
      )

      const processBatch = runnable._tag === "Projection"
        ? projectionBatch(runnable, mode, store, durably, partDone, { processed, duplicates, batchSizes, lag }, () => watermark.current, id)
        : handlerBatch(runnable, options.handlerAttempts ?? 5, partDone, processed, retries)

      const laneLoop = (queue: Queue.Queue<Part | "end">) =>
        Effect.gen(function*() {
          while (true) {
            const taken = yield* Queue.takeBetween(queue, 1, batchSize)
            const parts: Array<Part> = []
            let ended = false
            for (const item of taken) {
              if (item === "end") ended = true
              else parts.push(item)
            }
            if (parts.length > 0) yield* processBatch(parts)
            if (ended) return
          }
        })

      // ---- source -----------------------------------------------------------
      const decode = decoder(runnable.events)
      const dispatch = (delivery: Delivery): Effect.Effect<void, ReconcilerError> =>
        Effect.gen(function*() {
          const tracked: Tracked = {
            delivery,
            ticket: mode === "catch-up" ? watermark.track(delivery.position) : 0,
            remaining: 1,
            poison: undefined,
            settled: false
          }
          inFlight.add(tracked)
          lastDispatched = delivery.position
          const outcome = decode(delivery)
          if (outcome._tag === "Unknown") {
            yield* Metric.increment(skipped)
            return yield* partDone(tracked)
          }
          if (outcome._tag === "Invalid") return yield* partDone(tracked, outcome.reason)
          let keys: ReadonlyArray<string>
          try {
            const key = runnable.key(outcome.event as never)
            keys = typeof key === "string" ? [key] : [...new Set(key)]
            if (keys.some((k) => typeof k !== "string")) throw new TypeError("key must return strings")
          } catch (error) {
            return yield* partDone(tracked, `key threw on ${delivery.type}: ${describe(error)}`)
          }
          if (keys.length === 0) {
            yield* Metric.increment(processed)
            return yield* partDone(tracked)
          }
          tracked.remaining = keys.length
          for (const key of keys) {
            yield* Queue.offer(queues[laneOf(key, laneCount)]!, { tracked, event: outcome.event, key })
          }
        })

      const subscription = () =>
        source.subscribe(
          mode === "catch-up"
            ? { mode, categories: runnable.categories, after: Option.fromNullable(lastDispatched) }
            : {
              mode,
              categories: runnable.categories,
              group: options.group ?? id,
              bufferSize: options.bufferSize ?? maxInFlight
            }
        )

      // A dropped subscription resumes after the last delivery taken in (catch-up)
      // or from the group (persistent); what is in flight stays tracked.
      const pullOnce = Effect.gen(function*() {
        const scope = yield* Scope.fork(subscriptions, ExecutionStrategy.sequential)
        const next = yield* Scope.extend(Stream.toPull(subscription()), scope)
        while (true) {
          // The permit is taken before pulling, so that what was pulled and not
          // settled never exceeds the in-flight bound (with single-delivery chunks).
          yield* permits.take(1)
          const chunk = yield* next.pipe(
            Effect.onError(() => permits.release(1)),
            Effect.catchAll((error) =>
              Option.match(error, {
                onNone: () => Effect.succeed(undefined),
                onSome: (error) => Scope.close(scope, Exit.void).pipe(Effect.zipRight(Effect.fail(error)))
              })
            )
          )
          if (chunk === undefined) return yield* permits.release(1)
          if (chunk.length === 0) {
            yield* permits.release(1)
            continue
          }
          let first = true
          for (const delivery of chunk) {
            if (!first) yield* permits.take(1)
            first = false
            yield* dispatch(delivery)
          }
        }
      })
      const pull = pullOnce.pipe(
        Effect.tapError((error) =>
          error._tag === "EventSourceError" && error.retryable
            ? Effect.logWarning("subscription dropped; resubscribing", error.message).pipe(
              Effect.zipRight(Metric.increment(retries))
            )
            : Effect.void
        ),
        Effect.retry({
          schedule: options.resubscribeSchedule ?? defaultResubscribe,
          while: (error) => error._tag === "EventSourceError" && error.retryable
        }),
        Effect.catchTag("EventSourceError", (error) => Effect.fail(fail("the subscription failed")(error)))
      )

      // ---- lifetime ---------------------------------------------------------
      const lanes = yield* Effect.forEach(queues, (queue) => Effect.forkScoped(laneLoop(queue)))
      const committer = yield* commit.pipe(
        Effect.zipRight(Effect.sleep(commitInterval)),
        Effect.forever,
        Effect.forkScoped
      )

      // Runs on every exit (end of source, failure, interruption) before the lanes'
      // and the subscription's scopes close: drain, commit, nack the rest.
      yield* Effect.addFinalizer(() =>
        Effect.gen(function*() {
          yield* Fiber.interrupt(committer)
          yield* Effect.forEach(queues, (queue) => Queue.offer(queue, "end"), { discard: true })
          const drained = yield* Fiber.joinAll(lanes).pipe(
            // Finalizers are uninterruptible: without this the timeout could not cut the wait.
            Effect.interruptible,
            Effect.timeoutOption(drainTimeout),
            Effect.exit
          )
          if (Exit.isSuccess(drained) && Option.isNone(drained.value)) {
            yield* Effect.logWarning(`drain timed out after ${Duration.format(drainTimeout)}; abandoning in-flight work`)
          }
          yield* Effect.forEach(lanes, Fiber.interrupt, { discard: true })
          yield* commit.pipe(Effect.catchAll((error) => Effect.logError("final checkpoint commit failed", error)))
          // Received but not applied: hand back for redelivery (catch-up resumes from the checkpoint anyway).
          yield* Effect.forEach(
            [...inFlight],
            (tracked) =>
              tracked.delivery.settle(nack("retry", "the reconciler stopped before applying it")).pipe(
                Effect.catchAll(() => Effect.void)
              ),
            { discard: true }
          )
        })
      )

      // The source runs until it ends (finite sources) or fails; a failing lane stops it.
      const laneFailure = Fiber.joinAll(lanes).pipe(Effect.zipRight(Effect.never))
      yield* Effect.raceFirst(pull, laneFailure)
      // The source ended: finish what is queued and surface any lane's failure.
      yield* Effect.forEach(queues, (queue) => Queue.offer(queue, "end"), { discard: true })
      yield* Fiber.joinAll(lanes)
      yield* commit
    })
  ).pipe(Effect.withSpan("Reconciler.run", { attributes: { projection: runnable.name } }))

// ---- projections --------------------------------------------------------------

type Durably = <A>(effect: Effect.Effect<A, StoreError>, what: string) => Effect.Effect<A, ReconcilerError>
type PartDone = (tracked: Tracked, poison?: string) => Effect.Effect<void, ReconcilerError>

const projectionBatch = (
  projection: Projection<any, any>,
  mode: Mode,
  store: ReadModelStore["Type"],
  durably: Durably,
  partDone: PartDone,
  m: {
    readonly processed: Metric.Metric.Counter<number>
    readonly duplicates: Metric.Metric.Counter<number>
    readonly batchSizes: Metric.Metric.Histogram<number>
    readonly lag: Metric.Metric.Gauge<number>
  },
  currentWatermark: () => bigint | undefined,
  id: string
) => {
  const codec = documentCodec(projection)
  return (parts: ReadonlyArray<Part>): Effect.Effect<void, ReconcilerError> =>
    Effect.gen(function*() {
      yield* Metric.update(m.batchSizes, parts.length)
      // Group by document, keeping delivery order within each document.
      const byDocument = new Map<string, Array<Part>>()
      for (const part of parts) {
        const group = byDocument.get(part.key)
        if (group === undefined) byDocument.set(part.key, [part])
        else group.push(part)
      }
      let pending = [...byDocument.keys()]
      const poisoned: Array<{ part: Part; reason: string }> = []
      let applied = 0
      let duplicateCount = 0
      // Guard conflicts mean another writer moved the document: reload and fold again.
      for (let attempt = 0; pending.length > 0; attempt++) {
        const loaded: ReadonlyMap<string, StoredDocument> = yield* durably(
          store.load(projection.collection, pending),
          "loading documents"
        )
        const writes: Array<DocumentWrite> = []
        const results = new Map<string, ReturnType<typeof foldDocument<Part>>>()
        for (const docId of pending) {
          const result = foldDocument(projection, codec, mode, docId, loaded.get(docId), byDocument.get(docId)!)
          results.set(docId, result)
          if (result.write !== undefined) writes.push(result.write)
        }
        const watermark = currentWatermark()
        const outcome = writes.length === 0
          ? { conflicts: [] as ReadonlyArray<string> }
          : yield* durably(
            store.write({
              collection: projection.collection,
              writes,
              checkpoint: mode === "catch-up" && watermark !== undefined ? { projection: id, position: watermark } : undefined
            }),
            "writing documents"
          )
        const conflicts = new Set(outcome.conflicts)
        for (const [docId, result] of results) {
          if (conflicts.has(docId)) continue
          applied += result.applied.length
          duplicateCount += result.duplicates.length
          poisoned.push(...result.poisoned)
        }
        pending = [...conflicts]
        if (attempt > 0 && pending.length > 0) yield* Effect.yieldNow()
      }
      yield* Metric.incrementBy(m.processed, applied)
      yield* Metric.incrementBy(m.duplicates, duplicateCount)
      const newest = parts[parts.length - 1]!.event.created.getTime()
      yield* Metric.set(m.lag, Math.max(0, Date.now() - newest))
      const poisonOf = new Map(poisoned.map(({ part, reason }) => [part, reason]))
      for (const part of parts) yield* partDone(part.tracked, poisonOf.get(part))
    })
}

// ---- handlers -----------------------------------------------------------------

const handlerBatch = (
  handler: Handler<any, any>,
  attempts: number,
  partDone: PartDone,
  processed: Metric.Metric.Counter<number>,
  retries: Metric.Metric.Counter<number>
) =>
(parts: ReadonlyArray<Part>): Effect.Effect<void, ReconcilerError> =>
  Effect.forEach(parts, (part) =>
    handler.handle(part.event as never).pipe(
      Effect.tapError(() => Metric.increment(retries)),
      Effect.retry({ times: Math.max(0, attempts - 1) }),
      Effect.matchCauseEffect({
        onSuccess: () => Metric.increment(processed).pipe(Effect.zipRight(partDone(part.tracked))),
        onFailure: (cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.interrupt
            : partDone(part.tracked, `handler ${handler.name} failed on ${part.event.type}: ${Cause.pretty(cause)}`)
      })
    ), { discard: true })

const positiveInt = (name: string, value: number): Effect.Effect<number, InvalidRunOptions> =>
  Number.isInteger(value) && value >= 1
    ? Effect.succeed(value)
    : Effect.fail(new InvalidRunOptions({ message: `option ${name} must be a positive integer, got ${value}` }))

/**
 * Runs several projections and handlers side by side, each with its own
 * subscription and checkpoint, until interrupted. If one fails, the others are
 * interrupted and drain; the failure is the result.
 *
 * @since 0.1.0
 */
export const runAll = (
  runnables: ReadonlyArray<Runnable>,
  options: RunOptions = {}
): Effect.Effect<void, ReconcilerError | InvalidRunOptions, EventSource | ReadModelStore> =>
  Effect.all(runnables.map((runnable) => run(runnable, options)), { concurrency: "unbounded", discard: true })
