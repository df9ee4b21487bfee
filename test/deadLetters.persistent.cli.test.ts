/**
 * `reconciler dead-letters retry | skip` in persistent mode, as a user runs them
 * (child processes, real clients, embedded servers) while the service runs: a
 * poison event quarantines its document and is parked in the consumer group;
 * retry (after a fix) and skip end the letters, release the documents with
 * their held events in order, and replay the group's parked messages, whose
 * copies of ended letters the running engine acknowledges without applying
 * them again. Exit codes as in catch-up mode.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Redacted, Schedule } from "effect"
import { MongoClient } from "mongodb"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import { Reconciler } from "../src/index.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import { runBin as runCli } from "./support/child.js"
import { ledger } from "./support/ledger.js"

/** Polls until `check` holds (the engine and the group work asynchronously). */
const eventually = <A>(check: Effect.Effect<A, Error>) =>
  check.pipe(Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.intersect(Schedule.recurs(300)))))

describe("reconciler dead-letters retry | skip, persistent mode", () => {
  it.scopedLive("poison parked and quarantined; retry after a fix and skip release through the group's parked messages", () =>
    Effect.gen(function*() {
      const eventStore = yield* EventStoreServer.make()
      const mongo = yield* MongoServer.make()
      const database = "dlp_test"
      const env = {
        EVENTSTORE_CONNECTION_STRING: eventStore.connectionString,
        MONGODB_URI: mongo.uri,
        MONGODB_DATABASE: database,
        RECONCILER_MODE: "persistent"
      }
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
        (c) => Effect.promise(() => c.dispose())
      )
      // doc-1 explodes, then has one more event (held); doc-2 explodes at its first event; doc-3 is fine.
      const events = [
        ["ledger-1", "Credited", { doc: "doc-1", amount: 5 }],
        ["ledger-1", "Exploded", { doc: "doc-1" }],
        ["ledger-1", "Credited", { doc: "doc-1", amount: 1 }],
        ["ledger-2", "Exploded", { doc: "doc-2" }],
        ["ledger-2", "Credited", { doc: "doc-2", amount: 3 }],
        ["ledger-3", "Credited", { doc: "doc-3", amount: 4 }]
      ] as const
      for (const [stream, type, data] of events) {
        yield* Effect.promise(() => client.appendToStream(stream, jsonEvent({ type, data: data as never })))
      }
      // The service runs (persistent, its default group `ledger@1`) through the whole test.
      const ports = Layer.merge(
        EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
        MongoReadModelStore.layer({ uri: mongo.uri, database })
      )
      const engine = yield* Reconciler.run(ledger, { mode: "persistent", commitInterval: "20 millis", holdCheck: "20 millis" }).pipe(
        Effect.provide(ports),
        Effect.forkScoped
      )
      const mongoClient = yield* Effect.acquireRelease(
        Effect.promise(() => new MongoClient(mongo.uri).connect()),
        (m) => Effect.promise(() => m.close())
      )
      const db = mongoClient.db(database)
      const doc = (id: string) => Effect.promise(() => db.collection("ledger").findOne({ _id: id as never }))
      const letters = Effect.promise(() => db.collection(MongoReadModelStore.DEAD_LETTERS).find().toArray())
      const held = Effect.promise(() => db.collection(MongoReadModelStore.HELD_EVENTS).countDocuments())
      const parked = Effect.promise(() => client.getPersistentSubscriptionToStreamInfo("$ce-ledger", "ledger@1")).pipe(
        Effect.map((info) => Number(info.stats.parkedMessageCount))
      )
      const expectNow = (what: string, ok: boolean) => (ok ? Effect.void : Effect.fail(new Error(`not yet: ${what}`)))

      // Quarantined: doc-1 stopped before its poison event, doc-2 never started; doc-3 moved on.
      // Both poison events are parked in the group, the later events of their documents held.
      yield* eventually(Effect.gen(function*() {
        yield* expectNow("doc-3", (yield* doc("doc-3"))?.total === 4)
        yield* expectNow("two letters", (yield* letters).length === 2)
        yield* expectNow("two held", (yield* held) === 2)
        yield* expectNow("two parked", (yield* parked) === 2)
      }))
      expect((yield* doc("doc-1"))?.total).toBe(5)
      expect(yield* doc("doc-2")).toBeNull()
      const all = yield* letters
      const exploded1 = String(all.find((l) => l.document === "doc-1")!._id)
      const exploded2 = String(all.find((l) => l.document === "doc-2")!._id)

      const module = ["-m", "test/support/ledger.ts"]
      const fixed = ["-m", "test/support/ledger-fixed.ts"]

      // Unchanged projection: both fail again, the letters stay, exit 1; the replayed copies are parked again.
      const again = yield* runCli(["dead-letters", "retry", ...module, "--all"], env)
      expect(again.code, again.output).toBe(1)
      expect(again.output).toContain(`${exploded1} (ledger@1, doc-1, ledger-1@1): failed again`)
      expect(again.output).toContain("0 of 2 letter(s) retried and released")
      expect(again.output).toContain("parked messages of group ledger@1 replayed")
      yield* eventually(Effect.flatMap(parked, (n) => expectNow("parked again", n === 2)))
      expect((yield* doc("doc-1"))?.total).toBe(5)

      // After the fix: the poison event applies, then the held one; doc-1 is released.
      const retried = yield* runCli(["dead-letters", "retry", ...fixed, exploded1], env)
      expect(retried.code, retried.output).toBe(0)
      expect(retried.output).toContain(`${exploded1} (ledger@1, doc-1, ledger-1@1): released, 2 event(s) applied`)
      expect(retried.output).toContain("parked messages of group ledger@1 replayed")

      // Skip by decision, with who and why: doc-2's held event applies without the poison event.
      const skipped = yield* runCli(["dead-letters", "skip", ...fixed, exploded2, "--by", "alice", "--reason", "bad producer"], env)
      expect(skipped.code, skipped.output).toBe(0)
      expect(skipped.output).toContain("1 of 1 letter(s) skipped and released")

      // The running engine acknowledges the replayed copies of the ended letters: the parked stream
      // empties and nothing applies twice.
      yield* eventually(Effect.flatMap(parked, (n) => expectNow("parked emptied", n === 0)))
      const doc1 = yield* doc("doc-1")
      expect(doc1?.total).toBe(6)
      expect(doc1?.applied).toHaveLength(3)
      const doc2 = yield* doc("doc-2")
      expect(doc2?.total).toBe(3)
      expect(doc2?.applied).toHaveLength(1)
      expect((yield* doc("doc-3"))?.total).toBe(4)
      expect(yield* letters).toEqual([])
      expect(yield* held).toBe(0)
      const resolved = yield* Effect.promise(() => db.collection(MongoReadModelStore.RESOLVED_LETTERS).find().toArray())
      expect(resolved.map((r) => [String(r._id), r.action, r.by, r.reason ?? null]).sort()).toEqual(
        [[exploded1, "retried", expect.any(String), null], [exploded2, "skipped", "alice", "bad producer"]].sort()
      )

      // New events of the released documents apply at once.
      yield* Effect.promise(() => client.appendToStream("ledger-1", jsonEvent({ type: "Credited", data: { doc: "doc-1", amount: 10 } })))
      yield* eventually(Effect.flatMap(doc("doc-1"), (d) => expectNow("doc-1 moved on", d?.total === 16)))
      expect((yield* doc("doc-1"))?.applied).toHaveLength(4)
      yield* Fiber.interrupt(engine)
    }), { timeout: 180_000 })
})
