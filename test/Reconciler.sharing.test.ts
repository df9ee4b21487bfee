/**
 * Reading once: projections run together over the same categories share one
 * subscription (each event read and decoded from the source once), each keeps
 * its own checkpoint, and one further along skips what it already has.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Redacted, Stream } from "effect"
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import { App, EventSource, InMemory, Projection, ReadModelStore, Reconciler } from "../src/index.js"
import type { Step } from "./support/ledger.js"
import { appendHistory, ledger, referenceFold, toNewEvent } from "./support/ledger.js"

/** The ledger again, under another name and collection: a second read model over the same categories. */
const mirror = Projection.make({ ...ledger, name: "ledger-mirror", collection: "ledger-mirror" })

const history: ReadonlyArray<Step> = Array.from({ length: 300 }, (_, i) =>
  i % 7 === 3
    ? { kind: "Linked", stream: i % 5, a: i % 9, b: (i + 4) % 9 }
    : { kind: "Credited", stream: i % 5, doc: i % 9, amount: i })

const bodies = (store: InMemory.MemoryStore, collection: string) =>
  Object.fromEntries([...store.documents(collection)].map(([id, doc]) => [id, doc.body]))

/** A source that counts the deliveries it hands over. */
const counting = (source: EventSource.EventSource["Type"]) => {
  const counter = { deliveries: 0, subscriptions: 0 }
  const port: EventSource.EventSource["Type"] = {
    ...source,
    subscribe: (subscription) =>
      Stream.suspend(() => {
        counter.subscriptions++
        return source.subscribe(subscription).pipe(Stream.tap(() => Effect.sync(() => void counter.deliveries++)))
      })
  }
  return { counter, port }
}

describe("Reconciler: one read per event", () => {
  it.scoped("two projections over the same categories read each event once, and each gets every event", () =>
    Effect.gen(function*() {
      const run = (runnables: ReadonlyArray<Projection.Runnable>) =>
        Effect.gen(function*() {
          const log = yield* InMemory.makeEventLog({ endAtHead: true, chunkSize: 16 })
          yield* appendHistory(log, history)
          const store = yield* InMemory.makeStore()
          yield* Reconciler.runAll(runnables, { lanes: 3, batchSize: 10 }).pipe(
            Effect.provideService(EventSource.EventSource, log.port),
            Effect.provideService(ReadModelStore.ReadModelStore, store.port)
          )
          return { pulled: log.pulled(), store }
        })
      const together = yield* run([ledger, mirror])
      expect(together.pulled).toBe(history.length)
      const expected = Object.fromEntries(referenceFold(history))
      expect(bodies(together.store, ledger.collection)).toEqual(expected)
      expect(bodies(together.store, mirror.collection)).toEqual(expected)
      expect(together.store.checkpoint("ledger@1")).toBe(BigInt(history.length))
      expect(together.store.checkpoint("ledger-mirror@1")).toBe(BigInt(history.length))
      // The counter does count: projections over different categories read separately.
      const other = Projection.make({ ...mirror, name: "elsewhere", categories: ["ledger", "nothing"] })
      expect((yield* run([ledger, other])).pulled).toBe(2 * history.length)
    }))

  it.scoped("a projection whose checkpoint is ahead skips what it has; the other is rebuilt from the start", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true, chunkSize: 8 })
      const store = yield* InMemory.makeStore()
      const firstHalf = history.slice(0, 150)
      yield* appendHistory(log, firstHalf)
      const provide = <A, E>(effect: Effect.Effect<A, E, EventSource.EventSource | ReadModelStore.ReadModelStore>) =>
        effect.pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore.ReadModelStore, store.port)
        )
      yield* provide(Reconciler.run(ledger, { lanes: 2, batchSize: 7 }))
      expect(store.checkpoint("ledger@1")).toBe(150n)
      // The rest of the history arrives; the mirror is new (a rebuild of the same read model).
      yield* Effect.forEach(
        history.slice(150),
        (step, i) => log.append(`ledger-${step.stream}`, [toNewEvent(step, 150 + i)]),
        { discard: true }
      )
      let writesOfLedger = 0
      const port: ReadModelStore.ReadModelStore["Type"] = {
        ...store.port,
        write: (batch) => {
          if (batch.collection === ledger.collection) writesOfLedger += batch.writes.length
          return store.port.write(batch)
        }
      }
      const before = log.pulled()
      yield* Reconciler.runAll([ledger, mirror], { lanes: 2, batchSize: 7 }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, port)
      )
      // One subscription from the lower checkpoint (the mirror's: none).
      expect(log.pulled() - before).toBe(history.length)
      const expected = Object.fromEntries(referenceFold(history))
      expect(bodies(store, ledger.collection)).toEqual(expected)
      expect(bodies(store, mirror.collection)).toEqual(expected)
      // The ledger took in only the second half: it wrote no more documents than those events touch.
      const touched = history.slice(150).reduce((n, step) => n + (step.kind === "Linked" && step.a !== step.b ? 2 : 1), 0)
      expect(writesOfLedger).toBeLessThanOrEqual(touched)
      expect(store.checkpoint("ledger@1")).toBe(BigInt(history.length))
      expect(store.checkpoint("ledger-mirror@1")).toBe(BigInt(history.length))
    }))

  it.scopedLive("through the EventStoreDB client: two projections over the same categories read each event once", () =>
    Effect.gen(function*() {
      const server = yield* EventStoreServer.make()
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(server.connectionString)),
        (c) => Effect.promise(() => c.dispose())
      )
      for (const [index, step] of history.entries()) {
        const event = toNewEvent(step, index)
        yield* Effect.promise(() =>
          client.appendToStream(`ledger-${step.stream}`, jsonEvent({ type: event.type, data: event.data as Record<string, unknown> }))
        )
      }
      const source = yield* Layer.build(EventStoreDB.layer({ connectionString: Redacted.make(server.connectionString) })).pipe(
        Effect.map(Context.get(EventSource.EventSource))
      )
      const { counter, port } = counting(source)
      const store = yield* InMemory.makeStore()
      const provide = <A, E>(effect: Effect.Effect<A, E, EventSource.EventSource | ReadModelStore.ReadModelStore>) =>
        effect.pipe(
          Effect.provideService(EventSource.EventSource, port),
          Effect.provideService(ReadModelStore.ReadModelStore, store.port)
        )
      const engine = yield* Effect.forkScoped(provide(Reconciler.runAll([ledger, mirror])))
      yield* provide(App.awaitCaughtUpWhile(engine, [ledger, mirror]))
      yield* Fiber.interrupt(engine)
      expect(counter.subscriptions).toBe(1)
      expect(counter.deliveries).toBe(history.length)
      const totals = (collection: string) =>
        Object.fromEntries([...store.documents(collection)].map(([id, doc]) => [id, (doc.body as { total: number }).total]))
      const expected = Object.fromEntries([...referenceFold(history)].map(([id, doc]) => [id, doc.total]))
      expect(totals(ledger.collection)).toEqual(expected)
      expect(totals(mirror.collection)).toEqual(expected)
    }))
})
