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
import { Cause, Clock, Data, Duration, Effect, Either, ExecutionStrategy, Exit, Fiber, identity, Metric, MetricBoundaries, Option, Schedule, Scope, Stream } from "effect"
import type { Delivery } from "./EventSource.js"
import { ack, EventSource, EventSourceError, nack } from "./EventSource.js"
import type { Event, Handler, Projection, Runnable } from "./Projection.js"
import { checkpointId, decoder } from "./Projection.js"
import type { DocumentWrite } from "./ReadModelStore.js"
import { ReadModelStore, StoreError } from "./ReadModelStore.js"
import type { Current, Durable, Mode } from "./internal/fold.js"
import { decodeStored, describe, documentCodec, foldBatch } from "./internal/fold.js"
import { Gate, Lane, laneOf } from "./internal/lanes.js"
import type { Released } from "./internal/streamProgress.js"
import { StreamProgress } from "./internal/streamProgress.js"
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
  /** Handlers: attempts before an event is dead-lettered or parked. Default 5. */
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
  }),
  held: Metric.gauge("reconciler_held_deliveries", {
    description: "persistent mode: deliveries held until their stream's earlier events are applied"
  }),
  gaps: Metric.counter("reconciler_gaps_skipped", {
    description: "persistent mode: ranges of a stream's events found gone (deleted, truncated) and skipped by decision"
  }),
  streamReads: Metric.counter("reconciler_stream_reads", {
    description: "persistent mode: events the engine read from their stream because the group had not handed them over in time"
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
  /** Persistent mode: read from the stream by the engine, not handed over by the group (nothing to settle). */
  readonly fetched: boolean
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
          if (progress !== undefined) return yield* settlePersistent(progress, finished)
          // Catch-up deliveries are not settled one by one: the checkpoint is their
          // acknowledgement (settling each cost a third of the engine's time).
          for (const tracked of finished) watermark.complete(tracked.ticket)
          gate.leave(finished.length)
          settledCount += finished.length
        })

      // ---- persistent mode: per-stream order and progress ---------------------
      // Each stream applies in order whatever the group does: a delivery that
      // overtook its stream is held until its predecessors are applied (here, by
      // another consumer, or read from the stream); an acknowledgement waits until
      // the stream's recorded progress covers the delivery, so that what was
      // acknowledged is never redelivered into a gap.
      const progress = mode === "persistent" ? new StreamProgress<Tracked>() : undefined
      const heldGauge = tag(metrics.held)
      const gapsSkipped = tag(metrics.gaps)
      const streamReads = tag(metrics.streamReads)

      /** Settles for good: acknowledges (a no-op for what was parked) and frees the slots. */
      const acknowledge = (items: ReadonlyArray<Tracked>) =>
        items.length === 0 ? Effect.void : Effect.gen(function*() {
          yield* Effect.forEach(
            items,
            (tracked) =>
              tracked.delivery.settle(ack).pipe(
                // What the source could not take is redelivered later, and recognised as applied.
                Effect.catchAll((error) => Effect.logWarning("settling a delivery failed", error.message))
              ),
            { discard: true }
          )
          for (const tracked of items) unsettled.delete(tracked)
          gate.leave(items.length)
          settledCount += items.length
        })

      const acknowledgeDuplicates = (items: ReadonlyArray<Tracked>) =>
        items.length === 0
          ? Effect.void
          : Metric.incrementBy(counters.duplicates, items.length).pipe(Effect.zipRight(acknowledge(items)))

      /** Records what the streams owe (gaps first), then acknowledges what that covers. */
      const commitProgress = (p: StreamProgress<Tracked>) =>
        Effect.suspend(() => {
          const due = p.due()
          if (due.length === 0) return Effect.void
          const at = new Date()
          return durably(
            store.commitProgress(
              id,
              due.map(({ revision, stream }) => ({ stream, revision })),
              due.flatMap(({ gaps, stream }) => gaps.map((gap) => ({ projection: id, stream, ...gap, at })))
            ),
            "committing stream progress"
          ).pipe(Effect.zipRight(Effect.suspend(() => acknowledge(due.flatMap((d) => p.committed(d.stream, d.revision))))))
        })

      const settlePersistent = (p: StreamProgress<Tracked>, finished: ReadonlyArray<Tracked>) =>
        Effect.gen(function*() {
          for (const tracked of finished) {
            // Poison is set aside before the progress passes it: parked, or (read from
            // the stream, so nothing to park) dead-lettered.
            if (tracked.poison !== undefined) {
              if (tracked.fetched) yield* deadLetter(tracked.delivery, tracked.poison)
              else {
                yield* tracked.delivery.settle(nack("park", tracked.poison)).pipe(
                  Effect.catchAll((error) => Effect.logWarning("parking a delivery failed", error.message))
                )
              }
            }
          }
          const streams = new Set<string>()
          for (const tracked of finished) {
            p.complete(tracked.delivery.streamId, tracked.delivery.revision, tracked)
            streams.add(tracked.delivery.streamId)
          }
          // Copies of deliveries the progress already covered go at once.
          yield* acknowledge([...streams].flatMap((stream) => p.settleableOf(stream)))
          yield* commitProgress(p)
        })

      /** Dispatches released deliveries and acknowledges released duplicates. */
      const applyReleased = (released: Released<Tracked>): Effect.Effect<void, ReconcilerError> =>
        Effect.suspend(() => {
          if (released.dispatch.length === 0 && released.duplicates.length === 0) return Effect.void
          const done: Array<Tracked> = []
          for (const tracked of released.dispatch) {
            const finished = dispatch(tracked)
            if (finished !== undefined) done.push(finished)
          }
          return acknowledgeDuplicates(released.duplicates).pipe(Effect.zipRight(settle(done)))
        })

      /** Learns the recorded progress of streams from the store. */
      const learnProgress = (p: StreamProgress<Tracked>, streams: ReadonlyArray<string>) =>
        streams.length === 0 ? Effect.void : Effect.gen(function*() {
          const stored = yield* durably(store.loadProgress(id, streams), "loading stream progress")
          for (const stream of streams) yield* applyReleased(p.learn(stream, stored.get(stream)))
        })

      /** Offers deliveries in order: dispatched, acknowledged as duplicates, or held (then progress re-read). */
      const offerAll = (p: StreamProgress<Tracked>, deliveries: Iterable<Delivery>, fetched: boolean) =>
        Effect.gen(function*() {
          const unknown = new Set<string>()
          for (const delivery of deliveries) if (!p.knows(delivery.streamId)) unknown.add(delivery.streamId)
          yield* learnProgress(p, [...unknown])
          const done: Array<Tracked> = []
          const duplicates: Array<Tracked> = []
          const held = new Set<string>()
          const now = Date.now()
          for (const delivery of deliveries) {
            const tracked = admit(delivery, fetched)
            if (!p.knows(delivery.streamId)) p.learn(delivery.streamId, undefined)
            const outcome = p.offer(delivery.streamId, delivery.revision, tracked, now)
            if (outcome === "duplicate") duplicates.push(tracked)
            else if (outcome === "held") held.add(delivery.streamId)
            else {
              const finished = dispatch(tracked)
              if (finished !== undefined) done.push(finished)
              const released = p.released(delivery.streamId)
              duplicates.push(...released.duplicates)
              for (const next of released.dispatch) {
                const f = dispatch(next)
                if (f !== undefined) done.push(f)
              }
            }
          }
          if (skips > 0) {
            yield* Metric.incrementBy(skipped, skips)
            skips = 0
          }
          yield* acknowledgeDuplicates(duplicates)
          yield* settle(done)
          // Another consumer may have applied the missing events: look before waiting.
          yield* learnProgress(p, [...held])
          yield* Metric.set(heldGauge, p.held)
        })

      /**
       * Held too long: read the missing events from the stream and apply them; those
       * gone for good (deleted, truncated) are skipped and recorded. Without a source
       * that reads streams, the held deliveries are handed back for redelivery.
       */
      const fill = (p: StreamProgress<Tracked>, stream: string, expected: bigint, before: bigint) =>
        Effect.gen(function*() {
          const read = source.readStream
          if (read === undefined) {
            const back = p.takeHeld(stream)
            yield* Effect.forEach(back, (tracked) =>
              tracked.delivery.settle(nack("retry", `held: waiting for revision ${expected} of ${stream}`)).pipe(Effect.ignore), {
              discard: true
            })
            for (const tracked of back) unsettled.delete(tracked)
            gate.leave(back.length)
            return
          }
          const count = Number(before - expected < 256n ? before - expected : 256n)
          const found = yield* read(stream, expected, count).pipe(
            Effect.tapError((error) => Effect.logWarning(`reading ${stream} for its missing events failed`, error.message)),
            Effect.option
          )
          if (Option.isNone(found)) return
          const events = found.value.filter((d) => d.revision < before)
          const first = events[0]?.revision ?? before
          if (first > expected) {
            const reason = `revisions ${expected}…${first - 1n} of ${stream} are gone (deleted or truncated): skipped`
            yield* Effect.logWarning(`${runnable.name}: ${reason}`)
            yield* Metric.increment(gapsSkipped)
            yield* applyReleased(p.skip(stream, { from: expected, to: first - 1n, reason }))
            yield* commitProgress(p)
          }
          if (events.length > 0) {
            yield* Metric.incrementBy(streamReads, events.length)
            yield* offerAll(p, events, true)
          }
        })

      const holdCheck = Duration.decode(options.holdCheck ?? "100 millis")
      const fillAfter = Duration.toMillis(options.fillAfter ?? "2 seconds")
      /** Persistent mode: re-reads held streams' progress, fills what waited too long. */
      const mender = (p: StreamProgress<Tracked>) =>
        Effect.gen(function*() {
          const waiting = p.waiting()
          if (waiting.length === 0) {
            p.forget()
            return
          }
          yield* learnProgress(p, waiting.map((w) => w.stream))
          const now = Date.now()
          for (const w of p.waiting()) {
            if (now - w.since >= fillAfter) yield* fill(p, w.stream, w.expected, w.before)
          }
          yield* Metric.set(heldGauge, p.held)
        }).pipe(Effect.zipRight(Effect.sleep(holdCheck)), Effect.forever)

      // ---- lanes ------------------------------------------------------------
      const lanes = Array.from({ length: laneCount }, () => new Lane<Part>())

      const makeBatch = (): Batch =>
        runnable._tag === "Projection"
          ? projectionBatch(
            runnable,
            mode,
            store,
            durably,
            counters,
            cacheSize,
            () => mode === "catch-up" && watermark.current !== undefined ? { projection: id, position: watermark.current } : undefined,
            progress === undefined ? undefined : {
              durable: (stream) => progress.durable(stream),
              refresh: (streams) => learnProgress(progress, streams)
            }
          )
          : handlerBatch(runnable, options.handlerAttempts ?? 5, counters)

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
      const decode = decoder(runnable.events)
      const partition: (event: Event, key: string) => string =
        runnable._tag === "Projection" && runnable.partition !== undefined ? runnable.partition : (_, key) => key
      let skips = 0
      /** Takes a delivery in. */
      const admit = (delivery: Delivery, fetched: boolean): Tracked => {
        gate.enter()
        const tracked: Tracked = {
          delivery,
          ticket: mode === "catch-up" ? watermark.track(delivery.position) : 0,
          remaining: 1,
          poison: undefined,
          fetched
        }
        if (mode === "persistent") unsettled.add(tracked)
        return tracked
      }
      /** Takes a delivery in and routes it; returns it when it is already done (skipped or poison). */
      const route = (delivery: Delivery): Tracked | undefined => dispatch(admit(delivery, false))
      /** Routes a delivery to its lanes; returns it when it is already done (skipped or poison). */
      const dispatch = (tracked: Tracked): Tracked | undefined => {
        const delivery = tracked.delivery
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
          if (progress !== undefined) {
            yield* offerAll(progress, chunk, false)
            continue
          }
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
        progress === undefined ? identity : Effect.zipLeft(mender(progress), { concurrent: true }),
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
          if (progress !== undefined) {
            yield* withDeadline(
              commitProgress(progress).pipe(Effect.catchAll((error) => Effect.logError("final progress commit failed", error))),
              "the final progress commit"
            )
            progress.takeHeld()
            yield* Metric.set(heldGauge, 0)
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
  /** Persistent mode: the streams' recorded progress, and how to re-read it from the store. */
  streams?: {
    readonly durable: Durable
    readonly refresh: (streams: ReadonlyArray<string>) => Effect.Effect<void, ReconcilerError>
  }
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
      let applied = 0
      let duplicates = 0
      let todo = parts
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
          // After a load: a marker pruned from these documents is known from the progress.
          if (streams !== undefined) yield* streams.refresh([...new Set(todo.map((part) => part.event.streamId))])
        }
        const foldable: Array<Part> = []
        for (const part of todo) {
          const reason = unreadable.get(part.key)
          if (reason === undefined) foldable.push(part)
          else poison.set(part, reason)
        }
        const result = foldBatch(projection, codec, mode, (docId) => cache.get(docId), foldable, streams?.durable)
        const outcome = result.writes.length === 0
          ? { conflicts: [] as ReadonlyArray<string> }
          : yield* durably(
            store.write({ collection: projection.collection, writes: result.writes, checkpoint: checkpoint() }),
            "writing documents"
          )
        const conflicts = new Set(outcome.conflicts)
        const poisonedDocs = new Set<string>()
        // Poison found in any attempt stays poison. A conflict may be our own write
        // whose acknowledgement was lost: folded again, the poison event then looks
        // applied (the markers passed it), yet it never was and must be dead-lettered.
        for (const { part, reason } of result.poisoned) {
          poison.set(part, reason)
          if (!conflicts.has(part.key)) poisonedDocs.add(part.key)
        }
        for (const [docId, fold] of result.documents) {
          if (conflicts.has(docId)) {
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

// ---- handlers -----------------------------------------------------------------

const handlerBatch = (handler: Handler<any, any>, attempts: number, counters: Counters): Batch => (parts) =>
  Effect.gen(function*() {
    const finished: Array<Tracked> = []
    for (const part of parts) {
      const poison = yield* handler.handle(part.event as never).pipe(
        Effect.tapError(() => Metric.increment(counters.retries)),
        Effect.retry({ times: Math.max(0, attempts - 1) }),
        Effect.matchCauseEffect({
          onSuccess: () => Metric.increment(counters.processed).pipe(Effect.as(undefined)),
          onFailure: (cause) =>
            Cause.isInterruptedOnly(cause)
              ? Effect.interrupt
              : Effect.succeed(`handler ${handler.name} failed on ${part.event.type}: ${Cause.pretty(cause)}`)
        })
      )
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
