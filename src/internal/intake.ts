/**
 * Intake: one subscription feeding one or more pipelines. Projections over the
 * same categories share it (read and decoded from the wire once, fanned out
 * here), each with its own checkpoint: the subscription starts after the
 * lowest of them, and a pipeline ignores what its checkpoint already covers.
 *
 * Work moves in the chunks the source hands over. Before each pull the intake
 * waits until every pipeline has room under its in-flight bound, so the bound
 * is exceeded by at most one chunk; that backpressure reaches the source.
 * A dropped subscription resumes after the last delivery taken in (catch-up) or
 * from the group (persistent); what is in flight stays tracked.
 */
import type { Duration } from "effect"
import { Effect, ExecutionStrategy, Exit, Metric, Option, Scope, Stream } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { EventSource, EventSourceError, Subscription } from "../EventSource.js"
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

  const room = pipelines.length === 1
    ? first.settlement.gate.room
    : Effect.forEach(pipelines, (p) => p.settlement.gate.room, { discard: true })
  const done: Array<Array<Tracked>> = pipelines.map(() => [])

  const pullOnce = Effect.gen(function*() {
    const scope = yield* Scope.fork(subscriptions, ExecutionStrategy.sequential)
    const next = yield* Scope.extend(Stream.toPull(source.subscribe(subscription())), scope)
    while (true) {
      yield* room
      const chunk = yield* next.pipe(
        Effect.catchAll((error: Option.Option<EventSourceError>) =>
          Option.match(error, {
            onNone: () => Effect.succeed(undefined),
            onSome: (error) => Scope.close(scope, Exit.void).pipe(Effect.zipRight(Effect.fail(error)))
          })
        )
      )
      if (chunk === undefined) return
      const behind = activity.backlog
      activity.received += chunk.length
      for (const delivery of chunk) {
        activity.position = delivery.position
        lastDispatched = delivery.position
        for (let i = 0; i < pipelines.length; i++) {
          const tracked = pipelines[i]!.route(delivery)
          if (tracked !== undefined) done[i]!.push(tracked)
        }
      }
      // Reached the head: nothing more is coming at once, the lanes write what they hold.
      if (behind && !activity.backlog) for (const p of pipelines) p.flushLanes()
      for (let i = 0; i < pipelines.length; i++) {
        const finished = done[i]!
        done[i] = []
        yield* pipelines[i]!.afterChunk(finished)
      }
    }
  })

  return pullOnce.pipe(
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
