/**
 * Rebuilds over random histories: version 1 serves while version 2 is built,
 * with events arriving during the rebuild and the rebuild stopped at random
 * points (interrupted, or crashed: every store call failing from then on) and
 * started again; after the cut-over, the live read model equals the reference
 * fold of the whole history, and version 1's stayed its own.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, FastCheck as fc, Fiber } from "effect"
import { App, EventSource, InMemory, ReadModels, ReadModelStore, Rebuild } from "../src/index.js"
import type { Ledger } from "./support/ledger.js"
import type { Step } from "./support/ledger.js"
import { historyArbitrary, ledger, propertySeed, referenceFold, toNewEvent } from "./support/ledger.js"
import { doubled } from "./support/ledger-v2.js"

const stopsArbitrary = fc.array(
  fc.record({ afterWrites: fc.integer({ min: 1, max: 10 }), kind: fc.constantFrom("interrupt" as const, "crash" as const) }),
  { maxLength: 3 }
)

const numRuns = Number(process.env.PROPERTY_RUNS ?? 25)

/** Appends `steps` as the events numbered from `offset` of the history. */
const appendFrom = (log: InMemory.EventLog, steps: ReadonlyArray<Step>, offset: number) =>
  Effect.forEach(steps, (step, i) => log.append(`ledger-${step.stream}`, [toNewEvent(step, offset + i)]), { discard: true })

const bodies = (store: InMemory.MemoryStore, collection: string) =>
  Object.fromEntries([...store.documents(collection)].map(([id, doc]) => [id, doc.body]))

describe("Rebuild over random histories", () => {
  const seed = propertySeed("rebuild")
  it.live.prop(
    "after random stops and a cut-over, the live read model equals the reference fold of version 2",
    [
      historyArbitrary({ maxEvents: 50, maxStreams: 4, docs: 5 }),
      fc.double({ min: 0, max: 1, noNaN: true }),
      stopsArbitrary,
      fc.integer({ min: 1, max: 6 })
    ],
    ([history, split, stops, batchSize]) =>
      Effect.scoped(Effect.gen(function*() {
        const log = yield* InMemory.makeEventLog()
        const store = yield* InMemory.makeStore()
        const provide = <A, E>(effect: Effect.Effect<A, E, EventSource.EventSource | ReadModelStore.ReadModelStore>, port = store.port) =>
          effect.pipe(
            Effect.provideService(EventSource.EventSource, log.port),
            Effect.provideService(ReadModelStore.ReadModelStore, port)
          )
        const before = Math.floor(history.length * split)
        yield* appendFrom(log, history.slice(0, before), 0)
        // Version 1 serves throughout.
        const live = yield* Effect.forkScoped(provide(App.run([ledger], { commitInterval: "5 millis" })))
        const run = { batchSize, commitInterval: "5 millis" } as const
        let appended = false
        for (const stop of stops) {
          let crashed = false
          let writes = 0
          const reached = yield* Deferred.make<void>()
          const gate = <A>(effect: Effect.Effect<A, ReadModelStore.StoreError>) =>
            Effect.suspend(() => {
              if (crashed) return Effect.fail(new ReadModelStore.StoreError({ message: "crashed", transient: false }))
              if (++writes === stop.afterWrites) Deferred.unsafeDone(reached, Effect.void)
              return effect
            })
          const port = ReadModelStore.ReadModelStore.of({
            ...store.port,
            write: (batch) => gate(store.port.write(batch)),
            commitCheckpoint: (checkpoint) => gate(store.port.commitCheckpoint(checkpoint))
          })
          const rebuild = yield* Effect.fork(provide(Rebuild.run(doubled, { run, interval: "2 millis" }), port))
          if (!appended) {
            // The rest of the history arrives while the first rebuild runs.
            yield* appendFrom(log, history.slice(before), before)
            appended = true
          }
          yield* Effect.raceFirst(Deferred.await(reached), Fiber.await(rebuild))
          if (stop.kind === "interrupt") yield* Fiber.interrupt(rebuild)
          else {
            crashed = true
            yield* Fiber.await(rebuild)
          }
        }
        if (!appended) yield* appendFrom(log, history.slice(before), before)
        yield* provide(Rebuild.run(doubled, { run, interval: "2 millis", cutover: {} }))

        const where = yield* provide(ReadModels.live("ledger"))
        expect(where).toEqual({ readModel: "ledger", collection: "ledger__v2", version: 2 })
        const expected = Object.fromEntries(
          [...referenceFold(history)].map(([id, doc]): [string, Ledger] => [id, { ...doc, total: 2 * doc.total }])
        )
        expect(bodies(store, where.collection)).toEqual(expected)
        // Version 1 kept its own documents, and folded them as version 1.
        yield* provide(App.awaitCaughtUpWhile(live, [ledger], { interval: "2 millis" }))
        expect(bodies(store, "ledger")).toEqual(Object.fromEntries(referenceFold(history)))
        yield* Fiber.interrupt(live)
      })),
    { fastCheck: { seed, numRuns } }
  )
})
