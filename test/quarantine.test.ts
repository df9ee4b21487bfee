/**
 * Per-document quarantine, case by case: one document is held back at its
 * poison event while everything else (and the checkpoint) moves on; retry after
 * a fix and skip by decision end the letter and release the document.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Metric, Option, Schedule, Schema, TestClock } from "effect"
import * as MongoServer from "../src/embedded/MongoServer.js"
import { EventSource, InMemory, Projection, ReadModelStore, Reconciler } from "../src/index.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import * as Quarantine from "../src/internal/quarantine.js"
import { accounts } from "./support/quarantine.js"

const broken = accounts(false)
const fixed = accounts(true)

const run = (runnable: Projection.Runnable, log: InMemory.EventLog, port: ReadModelStore.ReadModelStore["Type"], options: Reconciler.RunOptions = {}) =>
  Reconciler.run(runnable, { retrySchedule: Schedule.forever, ...options }).pipe(
    Effect.provideService(EventSource.EventSource, log.port),
    Effect.provideService(ReadModelStore.ReadModelStore, port)
  )

const resolve = (runnable: Projection.Runnable, port: ReadModelStore.ReadModelStore["Type"], letter: ReadModelStore.DeadLetter, decision: Quarantine.Decision) =>
  Quarantine.resolve(runnable, letter, decision).pipe(Effect.provideService(ReadModelStore.ReadModelStore, port))

const bodies = (store: InMemory.MemoryStore, collection = broken.collection) =>
  Object.fromEntries([...store.documents(collection)].map(([id, doc]) => [id, doc.body]))

describe("quarantine", () => {
  it.scoped("two streams carry the same event id, both poison: two letters, both resolvable", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      const id = "11111111-1111-4111-8111-111111111111"
      yield* log.append("acct-1", [{ id, type: "Exploded", data: { doc: "doc-1" } }, { type: "Credited", data: { doc: "doc-1", amount: 1 } }])
      yield* log.append("acct-2", [{ id, type: "Exploded", data: { doc: "doc-2" } }, { type: "Credited", data: { doc: "doc-2", amount: 2 } }])
      yield* log.append("acct-3", [{ type: "Credited", data: { doc: "doc-3", amount: 3 } }])
      yield* run(broken, log, store.port)
      const letters = [...store.letters()].sort((a, b) => a.streamId.localeCompare(b.streamId))
      expect(letters.map((l) => [l.eventId, l.streamId, l.revision, l.document])).toEqual([
        [id, "acct-1", 0n, "doc-1"],
        [id, "acct-2", 0n, "doc-2"]
      ])
      expect(letters[0]!.id).not.toBe(letters[1]!.id)
      // The metric shows them.
      const gauge = yield* Metric.value(Metric.tagged(Quarantine.quarantinedGauge, "projection", "accounts"))
      expect(gauge.value).toBe(2)
      // Only doc-3 moved; the checkpoint is past everything.
      expect(Object.keys(bodies(store))).toEqual(["doc-3"])
      expect(store.checkpoint("accounts@1")).toBe(5n)
      const first = yield* resolve(fixed, store.port, letters[0]!, { action: "retried", by: "test" })
      const second = yield* resolve(fixed, store.port, letters[1]!, { action: "skipped", by: "test", reason: "duplicate" })
      expect([first._tag, second._tag]).toEqual(["Released", "Released"])
      expect(bodies(store)).toEqual({
        "doc-1": { total: 1, applied: ["acct-1@0", "acct-1@1"] },
        "doc-2": { total: 2, applied: ["acct-2@1"] },
        "doc-3": { total: 3, applied: ["acct-3@0"] }
      })
      expect(store.letters()).toEqual([])
      expect(store.resolved().map((r) => [r.letter.streamId, r.action, r.by, r.reason])).toEqual([
        ["acct-1", "retried", "test", undefined],
        ["acct-2", "skipped", "test", "duplicate"]
      ])
    }))

  it.scoped("an event touching two documents: the one that accepts it applies; the other is quarantined at it and completed alone", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      yield* log.append("acct-1", [
        { type: "Split", data: { a: "doc-a", b: "doc-b" } },
        { type: "Credited", data: { doc: "doc-b", amount: 5 } },
        { type: "Credited", data: { doc: "doc-a", amount: 7 } }
      ])
      yield* run(broken, log, store.port, { lanes: 2 })
      expect(bodies(store)).toEqual({ "doc-a": { total: 7, applied: ["acct-1@0", "acct-1@2"] } })
      expect(store.letters().map((l) => [l.document, l.revision])).toEqual([["doc-b", 0n]])
      expect(store.held().map((h) => [h.document, h.revision])).toEqual([["doc-b", 1n]])
      const release = yield* resolve(fixed, store.port, store.letters()[0]!, { action: "retried", by: "test" })
      expect(release).toMatchObject({ _tag: "Released", applied: 2 })
      // doc-a has the event once; doc-b has it, then its held event.
      expect(bodies(store)).toEqual({
        "doc-a": { total: 7, applied: ["acct-1@0", "acct-1@2"] },
        "doc-b": { total: 5, applied: ["acct-1@0", "acct-1@1"] }
      })
    }))

  it.scoped("a store refusal for one document quarantines it; the others and the checkpoint move on; retry once it is cleared", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      let refuse = true
      const store = yield* InMemory.makeStore({
        reject: (_, write) => (refuse && write.id === "doc-2" ? "document too large" : undefined)
      })
      yield* log.append("acct-1", [{ type: "Credited", data: { doc: "doc-1", amount: 1 } }])
      yield* log.append("acct-2", [{ type: "Credited", data: { doc: "doc-2", amount: 2 } }, { type: "Credited", data: { doc: "doc-2", amount: 3 } }])
      yield* log.append("acct-1", [{ type: "Credited", data: { doc: "doc-1", amount: 4 } }])
      yield* run(broken, log, store.port, { batchSize: 10 })
      expect(bodies(store)).toEqual({ "doc-1": { total: 5, applied: ["acct-1@0", "acct-1@1"] } })
      expect(store.letters().map((l) => [l.document, l.streamId, l.revision, l.reason])).toEqual([["doc-2", "acct-2", 0n, "document too large"]])
      expect(store.held().map((h) => h.revision)).toEqual([1n])
      expect(store.checkpoint("accounts@1")).toBe(4n)
      // Still refused: the letter stays.
      expect((yield* resolve(broken, store.port, store.letters()[0]!, { action: "retried", by: "test" }))._tag).toBe("FailedAgain")
      refuse = false
      expect((yield* resolve(broken, store.port, store.letters()[0]!, { action: "retried", by: "test" }))._tag).toBe("Released")
      expect(bodies(store)["doc-2"]).toEqual({ total: 5, applied: ["acct-2@0", "acct-2@1"] })
    }))

  it.scoped("a restart keeps the document quarantined; a letter ended while the engine runs releases it on its next event", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog()
      const store = yield* InMemory.makeStore()
      yield* log.append("acct-1", [{ type: "Exploded", data: { doc: "doc-1" } }])
      const reachedHead = (n: bigint) => Effect.repeat(Effect.sync(() => store.checkpoint("accounts@1")), {
        schedule: Schedule.spaced("10 millis"),
        until: (c) => c !== undefined && c >= n
      })
      const options = { commitInterval: "10 millis" } as const
      let engine = yield* Effect.fork(run(broken, log, store.port, options))
      yield* TestClock.adjust("20 millis").pipe(Effect.zipRight(reachedHead(1n)), Effect.race(Effect.forever(TestClock.adjust("10 millis"))))
      yield* Fiber.interrupt(engine)
      // Restarted: its next event is held.
      engine = yield* Effect.fork(run(broken, log, store.port, options))
      yield* log.append("acct-1", [{ type: "Credited", data: { doc: "doc-1", amount: 1 } }])
      yield* reachedHead(2n).pipe(Effect.race(Effect.forever(TestClock.adjust("10 millis"))))
      expect(store.held().map((h) => h.revision)).toEqual([1n])
      expect(store.documents(broken.collection).size).toBe(0)
      // Skipped while the engine runs: its next event finds the letter gone and applies what was held, in order.
      yield* resolve(broken, store.port, store.letters()[0]!, { action: "skipped", by: "test" })
      yield* log.append("acct-1", [{ type: "Credited", data: { doc: "doc-1", amount: 2 } }])
      yield* reachedHead(3n).pipe(Effect.race(Effect.forever(TestClock.adjust("10 millis"))))
      yield* Fiber.interrupt(engine)
      expect(bodies(store)).toEqual({ "doc-1": { total: 3, applied: ["acct-1@1", "acct-1@2"] } })
      expect(store.held()).toEqual([])
      expect(store.letters()).toEqual([])
    }))

  it.scoped("handlers retry on the engine's jittered exponential schedule, then quarantine their key", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      yield* log.append("mail-1", [{ type: "Requested", data: { to: "broken" } }, { type: "Requested", data: { to: "after" } }])
      yield* log.append("mail-2", [{ type: "Requested", data: { to: "other" } }])
      const attempts: Array<number> = []
      const sent: Array<string> = []
      const mailer = Projection.handler({
        name: "mailer",
        categories: ["mail"],
        events: { Requested: Schema.Struct({ to: Schema.String }) },
        handle: (event) =>
          Effect.gen(function*() {
            if (event.data.to === "broken") {
              attempts.push(Number(yield* TestClock.currentTimeMillis))
              return yield* Effect.fail("mailbox does not exist")
            }
            sent.push(event.data.to)
          })
      })
      const fiber = yield* Effect.fork(
        Reconciler.run(mailer, { handlerAttempts: 4, lanes: 1 }).pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore.ReadModelStore, store.port)
        )
      )
      while (Option.isNone(yield* Fiber.poll(fiber))) yield* TestClock.adjust("10 millis")
      // Four attempts, spaced further and further apart (50 ms, 100 ms, 200 ms, jittered).
      expect(attempts).toHaveLength(4)
      const gaps = attempts.slice(1).map((t, i) => t - attempts[i]!)
      expect(gaps[1]!).toBeGreaterThan(gaps[0]!)
      expect(gaps[2]!).toBeGreaterThan(gaps[1]!)
      expect(gaps[0]!).toBeGreaterThanOrEqual(30)
      // mail-1 is quarantined at "broken": "after" is held; mail-2 went on.
      expect(sent).toEqual(["other"])
      expect(store.letters().map((l) => l.document)).toEqual(["mail-1"])
      expect(store.held().map((h) => [h.document, h.revision])).toEqual([["mail-1", 1n]])
    }))

  it.scoped("evolve and key see the event's metadata, decoded by the projection's metadata schema", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      const tenants = Projection.make({
        name: "tenants",
        categories: ["t"],
        document: Schema.Struct({ tenant: Schema.String, by: Schema.String, at: Schema.String }),
        events: { Touched: Schema.Struct({}) },
        metadata: Schema.Struct({ tenant: Schema.String, user: Schema.String }),
        key: (event) => event.metadata.tenant,
        evolve: (_, event) => ({ tenant: event.metadata.tenant, by: event.metadata.user, at: `${event.streamId}@${event.revision}` })
      })
      yield* log.append("t-1", [
        { type: "Touched", data: {}, metadata: { tenant: "acme", user: "ann" } },
        { type: "Touched", data: {}, metadata: { tenant: 7 } }
      ])
      yield* run(tenants, log, store.port)
      expect(bodies(store, "tenants")).toEqual({ acme: { tenant: "acme", by: "ann", at: "t-1@0" } })
      // Metadata the schema rejects: the event is poison, with the reason.
      expect(store.letters().map((l) => [l.revision, l.document, l.reason.split("\n")[0]])).toEqual([
        [1n, undefined, "metadata does not match the metadata schema: { readonly tenant: string; readonly user: string }"]
      ])
      // Without a schema: the parsed JSON.
      const seen: Array<unknown> = []
      const raw = Projection.make({
        name: "raw",
        categories: ["t"],
        document: Schema.Struct({}),
        events: { Touched: Schema.Struct({}) },
        key: (event) => {
          seen.push(event.metadata)
          return "x"
        },
        evolve: () => ({})
      })
      yield* run(raw, log, store.port)
      expect(seen).toEqual([{ tenant: "acme", user: "ann" }, { tenant: 7 }])
    }))

  it.scoped("MongoDB: a unique-index violation quarantines one document while the others keep moving", () =>
    Effect.gen(function*() {
      const mongo = yield* MongoServer.make()
      const port = yield* Layer.build(
        MongoReadModelStore.layer({
          uri: mongo.uri,
          database: "unique_test",
          indexes: [{ collection: "users", key: { email: 1 }, unique: true }]
        })
      ).pipe(Effect.flatMap((ctx) => ReadModelStore.ReadModelStore.pipe(Effect.provide(ctx))))
      const users = Projection.make({
        name: "users",
        categories: ["user"],
        document: Schema.Struct({ email: Schema.String }),
        events: { EmailSet: Schema.Struct({ user: Schema.String, email: Schema.String }) },
        key: (event) => event.data.user,
        evolve: (_, event) => ({ email: event.data.email })
      })
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* log.append("user-1", [{ type: "EmailSet", data: { user: "u1", email: "a@x" } }])
      yield* log.append("user-2", [{ type: "EmailSet", data: { user: "u2", email: "a@x" } }, { type: "EmailSet", data: { user: "u2", email: "c@x" } }])
      yield* log.append("user-3", [{ type: "EmailSet", data: { user: "u3", email: "b@x" } }])
      yield* log.append("user-1", [{ type: "EmailSet", data: { user: "u1", email: "d@x" } }])
      yield* run(users, log, port, { lanes: 1, batchSize: 1 })
      const emails = (ids: ReadonlyArray<string>) =>
        port.load("users", ids).pipe(Effect.map((docs) => Object.fromEntries([...docs].map(([id, d]) => [id, d.body?.email]))))
      expect(yield* emails(["u1", "u2", "u3"])).toEqual({ u1: "d@x", u3: "b@x" })
      const letters = yield* port.deadLetters("users@1")
      expect(letters.map((l) => [l.document, l.streamId, l.revision])).toEqual([["u2", "user-2", 0n]])
      expect(letters[0]!.reason).toMatch(/unique index violation for document u2/)
      expect((yield* port.heldEvents("users@1", "u2")).map((h) => h.revision)).toEqual([1n])
      expect(yield* port.readCheckpoint("users@1")).toEqual(Option.some(5n))
      // u1 gave the address up meanwhile: the retry applies u2's events in order.
      const release = yield* resolve(users, port, letters[0]!, { action: "retried", by: "test" })
      expect(release._tag).toBe("Released")
      expect(yield* emails(["u2"])).toEqual({ u2: "c@x" })
      expect(yield* port.heldEvents("users@1", "u2")).toEqual([])
      expect((yield* port.resolutions("users@1")).map((r) => r.action)).toEqual(["retried"])
    }))
})

describe("quarantine records in both stores", () => {
  const records = (port: ReadModelStore.ReadModelStore["Type"]) =>
    Effect.gen(function*() {
      const held = (stream: string, revision: bigint, position: bigint): ReadModelStore.HeldEvent => ({
        projection: "p@1",
        document: "d",
        eventId: "same-id",
        eventType: "T",
        streamId: stream,
        revision,
        position,
        data: new Uint8Array([1, 2, 3]),
        metadata: new Uint8Array(),
        created: new Date(5000)
      })
      // Keyed by position: one event id in two streams is two records; holding one twice keeps one.
      yield* port.hold([held("s-2", 0n, 9n), held("s-1", 4n, 7n)])
      yield* port.hold([held("s-1", 4n, 7n)])
      expect((yield* port.heldEvents("p@1", "d")).map((h) => [h.streamId, h.revision, h.position])).toEqual([
        ["s-1", 4n, 7n],
        ["s-2", 0n, 9n]
      ])
      expect((yield* port.heldEvents("p@1", "d"))[0]).toEqual(held("s-1", 4n, 7n))
      yield* port.releaseHeld("p@1", "d", [{ streamId: "s-1", revision: 4n }])
      expect((yield* port.heldEvents("p@1", "d")).map((h) => h.streamId)).toEqual(["s-2"])
      const letter: ReadModelStore.DeadLetter = {
        id: ReadModelStore.letterId("p@1", "d", "s-2", 0n),
        projection: "p@1",
        document: "d",
        eventId: "same-id",
        eventType: "T",
        streamId: "s-2",
        revision: 0n,
        position: 9n,
        data: new Uint8Array([1]),
        metadata: new Uint8Array(),
        reason: "boom",
        at: new Date(6000)
      }
      expect(ReadModelStore.letterId("p@1", "d", "s-1", 0n)).not.toBe(letter.id)
      yield* port.deadLetter(letter)
      expect(yield* port.deadLetters("p@1")).toEqual([letter])
      yield* port.resolveDeadLetter({ letter, action: "skipped", by: "ann", reason: "dup", at: new Date(7000) })
      yield* port.resolveDeadLetter({ letter, action: "retried", by: "bob", reason: undefined, at: new Date(8000) })
      expect(yield* port.deadLetters("p@1")).toEqual([])
      expect(yield* port.resolutions("p@1")).toEqual([{ letter, action: "skipped", by: "ann", reason: "dup", at: new Date(7000) }])
    })

  it.scoped("in memory", () => Effect.flatMap(InMemory.makeStore(), (store) => records(store.port)))

  it.scoped("MongoDB through the driver", () =>
    Effect.gen(function*() {
      const mongo = yield* MongoServer.make()
      const port = yield* Layer.build(MongoReadModelStore.layer({ uri: mongo.uri, database: "records_test" })).pipe(
        Effect.flatMap((ctx) => ReadModelStore.ReadModelStore.pipe(Effect.provide(ctx)))
      )
      yield* records(port)
    }))
})
