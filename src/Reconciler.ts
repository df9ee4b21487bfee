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
import { Cause, Clock, Data, Duration, Effect, Either, ExecutionStrategy, Exit, Fiber, Metric, MetricBoundaries, Option, Schedule, Scope, Stream } from "effect"
import type { Delivery } from "./EventSource.js"
import { ack, EventSource, EventSourceError, nack } from "./EventSource.js"
import type { Event, Handler, Projection, Runnable } from "./Projection.js"
import { checkpointId, decoderOf } from "./Projection.js"
import type { DocumentWrite } from "./ReadModelStore.js"
import { ReadModelStore, StoreError } from "./ReadModelStore.js"
import type { Current, Mode } from "./internal/fold.js"
import { decodeStored, describe, documentCodec, foldBatch } from "./internal/fold.js"
import { Gate, Lane, laneOf } from "./internal/lanes.js"
import type { EngineQuarantine, HeldPart } from "./internal/quarantine.js"
import { fromDelivery, letterFor, makeEngineQuarantine } from "./internal/quarantine.js"
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
  lag: Metric.gauge("reconciler_lag_ms", { description: "age of the newest applied event" }),
  stalled: Metric.gauge("reconciler_stalled", {
    description: "1 while deliveries are in flight and none has settled for stallAfter"
  })
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
}

interface Part {
  readonly tracked: Tracked
  readonly event: Event
  readonly key: string
}

const samePart = (a: Part, b: Part) => a.tracked === b.tracked

/** Marks one part of its delivery done; returns the delivery when that was the last part. */
const partDone = (tracked: Tracked, poison: string | undefined): Tracked | undefined => {
  if (poison !== undefined && tracked.poison === undefined) tracked.poison = poison
  return --tracked.remaining === 0 ? tracked : undefined
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
      const cacheSize = yield* positiveInt("cacheSize", options.cacheSize ?? 10_000)
      if (mode !== "catch-up" && mode !== "persistent") {
        return yield* new InvalidRunOptions({ message: `mode must be "catch-up" or "persistent", got ${String(mode)}` })
      }
      const drainTimeout = Duration.decode(options.drainTimeout ?? "10 seconds")
      const commitInterval = Duration.decode(options.commitInterval ?? "1 second")
      const stallAfter = Duration.toMillis(options.stallAfter ?? "30 seconds")
      const retrySchedule = options.retrySchedule ?? defaultRetry
      const id = checkpointId(runnable)
      const tag = <A extends Metric.Metric<any, any, any>>(metric: A): A => Metric.tagged(metric, "projection", runnable.name) as A
      const counters: Counters = {
        processed: tag(metrics.processed),
        duplicates: tag(metrics.duplicates),
        batchSizes: tag(metrics.batchSize),
        lag: tag(metrics.lag),
        retries: tag(metrics.retries)
      }
      const skipped = tag(metrics.skipped)
      const deadLettered = tag(metrics.deadLettered)

      const fail = (message: string) => (cause: StoreError | EventSourceError) =>
        new ReconcilerError({ projection: runnable.name, message: `${message}: ${cause.message}`, cause })

      /** A store call, retried while its error is transient. */
      const durably: Durably = (effect, what) =>
        effect.pipe(
          Effect.tapError((error) => error.transient ? Metric.increment(counters.retries) : Effect.void),
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
      /** Persistent deliveries received and not settled: nacked for retry on drain. */
      const unsettled = new Set<Tracked>()
      const gate = new Gate(laneCount * laneBuffer + batchSize)
      let settledCount = 0

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

      // An event whose documents cannot be known (it does not decode, `key` fails): a letter of its own.
      const deadLetter = (delivery: Delivery, reason: string) =>
        durably(store.deadLetter(letterFor(id, undefined, fromDelivery(delivery), reason, new Date())), "dead-lettering")

      // Catch-up: poison quarantines its document; the documents quarantined so far are loaded first.
      const handlerAttempts = yield* positiveInt("handlerAttempts", options.handlerAttempts ?? 5)
      const handlerSchedule = Schedule.intersect(retrySchedule, Schedule.recurs(handlerAttempts - 1))
      const quarantine = mode === "catch-up"
        ? makeEngineQuarantine(runnable, store, yield* durably(store.deadLetters(id), "reading the dead letters"), {
          handlerSchedule
        })
        : undefined

      /**
       * Settles deliveries whose parts are all done: poison is dead-lettered
       * (catch-up) or parked (persistent) first, then each is acked, then the
       * watermark moves and the gate lets more in.
       */
      const settle = (finished: ReadonlyArray<Tracked>): Effect.Effect<void, ReconcilerError> =>
        finished.length === 0 ? Effect.void : Effect.gen(function*() {
          for (const tracked of finished) {
            if (tracked.poison === undefined) continue
            yield* Metric.increment(deadLettered)
            if (mode === "catch-up") yield* deadLetter(tracked.delivery, tracked.poison)
          }
          // Catch-up deliveries are not settled one by one: the checkpoint is their
          // acknowledgement (settling each cost a third of the engine's time).
          if (mode === "persistent") {
            yield* Effect.forEach(
              finished,
              (tracked) =>
                tracked.delivery.settle(tracked.poison !== undefined ? nack("park", tracked.poison) : ack).pipe(
                  // What the source could not take is redelivered later; the markers make that harmless.
                  Effect.catchAll((error) => Effect.logWarning("settling a delivery failed", error.message))
                ),
              { discard: true }
            )
          }
          for (const tracked of finished) {
            if (mode === "catch-up") watermark.complete(tracked.ticket)
            else unsettled.delete(tracked)
          }
          gate.leave(finished.length)
          settledCount += finished.length
        })

      // ---- lanes ------------------------------------------------------------
      const lanes = Array.from({ length: laneCount }, () => new Lane<Part>())

      const makeBatch = (): Batch =>
        runnable._tag === "Projection"
          ? projectionBatch(runnable, mode, store, durably, counters, cacheSize, () =>
            mode === "catch-up" && watermark.current !== undefined ? { projection: id, position: watermark.current } : undefined, quarantine, deadLettered)
          : handlerBatch(runnable, handlerSchedule, counters, durably, quarantine, deadLettered)

      const laneLoop = (lane: Lane<Part>) =>
        Effect.gen(function*() {
          const processBatch = makeBatch()
          while (true) {
            // An event's parts in one lane stay in one batch, so that `read` sees its partners before it.
            const parts = yield* lane.take(batchSize, samePart)
            if (parts === undefined) return
            yield* settle(yield* processBatch(parts))
          }
        })

      // ---- source -----------------------------------------------------------
      const decode = decoderOf(runnable)
      const partition: (event: Event, key: string) => string =
        runnable._tag === "Projection" && runnable.partition !== undefined ? runnable.partition : (_, key) => key
      let skips = 0
      /** Takes a delivery in and routes it; returns it when it is already done (skipped or poison). */
      const route = (delivery: Delivery): Tracked | undefined => {
        gate.enter()
        const tracked: Tracked = {
          delivery,
          ticket: mode === "catch-up" ? watermark.track(delivery.position) : 0,
          remaining: 1,
          poison: undefined
        }
        if (mode === "persistent") unsettled.add(tracked)
        lastDispatched = delivery.position
        const event = decode(delivery)
        if (event === undefined) {
          skips++
          return partDone(tracked, undefined)
        }
        if (typeof event === "string") return partDone(tracked, event)
        let keys: ReadonlyArray<string>
        let lanesOf: ReadonlyArray<number>
        try {
          const key = runnable.key(event as never)
          keys = typeof key === "string" ? [key] : Array.isArray(key) ? [...new Set(key)] : []
          if (typeof key !== "string" && !Array.isArray(key)) throw new TypeError(`key returned ${String(key)}`)
          for (const k of keys) if (typeof k !== "string") throw new TypeError(`key returned a non-string: ${String(k)}`)
          lanesOf = keys.map((k) => laneOf(partition(event, k), laneCount))
        } catch (error) {
          return partDone(tracked, `key or partition failed on ${delivery.type}: ${describe(error)}`)
        }
        if (keys.length === 0) return partDone(tracked, undefined)
        tracked.remaining = keys.length
        for (let i = 0; i < keys.length; i++) lanes[lanesOf[i]!]!.push({ tracked, event, key: keys[i]! })
        return undefined
      }

      const subscription = () =>
        source.subscribe(
          mode === "catch-up"
            ? { mode, categories: runnable.categories, after: Option.fromNullable(lastDispatched) }
            : {
              mode,
              categories: runnable.categories,
              group: options.group ?? id,
              bufferSize: options.bufferSize ?? gate.bound
            }
        )

      const pullOnce = Effect.gen(function*() {
        const scope = yield* Scope.fork(subscriptions, ExecutionStrategy.sequential)
        const next = yield* Scope.extend(Stream.toPull(subscription()), scope)
        while (true) {
          // Room is made before pulling, so that what was pulled and not settled
          // stays within the bound (exactly, with single-delivery chunks).
          yield* gate.room
          const chunk = yield* next.pipe(
            Effect.catchAll((error) =>
              Option.match(error, {
                onNone: () => Effect.succeed(undefined),
                onSome: (error) => Scope.close(scope, Exit.void).pipe(Effect.zipRight(Effect.fail(error)))
              })
            )
          )
          if (chunk === undefined) return
          const done: Array<Tracked> = []
          for (const delivery of chunk) {
            const tracked = route(delivery)
            if (tracked !== undefined) done.push(tracked)
          }
          if (skips > 0) {
            yield* Metric.incrementBy(skipped, skips)
            skips = 0
          }
          yield* settle(done)
        }
      })

      // A dropped subscription resumes after the last delivery taken in (catch-up)
      // or from the group (persistent); what is in flight stays tracked.
      const pull = pullOnce.pipe(
        Effect.tapError((error) =>
          error._tag === "EventSourceError" && error.retryable
            ? Effect.logWarning("subscription dropped; resubscribing", error.message).pipe(
              Effect.zipRight(Metric.increment(counters.retries))
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
      const laneFibers = yield* Effect.forEach(lanes, (lane) => Effect.forkScoped(laneLoop(lane)))
      // Commits the checkpoint now and then, and watches for "running but not moving".
      const stalled = tag(metrics.stalled)
      let lastSettled = -1
      let lastMove = 0
      const watchdog = Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        if (settledCount !== lastSettled || gate.inFlight === 0) {
          lastSettled = settledCount
          lastMove = now
          yield* Metric.set(stalled, 0)
        } else if (now - lastMove >= stallAfter) {
          yield* Metric.set(stalled, 1)
          yield* Effect.logWarning(
            `${runnable.name}: ${gate.inFlight} deliveries in flight and none settled for ${now - lastMove} ms`
          )
        }
      })
      const committer = yield* commit.pipe(
        Effect.zipRight(watchdog),
        Effect.zipRight(Effect.sleep(commitInterval)),
        Effect.forever,
        Effect.forkScoped
      )

      // Runs on every exit (end of source, failure, interruption) before the lanes'
      // and the subscription's scopes close: drain, commit, nack the rest.
      // Finalizers are uninterruptible; each wait is made interruptible so that its
      // deadline holds even when the store or the source is down.
      const withDeadline = <A, E>(effect: Effect.Effect<A, E>, what: string) =>
        effect.pipe(
          Effect.interruptible,
          Effect.timeoutOption(drainTimeout),
          Effect.flatMap(Option.match({
            onNone: () => Effect.logWarning(`${what} timed out after ${Duration.format(drainTimeout)}`),
            onSome: () => Effect.void
          }))
        )
      yield* Effect.addFinalizer(() =>
        Effect.gen(function*() {
          yield* Fiber.interrupt(committer)
          yield* Metric.set(stalled, 0)
          for (const lane of lanes) lane.end()
          // Every lane finishes its in-flight batch, even when another lane failed.
          yield* withDeadline(
            Effect.forEach(laneFibers, Fiber.await, { concurrency: "unbounded", discard: true }),
            "draining the lanes (in-flight work abandoned)"
          )
          yield* Effect.forEach(laneFibers, Fiber.interrupt, { discard: true })
          yield* withDeadline(
            commit.pipe(Effect.catchAll((error) => Effect.logError("final checkpoint commit failed", error))),
            "the final checkpoint commit"
          )
          // Received but not applied: hand back for redelivery (catch-up resumes from the checkpoint).
          if (mode === "persistent") {
            yield* withDeadline(
              Effect.forEach(
                [...unsettled],
                (tracked) =>
                  tracked.delivery.settle(nack("retry", "the reconciler stopped before applying it")).pipe(Effect.ignore),
                { concurrency: "unbounded", discard: true }
              ),
              "nacking what was not applied"
            )
          }
        })
      )

      // The source runs until it ends (finite sources) or fails; a failing lane or
      // committer stops it.
      const failureOf = (fibers: ReadonlyArray<Fiber.Fiber<void, ReconcilerError>>) =>
        Fiber.joinAll(fibers).pipe(Effect.zipRight(Effect.never))
      yield* Effect.raceFirst(pull, Effect.raceFirst(failureOf(laneFibers), failureOf([committer])))
      // The source ended: finish what is queued and surface any lane's failure.
      for (const lane of lanes) lane.end()
      yield* Fiber.joinAll(laneFibers)
      yield* commit
    })
  ).pipe(Effect.withSpan("Reconciler.run", { attributes: { projection: runnable.name } }))

// ---- projections --------------------------------------------------------------

type Durably = <A>(effect: Effect.Effect<A, StoreError>, what: string) => Effect.Effect<A, ReconcilerError>
/** Processes a lane's batch; returns the deliveries it finished. */
type Batch = (parts: ReadonlyArray<Part>) => Effect.Effect<ReadonlyArray<Tracked>, ReconcilerError>

interface Counters {
  readonly processed: Metric.Metric.Counter<number>
  readonly duplicates: Metric.Metric.Counter<number>
  readonly batchSizes: Metric.Metric.Histogram<number>
  readonly lag: Metric.Metric.Gauge<number>
  readonly retries: Metric.Metric.Counter<number>
}

/**
 * A lane's batch of a projection: fold per document, one guarded write.
 *
 * Each lane caches the documents it wrote last (a lane owns its keys, so it is
 * their usual writer). The cache is only a guess of the stored version: every
 * write is still guarded, and a conflict evicts the entry and reloads.
 */
const projectionBatch = (
  projection: Projection<any, any>,
  mode: Mode,
  store: ReadModelStore["Type"],
  durably: Durably,
  counters: Counters,
  cacheSize: number,
  checkpoint: () => { readonly projection: string; readonly position: bigint } | undefined,
  quarantine: EngineQuarantine | undefined,
  deadLettered: Metric.Metric.Counter<number>
): Batch => {
  const codec = documentCodec(projection)
  const cache = new Map<string, Current | undefined>()
  const remember = (id: string, current: Current | undefined) => {
    cache.delete(id)
    cache.set(id, current)
    if (cache.size > cacheSize) cache.delete(cache.keys().next().value!)
  }
  return (parts) =>
    Effect.gen(function*() {
      yield* Metric.update(counters.batchSizes, parts.length)
      const poison = new Map<Part, string>()
      // Quarantine (catch-up): the first poison part of a document, and its parts after it.
      const blocking = new Map<string, { part: Part; reason: string }>()
      const held: Array<Part> = []
      let applied = 0
      let duplicates = 0
      let todo = parts
      if (quarantine !== undefined) {
        const holding = parts.filter((part) => quarantine.documents.has(part.key))
        if (holding.length > 0) {
          todo = parts.filter((part) => !quarantine.documents.has(part.key))
          const released = yield* durably(quarantine.hold(holding.map(heldPart)), "holding events of quarantined documents")
          for (const docId of released) cache.delete(docId)
        }
      }
      // Guard conflicts mean another writer moved a document: reload it and fold its events again.
      while (todo.length > 0) {
        const ids = [...new Set(todo.map((part) => part.key))]
        const missing = ids.filter((docId) => !cache.has(docId))
        const unreadable = new Map<string, string>()
        if (missing.length > 0) {
          const loaded = yield* durably(store.load(projection.collection, missing), "loading documents")
          for (const docId of missing) {
            const decoded = decodeStored(projection, codec, loaded.get(docId))
            if (Either.isRight(decoded)) remember(docId, decoded.right)
            else unreadable.set(docId, decoded.left)
          }
        }
        const foldable: Array<Part> = []
        for (const part of todo) {
          const reason = unreadable.get(part.key)
          if (reason === undefined) foldable.push(part)
          else if (quarantine === undefined) poison.set(part, reason)
          else if (!blocking.has(part.key)) blocking.set(part.key, { part, reason })
          else held.push(part)
        }
        const result = foldBatch(projection, codec, mode, (docId) => cache.get(docId), foldable, quarantine !== undefined)
        const outcome = result.writes.length === 0
          ? { conflicts: [] as ReadonlyArray<string>, rejected: undefined }
          : yield* durably(
            store.write({ collection: projection.collection, writes: result.writes, checkpoint: checkpoint() }),
            "writing documents"
          )
        const conflicts = new Set(outcome.conflicts)
        const rejected = new Map((outcome.rejected ?? []).map((r) => [r.id, r.reason]))
        const poisonedDocs = new Set<string>()
        if (quarantine === undefined) {
          // Poison found in any attempt stays poison. A conflict may be our own write
          // whose acknowledgement was lost: folded again, the poison event then looks
          // applied (the markers passed it), yet it never was and must be dead-lettered.
          for (const { part, reason } of result.poisoned) {
            poison.set(part, reason)
            if (!conflicts.has(part.key)) poisonedDocs.add(part.key)
          }
        } else {
          // A document stops at its poison event (or, refused by the store, at its first event
          // the write carried); a conflicting one is folded again and finds it again.
          for (const [docId, reason] of rejected) {
            const before = cache.get(docId)?.meta.position
            const first = foldable.find((part) => part.key === docId && (before === undefined || part.event.position > before))
            if (first === undefined) continue
            blocking.set(docId, { part: first, reason })
            for (const part of foldable) if (part.key === docId && part !== first && part.event.position > first.event.position) held.push(part)
            cache.delete(docId)
          }
          for (const { part, reason } of result.poisoned) {
            if (conflicts.has(part.key) || rejected.has(part.key)) continue
            blocking.set(part.key, { part, reason })
            poisonedDocs.add(part.key)
          }
          for (const part of result.blocked) if (!conflicts.has(part.key) && !rejected.has(part.key)) held.push(part)
        }
        for (const [docId, fold] of result.documents) {
          if (conflicts.has(docId) || rejected.has(docId)) {
            cache.delete(docId)
            continue
          }
          applied += fold.applied
          duplicates += fold.duplicates
          // A throwing evolve may have changed its input: forget it rather than trust it.
          if (poisonedDocs.has(docId)) cache.delete(docId)
          else remember(docId, fold.next)
        }
        todo = foldable.filter((part) => conflicts.has(part.key))
      }
      if (quarantine !== undefined && (blocking.size > 0 || held.length > 0)) {
        yield* durably(
          quarantine.quarantine(
            [...blocking.values()].map(({ part, reason }) => ({ ...heldPart(part), reason })),
            held.map(heldPart)
          ),
          "quarantining documents"
        )
        yield* Metric.incrementBy(deadLettered, blocking.size)
      }
      yield* Metric.incrementBy(counters.processed, applied)
      if (duplicates > 0) yield* Metric.incrementBy(counters.duplicates, duplicates)
      yield* Metric.set(counters.lag, Math.max(0, Date.now() - parts[parts.length - 1]!.event.created.getTime()))
      const finished: Array<Tracked> = []
      for (const part of parts) {
        const done = partDone(part.tracked, poison.get(part))
        if (done !== undefined) finished.push(done)
      }
      return finished
    })
}

const heldPart = (part: Part): HeldPart => ({ document: part.key, event: fromDelivery(part.tracked.delivery) })

// ---- handlers -----------------------------------------------------------------

/**
 * A lane's batch of a handler: each event handled in order, retried on the
 * engine's schedule. Catch-up: an event that keeps failing quarantines its key
 * (the key's later events are held); persistent: it is parked.
 */
const handlerBatch = (
  handler: Handler<any, any, any>,
  schedule: Schedule.Schedule<unknown>,
  counters: Counters,
  durably: Durably,
  quarantine: EngineQuarantine | undefined,
  deadLettered: Metric.Metric.Counter<number>
): Batch => (parts) =>
  Effect.gen(function*() {
    const finished: Array<Tracked> = []
    let todo = parts
    if (quarantine !== undefined) {
      const holding = parts.filter((part) => quarantine.documents.has(part.key))
      if (holding.length > 0) {
        todo = parts.filter((part) => !quarantine.documents.has(part.key))
        yield* durably(quarantine.hold(holding.map(heldPart)), "holding events of quarantined keys")
      }
    }
    const toHandle = new Set(todo)
    for (const part of parts) {
      let poison: string | undefined
      if (toHandle.has(part) && quarantine?.documents.has(part.key)) {
        // Quarantined earlier in this batch: held behind its poison event.
        yield* durably(quarantine.quarantine([], [heldPart(part)]), "holding events of quarantined keys")
      } else if (toHandle.has(part)) {
        poison = yield* handler.handle(part.event as never).pipe(
          Effect.tapError(() => Metric.increment(counters.retries)),
          Effect.retry(schedule),
          Effect.matchCauseEffect({
            onSuccess: () => Metric.increment(counters.processed).pipe(Effect.as(undefined)),
            onFailure: (cause) =>
              Cause.isInterruptedOnly(cause)
                ? Effect.interrupt
                : Effect.succeed(`handler ${handler.name} failed on ${part.event.type}: ${Cause.pretty(cause)}`)
          })
        )
        if (poison !== undefined && quarantine !== undefined) {
          yield* durably(quarantine.quarantine([{ ...heldPart(part), reason: poison }], []), "quarantining a key")
          yield* Metric.increment(deadLettered)
          poison = undefined
        }
      }
      const done = partDone(part.tracked, poison)
      if (done !== undefined) finished.push(done)
    }
    return finished
  })

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
  options.group !== undefined && runnables.length > 1
    ? Effect.fail(
      new InvalidRunOptions({
        message: "a consumer group serves one projection: leave group unset to name each group after its projection"
      })
    )
    : Effect.all(runnables.map((runnable) => run(runnable, options)), { concurrency: "unbounded", discard: true })
