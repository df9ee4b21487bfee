/**
 * Competing consumers end to end: three `reconciler run --mode persistent`
 * processes share one RoundRobin consumer group (made beforehand, with a short
 * message timeout, as a user may have made it) on the embedded servers, through
 * the real clients, while events keep coming and instances are SIGKILLed or
 * SIGTERMed at random and restarted. The read model converges to the reference
 * fold: every document holds each of its events once, each stream's in order.
 */
import { EventStoreDBClient, jsonEvent, persistentSubscriptionToStreamSettingsFromDefaults, ROUND_ROBIN, START } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { MongoClient } from "mongodb"
import type { Child } from "./support/child.js"
import { spawn, until } from "./support/child.js"
import { propertySeed } from "./support/ledger.js"

const DOCS = 12
const STREAMS = 10
const EVENTS = 800

describe("persistent mode, three instances over a RoundRobin group", () => {
  it.scopedLive("random kills and restarts: the read model converges to the reference fold, each stream in order, nothing twice", () =>
    Effect.gen(function*() {
      const seed = propertySeed("three instances")
      let n = seed >>> 0
      const next = (max: number) => (n = (Math.imul(n, 1103515245) + 12345) >>> 0) % max

      const servers = yield* spawn("src/bin/reconciler.ts", ["embedded", "--eventstore-port", "0", "--mongo-port", "0"])
      const eventStoreUri = (yield* servers.line(/EventStoreDB listening on (\S+)/))[1]!
      const mongoUri = (yield* servers.line(/MongoDB listening on (\S+)/))[1]!
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStoreUri)),
        (client) => Effect.promise(() => client.dispose())
      )
      const mongo = yield* Effect.acquireRelease(
        Effect.promise(() => new MongoClient(mongoUri, { useBigInt64: true }).connect()),
        (mongo) => Effect.promise(() => mongo.close())
      )
      const db = mongo.db("persistent_e2e")
      // The group the instances share: RoundRobin, 1 s message timeout. The adapter uses it as it is (and warns).
      yield* Effect.promise(() =>
        client.createPersistentSubscriptionToStream(
          "$ce-ledger",
          "ledger@1",
          persistentSubscriptionToStreamSettingsFromDefaults({
            startFrom: START,
            resolveLinkTos: true,
            consumerStrategyName: ROUND_ROBIN,
            messageTimeout: 1_000
          })
        )
      )
      const env = {
        EVENTSTORE_CONNECTION_STRING: eventStoreUri,
        MONGODB_URI: mongoUri,
        MONGODB_DATABASE: "persistent_e2e",
        RECONCILER_LANES: "3",
        RECONCILER_BATCH_SIZE: "10",
        RECONCILER_EMBEDDED: undefined
      }
      const service = () =>
        spawn("src/bin/reconciler.ts", ["run", "--module", "test/support/ledger.ts", "--mode", "persistent"], env).pipe(
          Effect.tap((child) => child.line(/reconciling ledger/, "120 seconds"))
        )

      const appended: Array<{ id: string; stream: string; type: string; data: { doc?: string; amount?: number; a?: string; b?: string } }> = []
      const append = (count: number) =>
        Effect.forEach(Array.from({ length: count / 5 }), () => {
          const stream = `ledger-${next(STREAMS)}`
          const events = Array.from({ length: 5 }, () =>
            next(5) === 0
              ? jsonEvent({ type: "Linked", data: { a: `doc-${next(DOCS)}`, b: `doc-${next(DOCS)}` } })
              : jsonEvent({ type: "Credited", data: { doc: `doc-${next(DOCS)}`, amount: 1 + next(100) } }))
          for (const e of events) appended.push({ id: e.id, stream, type: e.type, data: e.data as never })
          return Effect.promise(() => client.appendToStream(stream, events)).pipe(Effect.zipRight(Effect.sleep("5 millis")))
        }, { discard: true })

      const instances: Array<Child> = []
      for (let i = 0; i < 3; i++) instances.push(yield* service())
      const writer = yield* Effect.fork(append(EVENTS))
      // Random kills and stops while events come, each followed by a restart.
      const outages: Array<string> = []
      for (let k = 0; k < 4; k++) {
        yield* Effect.sleep(`${300 + next(1200)} millis`)
        const i = next(3)
        const signal = next(4) === 0 ? "SIGTERM" : "SIGKILL"
        outages.push(`${signal} instance ${i}`)
        yield* instances[i]!.kill(signal)
        yield* instances[i]!.exit()
        instances[i] = yield* service()
      }
      console.log(`[e2e] outages: ${outages.join(", ")}`)
      yield* Fiber.join(writer)

      // The reference fold: per document its total and its events.
      const expected = new Map<string, { total: number; applied: Array<string> }>()
      const credit = (doc: string, id: string, amount: number) => {
        const current = expected.get(doc) ?? { total: 0, applied: [] }
        expected.set(doc, { total: current.total + amount, applied: [...current.applied, id] })
      }
      for (const e of appended) {
        if (e.type === "Credited") credit(e.data.doc!, e.id, e.data.amount!)
        else {
          credit(e.data.a!, e.id, 0)
          if (e.data.b !== e.data.a) credit(e.data.b!, e.id, 0)
        }
      }
      const parts = [...expected.values()].reduce((sum, doc) => sum + doc.applied.length, 0)
      const readModel = Effect.promise(() => db.collection("ledger").find({}).toArray())
      const started = Date.now()
      let polls = 0
      yield* until(
        "the read model to hold every event",
        Effect.map(readModel, (docs) => {
          const applied = docs.reduce((sum, d) => sum + (d.applied as Array<string>).length, 0)
          if (++polls % 50 === 0) console.log(`[e2e] ${applied} of ${parts} document parts after ${Date.now() - started} ms`)
          return applied >= parts
        }),
        { attempts: 1800, interval: "100 millis" }
      )
      console.log(`[e2e] converged ${Date.now() - started} ms after the last append`)
      for (const instance of instances) yield* instance.kill("SIGTERM")
      for (const instance of instances) expect(yield* instance.exit()).toEqual({ code: 0, signal: null })

      const model = new Map((yield* readModel).map((d) => [String(d._id), { total: d.total as number, applied: d.applied as Array<string> }]))
      expect([...model.keys()].sort()).toEqual([...expected.keys()].sort())
      const order = new Map(appended.map((e, i) => [e.id, { stream: e.stream, index: i }]))
      for (const [id, doc] of expected) {
        const actual = model.get(id)!
        expect(actual.total, `${id} total`).toBe(doc.total)
        expect([...actual.applied].sort(), `${id} events, each once`).toEqual([...doc.applied].sort())
        const last = new Map<string, number>()
        for (const eventId of actual.applied) {
          const { index, stream } = order.get(eventId)!
          expect(index, `${id}: ${eventId} applied after a later event of ${stream}`).toBeGreaterThan(last.get(stream) ?? -1)
          last.set(stream, index)
        }
      }
      console.log(`[e2e] ${appended.length} events, ${parts} document parts: converged after ${outages.length} outages`)
    }), { timeout: 480_000 })
})
