/**
 * `reconciler dead-letters show | retry | skip` as a user runs them (child
 * processes against the embedded servers, through the real clients): what they
 * print, what they change in MongoDB, and their exit codes.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import { MongoClient } from "mongodb"
import * as App from "../src/App.js"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import { runBin as runCli } from "./support/child.js"
import { ledger } from "./support/ledger.js"

describe("reconciler dead-letters show | retry | skip", () => {
  it.scopedLive("show a letter, retry after a fix (held events follow in order), skip with a reason; exit codes", () =>
    Effect.gen(function*() {
      const eventStore = yield* EventStoreServer.make()
      const mongo = yield* MongoServer.make()
      const env = { EVENTSTORE_CONNECTION_STRING: eventStore.connectionString, MONGODB_URI: mongo.uri, MONGODB_DATABASE: "dl_test" }
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
        (client) => Effect.promise(() => client.dispose())
      )
      // doc-1 explodes, then has two more events (held); the event of ledger-3 does not decode.
      const events = [
        ["ledger-1", "Credited", { doc: "doc-1", amount: 5 }],
        ["ledger-1", "Exploded", { doc: "doc-1" }],
        ["ledger-1", "Credited", { doc: "doc-1", amount: 1 }],
        ["ledger-3", "Credited", { doc: 42, amount: "lots" }],
        ["ledger-2", "Credited", { doc: "doc-2", amount: 3 }],
        ["ledger-1", "Credited", { doc: "doc-1", amount: 2 }]
      ] as const
      for (const [stream, type, data] of events) {
        yield* Effect.promise(() => client.appendToStream(stream, jsonEvent({ type, data: data as never })))
      }
      const ports = Layer.merge(
        EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
        MongoReadModelStore.layer({ uri: mongo.uri, database: "dl_test" })
      )
      yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" }).pipe(Effect.provide(ports))
      const mongoClient = yield* Effect.acquireRelease(
        Effect.promise(() => new MongoClient(mongo.uri).connect()),
        (m) => Effect.promise(() => m.close())
      )
      const db = mongoClient.db("dl_test")
      const doc = (id: string) => Effect.promise(() => db.collection("ledger").findOne({ _id: id as never }))
      // Quarantined: doc-1 stopped before its poison event; doc-2 moved on.
      expect((yield* doc("doc-1"))?.total).toBe(5)
      expect((yield* doc("doc-2"))?.total).toBe(3)
      const letters = yield* Effect.promise(() => db.collection(MongoReadModelStore.DEAD_LETTERS).find().toArray())
      const exploded = String(letters.find((l) => l.document === "doc-1")!._id)
      const invalid = String(letters.find((l) => l.document === undefined)!._id)

      const module = ["-m", "test/support/ledger.ts"]
      const fixed = ["-m", "test/support/ledger-fixed.ts"]

      // show: the event, its reason and what is held behind it.
      const show = yield* runCli(["dead-letters", "show", ...module, exploded], env)
      expect(show.code, show.output).toBe(0)
      expect(show.output).toContain(`id:           ${exploded}`)
      expect(show.output).toMatch(/document:\s+doc-1/)
      expect(show.output).toMatch(/position:\s+ledger-1@1/)
      expect(show.output).toMatch(/reason:\s+evolve threw on Exploded: Error: exploded on doc-1/)
      expect(show.output).toContain(`data:         {"doc":"doc-1"}`)
      expect(show.output).toMatch(/held events:\s+2\n\s+ledger-1@2 Credited .*\n\s+ledger-1@3 Credited/)
      // An unknown id: exit 1, named.
      const unknown = yield* runCli(["dead-letters", "show", ...module, "0000000000000000"], env)
      expect(unknown.code).toBe(1)
      expect(unknown.output).toContain("no open dead letter with id 0000000000000000")

      // Retry and skip must be told what to act on: exit 2.
      const unnamed = yield* runCli(["dead-letters", "retry", ...module], env)
      expect(unnamed.code).toBe(2)
      expect(unnamed.output).toMatch(/name the letters .* or pass --all/)

      // Unchanged projection: both fail again, the letters stay, exit 1; doc-1 does not move.
      const again = yield* runCli(["dead-letters", "retry", ...module, "--all"], env)
      expect(again.code, again.output).toBe(1)
      expect(again.output).toContain(`${exploded} (ledger@1, doc-1, ledger-1@1): failed again`)
      expect(again.output).toContain("0 of 2 letter(s) retried and released")
      expect((yield* doc("doc-1"))?.total).toBe(5)

      // After the fix: the poison event applies, then the held ones in order; doc-1 is released.
      const retried = yield* runCli(["dead-letters", "retry", ...fixed, exploded], env)
      expect(retried.code, retried.output).toBe(0)
      expect(retried.output).toContain(`${exploded} (ledger@1, doc-1, ledger-1@1): released, 3 event(s) applied`)
      const doc1 = yield* doc("doc-1")
      expect(doc1?.total).toBe(8)
      expect(doc1?.applied).toHaveLength(4)

      // Skip by decision, with who and why: exit 0; the letter ends, recorded.
      const skipped = yield* runCli(["dead-letters", "skip", ...fixed, invalid, "--by", "alice", "--reason", "bad producer, fixed upstream"], env)
      expect(skipped.code, skipped.output).toBe(0)
      expect(skipped.output).toContain("1 of 1 letter(s) skipped and released")
      const resolved = yield* Effect.promise(() => db.collection(MongoReadModelStore.RESOLVED_LETTERS).find().toArray())
      expect(resolved.map((r) => [String(r._id), r.action, r.by, r.reason ?? null]).sort()).toEqual(
        [[exploded, "retried", expect.any(String), null], [invalid, "skipped", "alice", "bad producer, fixed upstream"]].sort()
      )

      // Every letter ended: none open, nothing held.
      const list = yield* runCli(["dead-letters", "list", ...fixed], env)
      expect(list.code).toBe(0)
      expect(list.output).toContain("0 dead letters")
      expect(yield* Effect.promise(() => db.collection(MongoReadModelStore.HELD_EVENTS).countDocuments())).toBe(0)
    }), { timeout: 120_000 })
})
