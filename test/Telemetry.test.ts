/**
 * Telemetry: Effect metrics rendered as Prometheus text (parsed strictly), and
 * the engine's spans exported over OTLP/HTTP to a collector when
 * `OTEL_EXPORTER_OTLP_ENDPOINT` is set — here a local HTTP server standing in
 * for one — and nothing installed when it is not.
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Context, Effect, Layer, Metric } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { EventSource } from "../src/EventSource.js"
import * as InMemory from "../src/InMemory.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import * as Reconciler from "../src/Reconciler.js"
import * as Telemetry from "../src/Telemetry.js"
import { ledger } from "./support/ledger.js"
import * as Prometheus from "./support/prometheus.js"

/** A stand-in collector: every request's path and body. */
const collector = Effect.acquireRelease(
  Effect.async<{ readonly url: string; readonly requests: Array<{ path: string; body: string }>; close: () => void }>((resume) => {
    const requests: Array<{ path: string; body: string }> = []
    const server = createServer((req, res) => {
      let body = ""
      req.setEncoding("utf8")
      req.on("data", (chunk: string) => (body += chunk))
      req.on("end", () => {
        requests.push({ path: req.url ?? "", body })
        res.writeHead(200, { "content-type": "application/json" }).end("{}")
      })
    })
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo
      resume(Effect.succeed({ url: `http://127.0.0.1:${port}`, requests, close: () => server.close() }))
    })
  }),
  (c) => Effect.sync(c.close)
)

const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

/** The engine over the in-memory ports, until its finite source ends. */
const runLedger = Effect.gen(function*() {
  const log = yield* InMemory.makeEventLog({ endAtHead: true })
  const store = yield* InMemory.makeStore()
  yield* log.append("ledger-1", Array.from({ length: 5 }, () => ({ type: "Credited", data: { doc: "doc-1", amount: 1 } })))
  yield* Reconciler.run(ledger, { commitInterval: "10 millis" }).pipe(
    Effect.provideService(EventSource, log.port),
    Effect.provideService(ReadModelStore, store.port)
  )
})

describe("Telemetry", () => {
  it.scoped("Prometheus text of every Effect metric, tags as labels", () =>
    Effect.gen(function*() {
      const metrics = yield* Layer.build(Telemetry.prometheusLayer()).pipe(Effect.map(Context.get(Telemetry.PrometheusMetrics)))
      const counter = Metric.counter("telemetry_test_events", { description: "events counted by the test", incremental: true })
      const gauge = Metric.gauge("telemetry_test_behind", { description: "a gauge" })
      yield* Metric.incrementBy(Metric.tagged(counter, "projection", "a"), 3)
      yield* Metric.incrementBy(Metric.tagged(counter, "projection", "b\"quoted\""), 2)
      yield* Metric.set(Metric.tagged(gauge, "projection", "a"), 7)
      const families = Prometheus.parse(yield* metrics.scrape)
      expect(families.get("telemetry_test_events_total")).toMatchObject({ type: "counter", help: "events counted by the test" })
      expect(Prometheus.value(families, "telemetry_test_events_total", { projection: "a" })).toBe(3)
      expect(Prometheus.value(families, "telemetry_test_events_total", { projection: "b\"quoted\"" })).toBe(2)
      expect(families.get("telemetry_test_behind")?.type).toBe("gauge")
      expect(Prometheus.value(families, "telemetry_test_behind", { projection: "a" })).toBe(7)
    }))

  it.scoped("the engine's totals are Prometheus counters named <name>_total, counting what the run did", () =>
    Effect.gen(function*() {
      const metrics = yield* Layer.build(Telemetry.prometheusLayer()).pipe(Effect.map(Context.get(Telemetry.PrometheusMetrics)))
      const projection = { projection: "ledger" }
      // The registry is the process's: counts are compared before and after this run.
      const totals = (text: string) => {
        const families = Prometheus.parse(text)
        return Object.fromEntries(
          ["reconciler_events_processed", "reconciler_events_skipped", "reconciler_events_dead_lettered"].map((name) => {
            expect(families.has(name), `${name} has no series under its bare name`).toBe(false)
            const family = families.get(`${name}_total`)
            if (family !== undefined) expect(family.type).toBe("counter")
            return [name, Prometheus.value(families, `${name}_total`, projection) ?? 0]
          })
        )
      }
      const before = totals(yield* metrics.scrape)
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      yield* log.append("ledger-1", [
        ...Array.from({ length: 4 }, () => ({ type: "Credited", data: { doc: "doc-1", amount: 1 } })),
        { type: "Forgotten", data: {} },
        { type: "Credited", data: { doc: "doc-2", amount: "ten" } }
      ])
      yield* Reconciler.run(ledger, { commitInterval: "10 millis" }).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port)
      )
      const text = yield* metrics.scrape
      expect(text).toMatch(/^# TYPE reconciler_events_processed_total counter$/m)
      const after = totals(text)
      expect(after.reconciler_events_processed! - before.reconciler_events_processed!).toBe(4)
      expect(after.reconciler_events_skipped! - before.reconciler_events_skipped!).toBe(1)
      expect(after.reconciler_events_dead_lettered! - before.reconciler_events_dead_lettered!).toBe(1)
    }))

  it.scopedLive("with OTEL_EXPORTER_OTLP_ENDPOINT: the engine's spans reach the collector over OTLP/HTTP", () =>
    Effect.gen(function*() {
      const sink = yield* collector
      // Provided (not built: the tracer is a fiber setting), its scope closes and flushes before the requests are read.
      yield* runLedger.pipe(
        Effect.provide(Telemetry.tracingLayerConfig),
        withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: `${sink.url}/`, OTEL_SERVICE_NAME: "reconciler-test" })
      )
      const traces = sink.requests.filter((r) => r.path === "/v1/traces")
      expect(traces.length).toBeGreaterThan(0)
      const body = traces.map((r) => r.body).join("\n")
      expect(body).toContain("Reconciler.run")
      expect(body).toContain("reconciler-test")
    }))

  it.scopedLive("without an endpoint nothing is installed: Effect's own tracer, no request", () =>
    Effect.gen(function*() {
      const sink = yield* collector
      const before = yield* Effect.tracer
      const during = yield* Effect.tracer.pipe(Effect.provide(Telemetry.tracingLayerConfig), withEnv({}))
      expect(during).toBe(before)
      yield* runLedger.pipe(Effect.provide(Telemetry.tracingLayerConfig), withEnv({}))
      expect(sink.requests).toEqual([])
    }))
})
