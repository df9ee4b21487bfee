/**
 * The service's HTTP endpoint, through a real HTTP client.
 *
 * 1. End to end: `reconciler run --http-port 0` in a child process against the
 *    embedded EventStoreDB and MongoDB, each in its own process (so that the
 *    store can go down and come back on its port with its journal). /metrics
 *    parses as Prometheus text and counts what was appended; /readyz follows
 *    the distance to the head; /healthz turns 503 while the store is down
 *    (after a restart did not help) and 200 again after it is back.
 * 2. In process: the service (`App.run` with an HTTP port) over the in-memory
 *    source with a subscription that goes silent without an error: /healthz
 *    turns 503, and 200 again when it delivers.
 *
 * Nothing sleeps: each step polls an endpoint until it says what is expected.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Logger } from "effect"
import { MongoClient } from "mongodb"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import * as App from "../src/App.js"
import { EventSource } from "../src/EventSource.js"
import * as InMemory from "../src/InMemory.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import { spawn, until } from "./support/child.js"
import { ledger } from "./support/ledger.js"
import * as Prometheus from "./support/prometheus.js"

interface Response {
  readonly status: number
  readonly text: string
  readonly json: () => any
}

const get = (url: string) =>
  Effect.promise(async (): Promise<Response> => {
    const response = await fetch(url)
    const text = await response.text()
    return { status: response.status, text, json: () => JSON.parse(text) }
  })

/** Polls `url` until `accept` holds for its response; returns that response. */
const poll = (what: string, url: string, accept: (response: Response) => boolean, attempts = 600) =>
  Effect.gen(function*() {
    let last: Response | undefined
    yield* until(
      what,
      get(url).pipe(Effect.map((response) => {
        last = response
        return accept(response)
      })),
      { attempts, interval: "50 millis" }
    ).pipe(Effect.mapError((e) => new Error(`${e.message}; last answer ${last?.status}: ${last?.text}`)))
    return last!
  })

const ledgerOf = (response: Response) =>
  (response.json().projections as Array<Record<string, unknown>>).find((p) => p.projection === "ledger")!

/** A total as Prometheus wants it: a `counter` family named `<name>_total`, and no other series under the bare name. */
const counter = (families: Map<string, Prometheus.Family>, name: string, labels: Record<string, string>) => {
  expect(families.get(`${name}_total`)?.type, `${name}_total is a counter`).toBe("counter")
  expect(families.has(name), `${name} is exported only as ${name}_total`).toBe(false)
  return Prometheus.value(families, `${name}_total`, labels)
}

describe("HTTP endpoint", () => {
  it.scopedLive("end to end: /metrics counts what was appended; /readyz follows the distance; /healthz 503 while the store is down, 200 after", () =>
    Effect.gen(function*() {
      const dataDir = mkdtempSync(path.join(tmpdir(), "reconciler-http-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dataDir, { recursive: true, force: true })))
      // Each server in a process of its own (`reconciler embedded` starts both; each process serves one of them here),
      // so that MongoDB can be killed and restarted alone.
      const eventStore = yield* spawn("src/bin/reconciler.ts", ["embedded", "--eventstore-port", "0", "--mongo-port", "0"])
      const eventStoreUri = (yield* eventStore.line(/EventStoreDB listening on (\S+)/))[1]!
      const mongoArgs = (port: string) => ["embedded", "--eventstore-port", "0", "--mongo-port", port, "--data-dir", path.join(dataDir, "servers")]
      const mongo = yield* spawn("src/bin/reconciler.ts", mongoArgs("0"))
      const mongoUri = (yield* mongo.line(/MongoDB listening on (mongodb:\/\/\S+)/))[1]!
      const mongoPort = /:(\d+)\//.exec(mongoUri)![1]!

      const service = yield* spawn("src/bin/reconciler.ts", ["run", "--module", "test/support/ledger.ts", "--http-port", "0"], {
        EVENTSTORE_CONNECTION_STRING: eventStoreUri,
        MONGODB_URI: mongoUri,
        MONGODB_DATABASE: "http_e2e",
        RECONCILER_EMBEDDED: undefined,
        RECONCILER_HTTP_PORT: undefined,
        RECONCILER_COMMIT_INTERVAL: "50 millis",
        RECONCILER_DRAIN_TIMEOUT: "1 second",
        RECONCILER_STALL_AFTER: "1 second",
        RECONCILER_LIVENESS_INTERVAL: "100 millis",
        RECONCILER_READY_DISTANCE: "0",
        RECONCILER_LOG_FORMAT: "json"
      })
      const url = (yield* service.line(/http endpoint listening on (http:\/\/[\d.]+:\d+) \(/))[1]!
      // logged too, as JSON
      yield* service.line(/"message":"http endpoint listening on http:\/\/127\.0\.0\.1:\d+"/)

      expect((yield* get(`${url}/healthz`)).status).toBe(200)
      expect((yield* poll("ready with nothing to do", `${url}/readyz`, (r) => r.status === 200)).json()).toMatchObject({ ok: true })
      expect((yield* get(`${url}/nothing-here`)).status).toBe(404)

      // ---- what is appended, and what /metrics counts ---------------------------------
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStoreUri)),
        (client) => Effect.promise(() => client.dispose())
      )
      const invalid = [jsonEvent({ type: "Credited", data: { doc: "doc-1", amount: "ten" } }), jsonEvent({
        type: "Credited",
        data: { doc: "doc-2" }
      })]
      const foreign = [1, 2, 3].map((n) => jsonEvent({ type: "SomethingElse", data: { n } }))
      const credits = (count: number) =>
        Array.from({ length: count }, (_, i) => jsonEvent({ type: "Credited", data: { doc: `doc-${i % 7}`, amount: 1 } }))
      yield* Effect.promise(() => client.appendToStream("ledger-1", credits(20)))
      yield* Effect.promise(() => client.appendToStream("ledger-2", [...foreign, ...invalid]))
      yield* Effect.promise(() => client.appendToStream("ledger-3", credits(10)))
      const appended = 35
      const caughtUp = yield* poll("caught up", `${url}/status`, (r) => {
        const p = ledgerOf(r)
        // the head is read every interval: wait for a read taken after the last append
        return p.behind === 0 && p.checkpoint === appended - 1 && p.head === appended - 1
      })
      expect(ledgerOf(caughtUp)).toMatchObject({
        running: true,
        head: appended - 1,
        stalled: false,
        processed: 30,
        skipped: 3,
        deadLettered: 2,
        oldestUnappliedAgeMs: 0
      })

      const metrics = yield* get(`${url}/metrics`)
      expect(metrics.status).toBe(200)
      const families = Prometheus.parse(metrics.text)
      const labels = { projection: "ledger" }
      expect(counter(families, "reconciler_events_processed", labels)).toBe(30)
      expect(counter(families, "reconciler_events_skipped", labels)).toBe(3)
      expect(counter(families, "reconciler_events_dead_lettered", labels)).toBe(2)
      expect(Prometheus.value(families, "reconciler_positions_behind_head", labels)).toBe(0)
      expect(Prometheus.value(families, "reconciler_head_position", labels)).toBe(appended - 1)
      expect(Prometheus.value(families, "reconciler_head_stalled", labels)).toBe(0)
      expect(Prometheus.value(families, "reconciler_running", labels)).toBe(1)
      expect(families.get("reconciler_batch_size")?.type).toBe("histogram")

      // a warning per dead letter, naming it, with the whole reason
      for (const event of invalid) {
        const warning = yield* service.line(new RegExp(`dead-lettered: projection ledger@1, event ${event.id}`))
        expect(warning.input).toMatch(/"logLevel":"WARN"/)
        expect(warning.input).toMatch(/stream ledger-2 revision [34]/)
      }
      // the whole reason, down to the line that says what was wrong
      const messages = service.output().split("\n").flatMap((line) => line.startsWith("{") ? [JSON.parse(line).message as string] : [])
      expect(messages.some((m) => m.startsWith("dead-lettered") && m.endsWith('Expected number, actual "ten"'))).toBe(true)
      // no connection string in any line
      expect(service.output()).not.toContain(mongoUri)
      expect(service.output()).not.toContain(eventStoreUri)

      // ---- the store goes down ---------------------------------------------------------
      yield* mongo.kill("SIGKILL")
      yield* mongo.exit()
      yield* Effect.promise(() => client.appendToStream("ledger-4", credits(10)))
      const notReady = yield* poll("not ready while behind", `${url}/readyz`, (r) => r.status === 503 && ledgerOf(r).behind === 10)
      expect(ledgerOf(notReady).reason).toMatch(/10 positions behind the head/)
      const unhealthy = yield* poll("unhealthy while the store is down", `${url}/healthz`, (r) => r.status === 503)
      expect(ledgerOf(unhealthy)).toMatchObject({ ok: false, behind: 10 })
      expect(ledgerOf(unhealthy).reason).toMatch(/stalled for \d+ ms, 10 positions behind the head, through \d+ restart/)
      const stalled = ledgerOf(yield* poll("stalled in /status", `${url}/status`, (r) => ledgerOf(r).unhealthy === true))
      expect(stalled).toMatchObject({ stalled: true, unhealthy: true })
      expect(stalled.restarts).toBeGreaterThanOrEqual(1)
      expect(stalled.oldestUnappliedAgeMs).toBeGreaterThan(0)
      const during = Prometheus.parse((yield* get(`${url}/metrics`)).text)
      expect(Prometheus.value(during, "reconciler_head_stalled", labels)).toBe(1)
      expect(Prometheus.value(during, "reconciler_positions_behind_head", labels)).toBe(10)
      expect(counter(during, "reconciler_stalls", labels)).toBeGreaterThanOrEqual(1)
      yield* service.line(/ledger: stalled: 10 positions behind the head/)

      // ---- and comes back on its port, with its journal ---------------------------------
      const again = yield* spawn("src/bin/reconciler.ts", mongoArgs(mongoPort))
      yield* again.line(/MongoDB listening on/)
      yield* poll("healthy after the store is back", `${url}/healthz`, (r) => r.status === 200, 1200)
      const ready = yield* poll("ready after the store is back", `${url}/readyz`, (r) => r.status === 200, 1200)
      expect(ledgerOf(ready)).toMatchObject({ ok: true, behind: 0 })
      const after = Prometheus.parse((yield* get(`${url}/metrics`)).text)
      // Writes sent while the store was down may land when it is back, after the run that sent them was
      // restarted: the next run finds them applied (duplicates). The read model has each event once.
      expect(
        counter(after, "reconciler_events_processed", labels)! + counter(after, "reconciler_duplicates_ignored", labels)!
      ).toBeGreaterThanOrEqual(40)
      const docs = yield* Effect.acquireUseRelease(
        Effect.promise(() => new MongoClient(mongoUri).connect()),
        (mongo) => Effect.promise(() => mongo.db("http_e2e").collection("ledger").find({}).toArray()),
        (mongo) => Effect.promise(() => mongo.close())
      )
      const applied = docs.flatMap((doc) => doc.applied as Array<string>)
      expect(applied.length).toBe(40)
      expect(new Set(applied).size).toBe(40)
      expect(docs.reduce((sum, doc) => sum + (doc.total as number), 0)).toBe(40)
      expect(Prometheus.value(after, "reconciler_head_stalled", labels)).toBe(0)
    }), { timeout: 180_000 })

  it.scopedLive("in process: /healthz turns 503 when the subscription goes silent without an error, 200 when it delivers again", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ faults: { silentAfter: 1 } })
      const store = yield* InMemory.makeStore()
      yield* log.append("ledger-1", Array.from({ length: 51 }, () => ({ type: "Credited", data: { doc: "doc-1", amount: 1 } })))
      const lines: Array<string> = []
      const capture = Logger.replace(
        Logger.defaultLogger,
        Logger.make(({ message }) => void lines.push(Array.isArray(message) ? message.join(" ") : String(message)))
      )
      const service = yield* App.run([ledger], {
        httpPort: 0,
        httpHost: "127.0.0.1",
        stallAfter: "300 millis",
        livenessInterval: "50 millis",
        commitInterval: "20 millis",
        readyDistance: 0
      }).pipe(
        Effect.provide(capture),
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port),
        Effect.forkScoped
      )
      yield* until("the endpoint's address", Effect.sync(() => lines.some((l) => l.startsWith("http endpoint listening on"))))
      const url = /listening on (\S+)/.exec(lines.find((l) => l.startsWith("http endpoint listening on"))!)![1]!

      const unhealthy = yield* poll("unhealthy while silent", `${url}/healthz`, (r) => r.status === 503)
      // One delivery, then silence: applied and committed (50 behind), or not yet when the stall is judged (52).
      expect(ledgerOf(unhealthy)).toMatchObject({ ok: false })
      expect([50, 52]).toContain(ledgerOf(unhealthy).behind)
      // (A restart drains what a lane held, which is movement: the stall may begin again before it shows.)
      const status = ledgerOf(yield* poll("stalled in /status", `${url}/status`, (r) => ledgerOf(r).unhealthy === true))
      expect(status).toMatchObject({ head: 51, stalled: true, unhealthy: true })
      expect(status.restarts).toBeGreaterThanOrEqual(1)
      expect(lines.some((l) => /ledger: stalled: 5[02] positions behind the head \(51\)/.test(l))).toBe(true)
      expect(lines.some((l) => /ledger: restarting the run to resubscribe/.test(l))).toBe(true)

      log.resume()
      yield* poll("healthy once it delivers", `${url}/healthz`, (r) => r.status === 200)
      const ready = yield* poll("ready once caught up", `${url}/readyz`, (r) => r.status === 200)
      expect(ledgerOf(ready)).toMatchObject({ ok: true, behind: 0 })
      expect(store.checkpoint("ledger@1")).toBe(51n)
      yield* Fiber.interrupt(service)
    }))
})
