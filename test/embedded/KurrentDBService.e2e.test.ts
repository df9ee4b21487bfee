/**
 * `reconciler run` against a `kurrentdb://` connection string: the service
 * picks the KurrentDB client from the scheme and, on a server with secondary
 * indexes (the embedded one reports 25.1), reads the category from its
 * `$idx-ce-` index. The servers run in their own process (`reconciler
 * embedded`); the read model must hold every event once, in order.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { MongoClient } from "mongodb"
import { spawn, until } from "../support/child.js"
import { Client, jsonEvent } from "../support/eventStoreClient.js"

/** How long a child may take to start or stop on a loaded machine. */
const STARTUP = "120 seconds"

describe("reconciler run over kurrentdb://", () => {
  it.scopedLive("reconciles through the KurrentDB client and stops cleanly on SIGTERM", () =>
    Effect.gen(function*() {
      const servers = yield* spawn("src/bin/reconciler.ts", ["embedded", "--eventstore-port", "0", "--mongo-port", "0"])
      // generous waits: a loaded machine takes many seconds to start a tsx process
      const esdbUri = (yield* servers.line(/EventStoreDB listening on (\S+)/, STARTUP))[1]!
      const mongoUri = (yield* servers.line(/MongoDB listening on (\S+)/, STARTUP))[1]!
      const kurrentUri = esdbUri.replace(/^esdb:/, "kurrentdb:")

      const client = yield* Effect.acquireRelease(
        Effect.sync(() => Client.connectionString(esdbUri)),
        (c) => Effect.promise(() => c.dispose())
      )
      const ids: Array<{ doc: string; id: string; amount: number }> = []
      const append = (n: number) =>
        Effect.promise(async () => {
          for (let i = 0; i < n; i++) {
            const doc = `doc-${i % 7}`
            const event = jsonEvent({ type: "Credited", data: { doc, amount: i + 1 } })
            ids.push({ doc, id: event.id, amount: i + 1 })
            await client.appendToStream(`ledger-${i % 3}`, event)
          }
        })
      yield* append(60)

      const service = yield* spawn("src/bin/reconciler.ts", ["run", "--module", "test/support/ledger.ts"], {
        EVENTSTORE_CONNECTION_STRING: kurrentUri,
        MONGODB_URI: mongoUri,
        MONGODB_DATABASE: "kurrent_e2e",
        RECONCILER_EMBEDDED: undefined,
        EVENTSTORE_CLIENT: undefined
      })
      yield* service.line(/reconciling ledger/, STARTUP)
      yield* append(40)

      const mongo = yield* Effect.acquireRelease(
        Effect.promise(() => new MongoClient(mongoUri).connect()),
        (m) => Effect.promise(() => m.close())
      )
      const docs = mongo.db("kurrent_e2e").collection<{ _id: string; total: number; applied: Array<string> }>("ledger")
      const expected = new Map<string, { total: number; applied: Array<string> }>()
      for (const { doc, id, amount } of ids) {
        const d = expected.get(doc) ?? { total: 0, applied: [] }
        expected.set(doc, { total: d.total + amount, applied: [...d.applied, id] })
      }
      const readModel = Effect.promise(() => docs.find({}).sort({ _id: 1 }).toArray())
      yield* until(
        "the read model to hold every event",
        Effect.map(readModel, (all) => all.reduce((n, d) => n + d.applied.length, 0) >= ids.length),
        { attempts: 1200, interval: "100 millis" }
      )
      const all = yield* readModel
      expect(Object.fromEntries(all.map((d) => [d._id, { total: d.total, applied: d.applied }]))).toEqual(
        Object.fromEntries([...expected].sort(([a], [b]) => a.localeCompare(b)))
      )
      yield* service.kill("SIGTERM")
      expect(yield* service.exit(STARTUP)).toEqual({ code: 0, signal: null })
      // it took the KurrentDB client's path: its checkpoint is a log position (the index), not a link revision
      const checkpoint = yield* Effect.promise(() =>
        mongo.db("kurrent_e2e").collection("reconciler_checkpoints").findOne({ _id: "ledger@1" as never })
      )
      expect(BigInt(String(checkpoint?.position))).toBeGreaterThan(BigInt(ids.length))
    }), { timeout: 300_000 })
})
