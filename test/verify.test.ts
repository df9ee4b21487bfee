/**
 * `reconciler verify` as users run it (a child process) against embedded
 * servers: it finds a tampered document and `--repair` rewrites exactly it;
 * and the service's continuous verify sample counts drift.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Fiber, Metric, Schedule } from "effect"
import * as App from "../src/App.js"
import { InMemory, Verify } from "../src/index.js"
import { ledger } from "./support/ledger.js"
import { setup } from "./support/versions.js"

describe("verify", () => {
  it.scopedLive("finds a tampered document, names it and its field; --repair rewrites exactly it", () =>
    Effect.gen(function*() {
      const { db, ports, cli, documents, sums } = yield* setup(200, 8)
      yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" }).pipe(Effect.provide(ports))

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
