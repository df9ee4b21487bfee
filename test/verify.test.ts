/**
 * `reconciler verify` and `reconciler rebuild` as users run them (child
 * processes) against embedded servers: verify finds a tampered document and
 * `--repair` rewrites exactly it; a rebuild killed with SIGKILL resumes from its
 * checkpoint and converges; diff shows the change, `cutover --require-identical`
 * refuses it, `cutover --cleanup` switches and removes the old version.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Fiber, Layer, Metric, Option, Redacted, Schedule } from "effect"
import { MongoClient } from "mongodb"
import * as App from "../src/App.js"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import { InMemory, Verify } from "../src/index.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import { spawn } from "./support/child.js"
import { ledger } from "./support/ledger.js"

const BIN = "src/bin/reconciler.ts"
const DATABASE = "verify_test"
const clean = { EVENTSTORE_CONNECTION_STRING: undefined, MONGODB_URI: undefined, MONGODB_DATABASE: undefined, RECONCILER_EMBEDDED: undefined }

const setup = (events: number, docs: number) =>
  Effect.gen(function*() {
    const eventStore = yield* EventStoreServer.make()
    const mongo = yield* MongoServer.make({ transactionLifetimeLimitSeconds: 2 })
    const env = { ...clean, EVENTSTORE_CONNECTION_STRING: eventStore.connectionString, MONGODB_URI: mongo.uri, MONGODB_DATABASE: DATABASE }
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
      (client) => Effect.promise(() => client.dispose())
    )
    const db = yield* Effect.acquireRelease(
      Effect.promise(() => new MongoClient(mongo.uri).connect()),
      (m) => Effect.promise(() => m.close())
    ).pipe(Effect.map((m) => m.db(DATABASE)))
    const sums = new Map<string, number>()
    // Appended in pages of 100 events per stream append.
    for (let start = 0; start < events; start += 100) {
      const page = Array.from({ length: Math.min(100, events - start) }, (_, k) => start + k)
      for (const stream of [0, 1, 2]) {
        const mine = page.filter((i) => i % 3 === stream)
        yield* Effect.promise(() =>
          client.appendToStream(`ledger-${stream}`, mine.map((i) => {
            const doc = `doc-${i % docs}`
            const amount = (i % 5) + 1
            sums.set(doc, (sums.get(doc) ?? 0) + amount)
            return jsonEvent({ type: "Credited", data: { doc, amount } })
          }))
        )
      }
    }
    const ports = Layer.merge(
      EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
      MongoReadModelStore.layer({ uri: mongo.uri, database: DATABASE })
    )
    const cli = (args: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const child = yield* spawn(BIN, args, env)
        const exit = yield* child.exit("60 seconds")
        return { code: exit.code, output: child.output() }
      })
    const documents = (collection: string) =>
      Effect.promise(() => db.collection(collection).find({}).toArray()).pipe(
        Effect.map((docs) => new Map(docs.map((d) => [String(d._id), d])))
      )
    return { env, db, sums, ports, cli, documents }
  })

describe("verify", () => {
  it.scopedLive("finds a tampered document, names it and its field; --repair rewrites exactly it", () =>
    Effect.gen(function*() {
      const { db, ports, cli, documents, sums } = yield* setup(200, 8)
      yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" }).pipe(Effect.provide(ports))

      const clean = yield* cli(["verify", "--module", "test/support/ledger.ts"])
      expect(clean.output).toContain("verified 8 documents, 0 mismatches")
      expect(clean.code).toBe(0)

      yield* Effect.promise(() => db.collection("ledger").updateOne({ _id: "doc-3" as never }, { $inc: { total: 1000 } }))
      const before = yield* documents("ledger")
      const found = yield* cli(["verify", "--module", "test/support/ledger.ts"])
      expect(found.code).toBe(1)
      expect(found.output).toContain("verified 8 documents, 1 mismatch")
      expect(found.output).toContain(`doc-3: total: ${sums.get("doc-3")! + 1000} (stored) ≠ ${sums.get("doc-3")} (events)`)

      const repaired = yield* cli(["verify", "--module", "test/support/ledger.ts", "--repair"])
      expect(repaired.output).toContain("repaired 1: doc-3")
      expect(repaired.code).toBe(0)
      const after = yield* documents("ledger")
      for (const [id, doc] of before) {
        if (id === "doc-3") {
          expect(after.get(id)!.total).toBe(sums.get("doc-3"))
          expect(after.get(id)!._reconciler.version).toBe(doc._reconciler.version + 1)
        } else {
          expect(after.get(id)).toEqual(doc)
        }
      }
      const again = yield* cli(["verify", "--module", "test/support/ledger.ts"])
      expect(again.output).toContain("verified 8 documents, 0 mismatches")
      expect(again.code).toBe(0)
      // The scratch collections of the folds are gone.
      const names = (yield* Effect.promise(() => db.listCollections({}, { nameOnly: true }).toArray())).map((c) => c.name)
      expect(names.filter((n) => n.includes("__verify"))).toEqual([])
    }), { timeout: 120_000 })
})

describe("rebuild", () => {
  it.scopedLive("killed with SIGKILL mid-way, resumed: converges; diff, a refused and a real cut-over", () =>
    Effect.gen(function*() {
      const { env, ports, cli, documents, sums } = yield* setup(2000, 20)
      yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" }).pipe(Effect.provide(ports))

      // One event per batch, so that the kill lands mid-way.
      const child = yield* spawn(BIN, [
        "rebuild", "--module", "test/support/ledger-v2.ts", "--projection", "ledger", "--batch-size", "1", "--lanes", "1"
      ], { ...env, RECONCILER_COMMIT_INTERVAL: "50 millis" })
      yield* child.line(/^\s*[1-9]\d?% ledger@2 → ledger__v2: position \d+/, "60 seconds")
      yield* child.kill("SIGKILL")
      const killed = yield* child.exit()
      expect(killed.signal).toBe("SIGKILL")
      const partial = yield* ReadModelStore.pipe(Effect.flatMap((s) => s.readCheckpoint("ledger@2")), Effect.provide(ports))
      expect(Option.isSome(partial) && partial.value < 1999n).toBe(true)

      const module = ["--module", "test/support/ledger-v2.ts", "--projection", "ledger"]
      const resumed = yield* cli(["rebuild", ...module])
      expect(resumed.output).toMatch(/rebuilt ledger@2 into ledger__v2 up to position \d+/)
      expect(resumed.code).toBe(0)
      const rebuilt = yield* documents("ledger__v2")
      expect(new Map([...rebuilt].map(([id, d]) => [id, d.total]))).toEqual(new Map([...sums].map(([id, s]) => [id, 2 * s])))

      // The deliberate change shows in diff, and --require-identical refuses it.
      const diff = yield* cli(["diff", ...module, "--sample", "2"])
      expect(diff.output).toContain("ledger: v1 (ledger) vs v2 (ledger__v2): 20 documents, 20 differing, 0 added, 0 removed")
      expect(diff.output).toMatch(/doc-\d+: total: (\d+) \(v1\) ≠ \d+ \(v2\)/)
      expect(diff.code).toBe(1)
      const identical = yield* cli(["cutover", ...module, "--require-identical"])
      expect(identical.output).toContain("versions 1 and 2 of ledger differ (20 differing, 0 added, 0 removed): not cutting over")
      expect(identical.code).toBe(1)

      const cutover = yield* cli(["cutover", ...module, "--cleanup"])
      expect(cutover.output).toContain("cut over ledger: readers now see version 2 (was 1)")
      expect(cutover.code).toBe(0)
      expect((yield* documents("ledger")).size).toBe(0)
      const verified = yield* cli(["verify", "--module", "test/support/ledger-v2.ts"])
      expect(verified.output).toContain("ledger@2 (ledger__v2): verified 20 documents, 0 mismatches")
    }), { timeout: 180_000 })
})

describe("the service's verify sample", () => {
  it.scopedLive("re-checks recently written documents continuously and counts drift", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.InMemoryEventLog
      const store = yield* InMemory.InMemoryStore
      for (let i = 0; i < 30; i++) {
        yield* log.append(`ledger-${i % 3}`, [{ type: "Credited", data: { doc: `doc-${i % 6}`, amount: i } }])
      }
      const drift = Metric.tagged(Verify.drift, "projection", "ledger")
      const sampled = Metric.tagged(Verify.sampled, "projection", "ledger")
      const countOf = (metric: typeof drift) => Effect.map(Metric.value(metric), (state) => state.count)
      const service = yield* Effect.forkScoped(App.run([ledger], { commitInterval: "5 millis" }).pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([
          ["RECONCILER_VERIFY_SAMPLE", "3"],
          ["RECONCILER_VERIFY_INTERVAL", "5 millis"]
        ])))
      ))
      yield* App.awaitCaughtUpWhile(service, [ledger], { interval: "5 millis" })
      // Passes run and find nothing wrong.
      const clean = yield* countOf(sampled)
      yield* countOf(sampled).pipe(Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (n) => n >= clean + 6 }))
      expect(yield* countOf(drift)).toBe(0)

      // The most recently written document drifts (a guarded write behind the engine's back).
      const recent = [...store.documents("ledger").values()].sort((a, b) => Number(b.meta.position! - a.meta.position!))[0]!
      yield* store.port.write({
        collection: "ledger",
        writes: [{ id: recent.id, expectedVersion: recent.meta.version, body: { ...recent.body, total: -1 }, meta: { ...recent.meta, version: recent.meta.version + 1 } }]
      })
      yield* countOf(drift).pipe(Effect.repeat({ schedule: Schedule.spaced("5 millis"), until: (n) => n >= 1 }))
      yield* Fiber.interrupt(service)
    }).pipe(Effect.provide(InMemory.layer())), { timeout: 30_000 })
})
