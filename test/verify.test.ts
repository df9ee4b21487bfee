/**
 * `reconciler verify` as users run it (a child process) against embedded
 * servers: it finds a tampered document and `--repair` rewrites exactly it;
 * the service's continuous verify sample counts drift; several projections are
 * verified with one read of their events; the verify totals are counters.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Context, Effect, Fiber, Layer, Metric, Schedule, Schema, Stream } from "effect"
import * as App from "../src/App.js"
import { EventSource } from "../src/EventSource.js"
import { InMemory, Projection, Telemetry, Verify } from "../src/index.js"
import { ledger } from "./support/ledger.js"
import * as Prometheus from "./support/prometheus.js"
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

/** A second projection over the ledger's category: each document's total only. */
const totals = Projection.make({
  name: "totals",
  categories: ["ledger"],
  document: Schema.Struct({ total: Schema.Number }),
  events: { Credited: Schema.Struct({ doc: Schema.String, amount: Schema.Int }) },
  key: (event) => event.data.doc,
  evolve: (doc, event) => ({ total: (doc?.total ?? 0) + event.data.amount })
})

describe("verifyAll", () => {
  it.scopedLive("verifies projections over the same categories with one read of the events, each as verify alone would", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.InMemoryEventLog
      const store = yield* InMemory.InMemoryStore
      for (let i = 0; i < 30; i++) {
        yield* log.append(`ledger-${i % 3}`, [{ type: "Credited", data: { doc: `doc-${i % 6}`, amount: i } }])
      }
      yield* App.runUntilCaughtUp([ledger, totals], { commitInterval: "5 millis" })
      const doc = store.documents("totals").get("doc-2")!
      yield* store.port.write({
        collection: "totals",
        writes: [{ id: doc.id, expectedVersion: doc.meta.version, body: { total: -1 }, meta: { ...doc.meta, version: doc.meta.version + 1 } }]
      })
      const source = yield* EventSource
      let delivered = 0
      const counting = EventSource.of({
        ...source,
        subscribe: (subscription) => source.subscribe(subscription).pipe(Stream.tap(() => Effect.sync(() => void delivered++)))
      })
      const together = yield* Verify.verifyAll([ledger, totals]).pipe(Effect.provideService(EventSource, counting))
      expect(delivered).toBe(30)
      const alone = yield* Effect.forEach([ledger, totals], (projection) => Verify.verify(projection))
      const summary = (r: Verify.Report) => ({ projection: r.projection, events: r.events, documents: r.documents, mismatches: r.mismatches })
      expect(together.map(summary)).toEqual(alone.map(summary))
      expect(together.map((r) => [r.projection, r.events, r.documents, r.mismatches.map((m) => m.id)])).toEqual([
        ["ledger", 30, 6, []],
        ["totals", 30, 6, ["doc-2"]]
      ])
    }).pipe(Effect.provide(InMemory.layer())), { timeout: 30_000 })
})

describe("the verify totals", () => {
  it.scoped("are Prometheus counters named <name>_total", () =>
    Effect.gen(function*() {
      const metrics = yield* Layer.build(Telemetry.prometheusLayer()).pipe(Effect.map(Context.get(Telemetry.PrometheusMetrics)))
      yield* Metric.incrementBy(Metric.tagged(Verify.drift, "projection", "counted"), 2)
      yield* Metric.incrementBy(Metric.tagged(Verify.sampled, "projection", "counted"), 5)
      const families = Prometheus.parse(yield* metrics.scrape)
      for (const [name, n] of [["reconciler_verify_mismatches_total", 2], ["reconciler_verify_sampled_total", 5]] as const) {
        expect(families.get(name)?.type, name).toBe("counter")
        expect(Prometheus.value(families, name, { projection: "counted" }), name).toBe(n)
      }
    }))
})
