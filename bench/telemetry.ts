/**
 * What tracing costs the engine, in one process: the in-memory engine over
 * 200,000 events (`--events N`), run three ways, alternating, medians of
 * `--reps R` (default 5):
 *
 * - **baseline**: the engine as a library user runs it (Effect's built-in tracer);
 * - **tracing off**: under `Telemetry.tracingLayerConfig` without
 *   `OTEL_EXPORTER_OTLP_ENDPOINT` (what the service does when it is not set);
 * - **tracing on**: under the same layer with the endpoint set, exporting
 *   every span over OTLP/HTTP to a stand-in collector on this host.
 *
 * Each repetition starts with another of the three; a full GC before each run.
 * Run: `npm run bench:telemetry` (`-- --events N --reps R`).
 */
import { ConfigProvider, Effect, Schema } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import * as EventSource from "../src/EventSource.js"
import * as InMemory from "../src/InMemory.js"
import * as Projection from "../src/Projection.js"
import * as ReadModelStore from "../src/ReadModelStore.js"
import * as Reconciler from "../src/Reconciler.js"
import * as Telemetry from "../src/Telemetry.js"

const arg = (name: string, fallback: number) => {
  const at = process.argv.indexOf(`--${name}`)
  return at >= 0 ? Number(process.argv[at + 1]) : fallback
}
const count = arg("events", 200_000)
const repetitions = arg("reps", 5)
const streams = 2_000

const accounts = Projection.make({
  name: "bench-telemetry",
  categories: ["account"],
  document: Schema.Struct({ balance: Schema.Number }),
  events: { Deposited: Schema.Struct({ account: Schema.String, amount: Schema.Number }) },
  key: (event) => event.data.account,
  evolve: (doc, event) => ({ balance: (doc?.balance ?? 0) + event.data.amount })
})

const median = (values: Array<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
const gc = () => (globalThis as { gc?: () => void }).gc?.()

/** A collector that accepts and counts what it is sent. */
const collector = () =>
  new Promise<{ url: string; received: () => number; close: () => void }>((resolve) => {
    let bytes = 0
    const server = createServer((req, res) => {
      req.on("data", (chunk: Buffer) => (bytes += chunk.length))
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end("{}"))
    })
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        received: () => bytes,
        close: () => server.close()
      }))
  })

const run = (log: InMemory.EventLog) =>
  Effect.scoped(Effect.gen(function*() {
    const store = yield* InMemory.makeStore()
    const started = performance.now()
    yield* Reconciler.run(accounts, { lanes: 4, batchSize: 500, laneBuffer: 1_000 }).pipe(
      Effect.provideService(EventSource.EventSource, log.port),
      Effect.provideService(ReadModelStore.ReadModelStore, store.port)
    )
    return count / ((performance.now() - started) / 1000)
  }))

const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

const main = Effect.gen(function*() {
  const sink = yield* Effect.promise(collector)
  const log = yield* InMemory.makeEventLog({ endAtHead: true, chunkSize: 256 })
  for (let i = 0; i < count; i++) {
    yield* log.append(`account-${i % streams}`, [{ type: "Deposited", data: { account: `a${i % streams}`, amount: 1 } }])
  }
  const ways = {
    baseline: run(log),
    "tracing off": run(log).pipe(Effect.provide(Telemetry.tracingLayerConfig), withEnv({})),
    "tracing on": run(log).pipe(Effect.provide(Telemetry.tracingLayerConfig), withEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: sink.url }))
  }
  const rates: Record<string, Array<number>> = { baseline: [], "tracing off": [], "tracing on": [] }
  yield* ways.baseline // warm-up
  // Each repetition starts with another of the three, so that none always runs after the same one.
  const order = Object.entries(ways)
  for (let rep = 0; rep < repetitions; rep++) {
    for (let i = 0; i < order.length; i++) {
      const [name, way] = order[(rep + i) % order.length]!
      gc()
      rates[name]!.push(yield* way)
    }
  }
  sink.close()
  const base = median(rates.baseline!)
  console.log(`${count} events, ${repetitions} alternating runs each, medians (events/s):`)
  for (const [name, values] of Object.entries(rates)) {
    const m = median(values)
    const low = Math.min(...values)
    const high = Math.max(...values)
    console.log(
      `  ${name.padEnd(12)} ${Math.round(m).toString().padStart(9)}  ×${(m / base).toFixed(3)} of baseline` +
        `  (runs ${Math.round(low)}–${Math.round(high)})`
    )
  }
  console.log(`  the collector received ${sink.received()} bytes of spans`)
})

Effect.runPromise(main)
