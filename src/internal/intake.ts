/**
 * Intake: one subscription feeding one or more pipelines. Projections over the
 * same categories share it (read and decoded from the wire once, fanned out
 * here), each with its own checkpoint: the subscription starts after the
 * lowest of them, and a pipeline ignores what its checkpoint already covers.
 *
 * Work moves in the chunks the source hands over. Before each pull, and within a
 * chunk whenever a pipeline reaches its in-flight bound, the intake waits until
 * every pipeline has room: deliveries in flight never exceed the bound, and
 * that backpressure reaches the source.
 * A dropped subscription resumes after the last delivery taken in (catch-up) or
 * from the group (persistent); what is in flight stays tracked.
 */
import type { Duration } from "effect"
import { Chunk, Effect, ExecutionStrategy, Exit, Metric, Option, Scope, Stream } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { Delivery, EventSource, EventSourceError, Subscription } from "../EventSource.js"
import type { Resolved } from "./options.js"
import type { Activity, Pipeline } from "./pipeline.js"
import type { Tracked } from "./tracked.js"

/**
 * Reads the source's head now and then (catch-up), so that lanes know whether
 * there is a backlog. A failed read keeps the last head: it is only a hint.
 */
export const watchHead = (
  source: EventSource["Type"],
  categories: ReadonlyArray<string>,
  activity: Activity,
  every: Duration.DurationInput
): Effect.Effect<never> => {
  const read = source.head(categories).pipe(
    Effect.tap((head) => Effect.sync(() => {
      if (Option.isSome(head)) activity.head = head.value
    })),
    Effect.ignore
  )
  return read.pipe(Effect.zipRight(Effect.sleep(every)), Effect.forever)
}

/** How long a pull may wait on the source before the intake counts as stalled, in ms. */
const STALL_MS = 10

/**
 * Notices a pull that waits on the source: after {@link STALL_MS}, and once the
 * I/O ready by then has been handled (a `setImmediate` after the timer), the
 * intake counts as stalled and the lanes are flushed. Live, a batch so never
 * waits on the linger timer for events that are not at the source yet, while
 * under a backlog (the source delivers back to back) batches still fill. One
 * timer at most, re-armed only while pulls keep waiting.
 */
class StallWatch {
  private pulls = 0
  private pending = false
  private timer: ReturnType<typeof setTimeout> | undefined
  constructor(private readonly activity: Activity, private readonly onStall: () => void) {}

  /** A pull starts. */
  start(): void {
    this.pulls++
    this.pending = true
    if (this.timer === undefined) this.arm(this.pulls)
  }

  /** The pull returned: the source delivers again. */
  end(): void {
    this.pending = false
    this.activity.stalled = false
  }

  close(): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.pending = false
  }

  private arm(pull: number): void {
    this.timer = setTimeout(() => {
      this.timer = undefined
      if (!this.pending) return
      // A later pull than the one armed for: it gets its own time.
      if (this.pulls !== pull) return this.arm(this.pulls)
      setImmediate(() => {
        if (!this.pending || this.pulls !== pull || this.activity.stalled) return
        this.activity.stalled = true
        this.onStall()
      })
    }, STALL_MS)
    this.timer.unref()
  }
}

export const run = (
  source: EventSource["Type"],
  pipelines: ReadonlyArray<Pipeline>,
  options: Resolved,
  subscriptions: Scope.Scope,
  activity: Activity
): Effect.Effect<void, ReconcilerError> => {
  const first = pipelines[0]!
  let lastDispatched: bigint | undefined = pipelines.some((p) => p.start === undefined)
    ? undefined
    : pipelines.reduce((min, p) => (p.start! < min ? p.start! : min), first.start!)

  const subscription = (): Subscription =>
    options.mode === "catch-up"
      ? { mode: "catch-up", categories: first.ctx.runnable.categories, after: Option.fromNullable(lastDispatched) }
      : {
        mode: "persistent",
        categories: first.ctx.runnable.categories,
        group: options.group ?? first.ctx.id,
        bufferSize: options.bufferSize ?? options.bound
      }

  const done: Array<Array<Tracked>> = pipelines.map(() => [])
  const gates = pipelines.map((p) => p.settlement.gate)
  const hasRoom = (): boolean => {
    for (const gate of gates) if (gate.inFlight >= gate.bound) return false
    return true
  }
  // Checked synchronously first (`hasRoom`): a pull usually finds room, and then waits on no effect.
  const waitForRoom = pipelines.length === 1
    ? first.settlement.gate.room
    : Effect.forEach(gates, (gate) => gate.room, { discard: true })

  // Only catch-up has a head, hence a backlog to tell from a stall.
  const stall = options.mode === "catch-up"
    ? new StallWatch(activity, () => {
      for (const p of pipelines) p.flushLanes()
    })
    : undefined
  // The watch is told when a pull starts and when it returns, either way. An interrupted
  // pull ends the intake, whose finalizer closes the watch: no `ensuring` on every pull.
  const endPull = (): void => stall?.end()
  /** Waits for room in every pipeline, then tells the watch that a pull starts. */
  const beforePull: Effect.Effect<void> = Effect.suspend(() => {
    if (!hasRoom()) return Effect.zipRight(waitForRoom, beforePull)
    stall?.start()
    return Effect.void
  })
  const pullOnce = Effect.gen(function*() {
    const scope = yield* Scope.fork(subscriptions, ExecutionStrategy.sequential)
    const next = yield* Scope.extend(Stream.toPull(source.subscribe(subscription())), scope)
    while (true) {
      yield* beforePull
      const chunk = yield* Effect.matchEffect(next, {
        onSuccess: (chunk): Effect.Effect<Chunk.Chunk<Delivery> | undefined> => {
          endPull()
          return Effect.succeed(chunk)
        },
        onFailure: (error: Option.Option<EventSourceError>) => {
          endPull()
          return Option.match(error, {
            onNone: () => Effect.succeed(undefined),
            onSome: (error) => Scope.close(scope, Exit.void).pipe(Effect.zipRight(Effect.fail(error)))
          })
        }
      })
      if (chunk === undefined) return
      const behind = activity.backlog
      activity.received += chunk.length
      if (options.mode === "persistent") {
        // Each stream's order is restored before routing (one pipeline per group).
        for (const pipeline of pipelines) yield* pipeline.offer(chunk)
        continue
      }
      // Routed synchronously while every pipeline has room; at the bound, what routing
      // finished is settled and the rest of the chunk waits for room, so that the
      // deliveries in flight never exceed the bound (not even by part of a chunk).
      const deliveries = Chunk.toReadonlyArray(chunk)
      for (let at = 0; at < deliveries.length;) {
        if (!hasRoom()) yield* waitForRoom
        for (; at < deliveries.length && hasRoom(); at++) {
          const delivery = deliveries[at]!
          activity.position = delivery.position
          lastDispatched = delivery.position
          for (let i = 0; i < pipelines.length; i++) {
            const tracked = pipelines[i]!.route(delivery)
            if (tracked !== undefined) done[i]!.push(tracked)
          }
        }
        // Reached the head: nothing more is coming at once, the lanes write what they hold.
        if (at === deliveries.length && behind && !activity.backlog) for (const p of pipelines) p.flushLanes()
        for (let i = 0; i < pipelines.length; i++) {
          const finished = done[i]!
          if (finished.length === 0) continue
          done[i] = []
          yield* pipelines[i]!.afterChunk(finished)
        }
      }
    }
  })

  return pullOnce.pipe(
    Effect.ensuring(Effect.sync(() => stall?.close())),
    Effect.tapError((error) =>
      error._tag === "EventSourceError" && error.retryable
        ? Effect.logWarning("subscription dropped; resubscribing", error.message).pipe(
          Effect.zipRight(Effect.forEach(pipelines, (p) => Metric.increment(p.ctx.metrics.retries), { discard: true }))
        )
        : Effect.void
    ),
    Effect.retry({
      schedule: options.resubscribeSchedule,
      while: (error) => error._tag === "EventSourceError" && error.retryable
    }),
    Effect.catchTag("EventSourceError", (error) => Effect.fail(first.ctx.fail("the subscription failed")(error)))
  )
}
