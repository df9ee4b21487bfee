/**
 * Changing a projection, through the real clients on the embedded servers:
 * the version guard, a rebuild beside the live version (which keeps serving),
 * diff, an atomic cut-over watched by a concurrent reader, cleanup.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Option, Redacted } from "effect"
import { MongoClient } from "mongodb"
import * as App from "../src/App.js"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import { Projection } from "../src/index.js"
import * as ReadModels from "../src/ReadModels.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import * as Rebuild from "../src/Rebuild.js"
import { ledger } from "./support/ledger.js"
import { doubled, same } from "./support/ledger-v2.js"

const DATABASE = "rebuild_test"

/** Embedded servers, the ports over them, an EventStoreDB client to append with and a MongoDB client to read with. */
const setup = Effect.gen(function*() {
  const eventStore = yield* EventStoreServer.make()
  const mongo = yield* MongoServer.make()
  const client = yield* Effect.acquireRelease(
    Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
    (client) => Effect.promise(() => client.dispose())
  )
  const db = yield* Effect.acquireRelease(
    Effect.promise(() => new MongoClient(mongo.uri).connect()),
    (m) => Effect.promise(() => m.close())
  ).pipe(Effect.map((m) => m.db(DATABASE)))
  const ports = Layer.merge(
    EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
    MongoReadModelStore.layer({ uri: mongo.uri, database: DATABASE })
  )
  const credit = (doc: number, amount: number) =>
    Effect.promise(() =>
      client.appendToStream(`ledger-${doc % 3}`, jsonEvent({ type: "Credited", data: { doc: `doc-${doc}`, amount } }))
    )
  /** Documents of a collection as id → total (tombstones left out). */
  const totals = (collection: string) =>
    Effect.promise(async () => {
      const docs = await db.collection(collection).find({ "_reconciler.deleted": { $ne: true } }).toArray()
      return new Map(docs.map((d) => [String(d._id), d.total as number]))
    })
  return { eventStore, mongo, client, db, ports, credit, totals, connectionString: eventStore.connectionString }
})

const DOCS = 8

describe("versions", () => {
  it.scopedLive("a version never writes another version's documents; two projections never share a read model", () =>
    Effect.gen(function*() {
      const { credit, ports, totals } = yield* setup
      for (let i = 0; i < 20; i++) yield* credit(i % DOCS, i + 1)
      yield* Effect.gen(function*() {
        yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" })
        const before = yield* totals("ledger")

        // Version 2 on version 1's collection: refused, with what to do.
        const refused = yield* App.runUntilCaughtUp([doubled], { commitInterval: "20 millis" }).pipe(Effect.flip)
        expect(refused._tag).toBe("VersionConflict")
        expect(refused.message).toContain("reconciler rebuild --module <module> --projection ledger")
        expect(refused.message).toContain("reconciler cutover")
        expect(yield* totals("ledger")).toEqual(before)

        // Another projection on the same collection: refused.
        const intruder = Projection.make({ ...ledger, name: "intruder", collection: "ledger" })
        const taken = yield* App.runUntilCaughtUp([intruder]).pipe(Effect.flip)
        expect(taken._tag).toBe("ReadModelTaken")
        expect(taken.message).toContain("written by projection ledger")

        // Rebuilding the live version itself is refused too (bump the version).
        const again = yield* Rebuild.run(ledger).pipe(Effect.flip)
        expect(again._tag).toBe("AlreadyLive")

        // Built beside it and cut over, version 2 runs; version 1 no longer may once cleaned up.
        yield* Rebuild.run(doubled, { run: { commitInterval: "20 millis" }, interval: "20 millis", cutover: { cleanup: true } })
        yield* App.runUntilCaughtUp([doubled], { commitInterval: "20 millis" })
        const v1 = yield* App.runUntilCaughtUp([ledger]).pipe(Effect.flip)
        expect(v1._tag).toBe("VersionConflict")
      }).pipe(Effect.provide(ports))
    }), { timeout: 60_000 })

  it.scopedLive("rebuild beside the live version, diff, refuse a differing cut-over, cut over atomically, clean up", () =>
    Effect.gen(function*() {
      const { credit, ports, totals, db } = yield* setup
      const sums = new Map<string, number>()
      const add = (doc: number, amount: number) =>
        credit(doc, amount).pipe(Effect.tap(() => sums.set(`doc-${doc}`, (sums.get(`doc-${doc}`) ?? 0) + amount)))
      for (let i = 0; i < 300; i++) yield* add(i % DOCS, (i % 7) + 1)
      yield* Effect.gen(function*() {
        const store = yield* ReadModelStore
        // The live version serves.
        const live = yield* Effect.forkScoped(App.run([ledger], { commitInterval: "20 millis" }))
        yield* App.awaitCaughtUpWhile(live, [ledger])

        // The rebuild runs; meanwhile the live version keeps applying new events.
        const rebuild = yield* Effect.forkScoped(
          Rebuild.run(doubled, { run: { batchSize: 20, commitInterval: "20 millis" }, interval: "20 millis" })
        )
        for (let i = 0; i < 40; i++) yield* add(i % DOCS, 1)
        yield* App.awaitCaughtUpWhile(live, [ledger])
        expect(yield* totals("ledger")).toEqual(sums)
        const progress = yield* Fiber.join(rebuild)
        expect(progress.caughtUp).toBe(true)
        expect((yield* ReadModels.live("ledger")).version).toBe(1)

        // Let the new version reach the head too (a rebuild targets the head as it was when it started).
        yield* App.runUntilCaughtUp([doubled], { commitInterval: "20 millis" })
        const doubledSums = new Map([...sums].map(([id, total]) => [id, 2 * total]))
        expect(yield* totals("ledger__v2")).toEqual(doubledSums)

        // diff finds the deliberate change, field by field; --require-identical refuses.
        const found = yield* Rebuild.diff(doubled, { sample: 3 })
        expect(found.comparison).toMatchObject({ compared: DOCS, changed: DOCS, leftOnly: 0, rightOnly: 0 })
        expect(found.comparison.differences).toHaveLength(3)
        expect(found.comparison.differences[0]!.fields.map((f) => f.path)).toEqual(["total"])
        const refused = yield* Rebuild.cutover(doubled, { requireIdentical: true }).pipe(Effect.flip)
        expect(refused._tag).toBe("NotIdentical")
        expect((yield* ReadModels.live("ledger")).version).toBe(1)

        // A reader resolving the live version and reading every document, while the cut-over happens:
        // each read is all version 1 or all version 2, never a missing document, never a mix.
        const seen = new Set<number>()
        let reads = 0
        const problems: Array<string> = []
        const readOnce = Effect.gen(function*() {
          const where = yield* ReadModels.live("ledger")
          const docs = yield* totals(where.collection)
          reads++
          const v1 = [...sums].every(([id, total]) => docs.get(id) === total) && docs.size === sums.size
          const v2 = [...doubledSums].every(([id, total]) => docs.get(id) === total) && docs.size === sums.size
          if (v1 === v2) problems.push(`read ${reads} from ${where.collection}: ${JSON.stringify([...docs])}`)
          seen.add(v1 ? 1 : 2)
        })
        const reader = yield* Effect.forkScoped(Effect.forever(readOnce))
        const readsBefore = reads
        yield* Effect.yieldNow().pipe(Effect.repeat({ until: () => reads > readsBefore + 2 }))
        const previous = yield* Rebuild.cutover(doubled)
        expect(previous).toBe(1)
        const readsAfter = reads
        yield* Effect.yieldNow().pipe(Effect.repeat({ until: () => reads > readsAfter + 2 }))
        yield* Fiber.interrupt(reader)
        expect(problems).toEqual([])
        expect([...seen].sort()).toEqual([1, 2])
        expect(yield* ReadModels.live("ledger")).toEqual({ readModel: "ledger", collection: "ledger__v2", version: 2 })
        // Readers in other languages: one document in reconciler_read_models names the live collection.
        const pointer = yield* Effect.promise(() => db.collection(MongoReadModelStore.READ_MODELS).findOne({ _id: "ledger" as never }))
        expect(pointer).toMatchObject({ live: 2, collection: "ledger__v2", projection: "ledger" })

        // Cleanup: the old collection and checkpoint go; the old version still running only wrote its own collection.
        yield* Fiber.interrupt(live)
        expect(yield* Rebuild.cleanup(doubled)).toEqual([1])
        expect(yield* totals("ledger")).toEqual(new Map())
        expect(yield* store.readCheckpoint("ledger@1")).toEqual(Option.none())
        expect(yield* totals("ledger__v2")).toEqual(doubledSums)
      }).pipe(Effect.provide(ports))
    }), { timeout: 90_000 })

  it.scopedLive("a refactor (same results) cuts over with --require-identical", () =>
    Effect.gen(function*() {
      const { credit, ports, totals } = yield* setup
      for (let i = 0; i < 50; i++) yield* credit(i % DOCS, i)
      yield* Effect.gen(function*() {
        yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" })
        const exit = yield* Rebuild.run(same, {
          run: { commitInterval: "20 millis" },
          interval: "20 millis",
          cutover: { requireIdentical: true }
        }).pipe(Effect.exit)
        expect(Exit.isSuccess(exit)).toBe(true)
        expect((yield* ReadModels.live("ledger")).collection).toBe("ledger__v2")
        expect(yield* totals("ledger__v2")).toEqual(yield* totals("ledger"))
      }).pipe(Effect.provide(ports))
    }), { timeout: 60_000 })
})
