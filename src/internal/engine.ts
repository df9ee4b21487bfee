/**
 * The engine, assembled: one intake (subscription) feeding the pipelines of
 * one or more runnables, each with its lanes, settlement and committer, all
 * fibers in one scope, and the drain as its finalizer.
 */
import { Effect, ExecutionStrategy, Fiber, Option, Scope } from "effect"
import type { InvalidRunOptions, ReconcilerError } from "../Errors.js"
import { EventSource } from "../EventSource.js"
import type { Runnable } from "../Projection.js"
import { ReadModelStore } from "../ReadModelStore.js"
import * as Context from "./context.js"
import type { Running } from "./drain.js"
import { drain } from "./drain.js"
import * as Intake from "./intake.js"
import type { Resolved } from "./options.js"
import { Activity, Pipeline } from "./pipeline.js"

/**
 * Runs runnables that share one subscription (same categories, same mode) until
 * interrupted, or until a finite source ends (then after draining everything).
 */
export const runGroup = (
  runnables: ReadonlyArray<Runnable>,
  options: Resolved
): Effect.Effect<void, ReconcilerError | InvalidRunOptions, EventSource | ReadModelStore> =>
  Effect.scoped(
    Effect.gen(function*() {
      const source = yield* EventSource
      const store = yield* ReadModelStore
      // Created first so that it closes last: subscriptions stay open through the
      // drain, so that what was received but not applied can still be nacked.
      const subscriptions = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
      const activity = new Activity()
      // Read synchronously where deliveries settle (the fiber's Clock: a TestClock in tests).
      const clock = yield* Effect.clock
      const pipelines: Array<Pipeline> = []
      for (const runnable of runnables) {
        const base = Context.make(runnable, options, store)
        // The documents quarantined so far stay quarantined.
        const ctx = Context.make(runnable, options, store, yield* base.durably(store.deadLetters(base.id), "reading the dead letters"))
        if (ctx.quarantine !== undefined) yield* ctx.quarantine.report
        const checkpoint = options.mode === "catch-up"
          ? yield* ctx.durably(store.readCheckpoint(ctx.id), "reading the checkpoint")
          : Option.none()
        pipelines.push(new Pipeline(ctx, Option.getOrUndefined(checkpoint), activity, clock, source.readStream))
      }
      const running: Array<Running> = []
      for (const pipeline of pipelines) {
        const lanes = yield* Effect.forEach(pipeline.lanes, (lane) => Effect.forkScoped(pipeline.laneLoop(lane)))
        // Persistent mode: the stream order's loop (held deliveries) lives and stops with the committer.
        const order = pipeline.order
        const committer = yield* Effect.forkScoped(
          order === undefined ? pipeline.committer.loop : Effect.zipLeft(pipeline.committer.loop, order.loop, { concurrent: true })
        )
        running.push({ pipeline, lanes, committer })
      }
      yield* Effect.addFinalizer(() => drain(running, options))
      if (options.mode === "catch-up") yield* Effect.forkScoped(Intake.watchHead(source, runnables[0]!.categories, activity, "250 millis"))

      // The source runs until it ends (finite sources) or fails; a failing lane or
      // committer stops it.
      const failureOf = (fibers: ReadonlyArray<Fiber.Fiber<unknown, ReconcilerError>>) =>
        Fiber.joinAll(fibers).pipe(Effect.zipRight(Effect.never))
      const fibers = running.flatMap((r): Array<Fiber.Fiber<unknown, ReconcilerError>> => [...r.lanes, r.committer])
      yield* Effect.raceFirst(Intake.run(source, pipelines, options, subscriptions, activity), failureOf(fibers))
      // The source ended: finish what is queued and surface any lane's failure.
      for (const pipeline of pipelines) pipeline.endLanes()
      yield* Fiber.joinAll(running.flatMap((r) => r.lanes))
      yield* Effect.forEach(pipelines, (p) => p.committer.commit, { discard: true })
    })
  ).pipe(Effect.withSpan("Reconciler.run", { attributes: { projection: runnables.map((r) => r.name).join(",") } }))
