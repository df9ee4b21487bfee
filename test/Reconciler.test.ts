import { describe, expect, it } from "@effect/vitest"
import type { Duration } from "effect"
import { Cause, Deferred, Effect, Exit, Fiber, FiberId, Metric, Option, Schedule, Schema, TestClock } from "effect"
import { EventSource, InMemory, Projection, ReadModelStore, Reconciler } from "../src/index.js"
import type { Step } from "./support/ledger.js"
import { appendHistory, ledger, referenceFold } from "./support/ledger.js"
import * as Quarantine from "../src/internal/quarantine.js"

const credits = (count: number, docs: number, streams = docs): ReadonlyArray<Step> =>
  Array.from({ length: count }, (_, i) => ({ kind: "Credited", stream: i % streams, doc: i % docs, amount: i }))

const bodies = (store: InMemory.MemoryStore) =>
  Object.fromEntries([...store.documents(ledger.collection)].map(([id, doc]) => [id, doc.body]))

type Port = ReadModelStore.ReadModelStore["Type"]

/** Documents' applied events in the store: what is durably written. */
const appliedCount = (store: InMemory.MemoryStore) =>
  [...store.documents(ledger.collection).values()]
    .reduce((n, doc) => n + (doc.body as { applied: Array<string> }).applied.length, 0)

/**
 * A slow store (every write takes 10 ms of virtual time) that records the most
 * deliveries taken in and not yet durably written, `inFlight()`, seen at any write.
 */
const slowStore = (store: InMemory.MemoryStore, inFlight: () => number) => {
  const seen = { most: 0 }
  const port: Port = {
    ...store.port,
    write: (batch) =>
      Effect.sync(() => {
        seen.most = Math.max(seen.most, inFlight())
      }).pipe(Effect.zipRight(Effect.sleep("10 millis")), Effect.zipRight(store.port.write(batch)))
  }
  return { port, seen }
}

const runWith = (log: InMemory.EventLog, port: Port, options: Reconciler.RunOptions = {}) =>
  Reconciler.run(ledger, { retrySchedule: Schedule.forever, ...options }).pipe(
    Effect.provideService(EventSource.EventSource, log.port),
    Effect.provideService(ReadModelStore.ReadModelStore, port)
  )

/** Drives virtual time until the fiber is done. */
const driveToEnd = <A, E>(fiber: Fiber.Fiber<A, E>, step: Duration.DurationInput = "10 millis") =>
  Effect.gen(function*() {
    let steps = 0
    while (Option.isNone(yield* Fiber.poll(fiber))) {
      yield* TestClock.adjust(step)
      steps++
    }
    return { exit: yield* Fiber.await(fiber), steps }
  })

describe("Reconciler", () => {
  it.scoped("lanes really run in parallel, and per-document order still holds", () =>
    Effect.gen(function*() {
      const history = credits(400, 16, 8)
      const concurrency = (lanes: number) =>
        Effect.gen(function*() {
          const log = yield* InMemory.makeEventLog({ endAtHead: true })
          yield* appendHistory(log, history)
          const store = yield* InMemory.makeStore()
          let active = 0
          let most = 0
          const port: Port = {
            ...store.port,
            write: (batch) =>
              Effect.gen(function*() {
                most = Math.max(most, ++active)
                // Let other fibers run while this write is "on the wire".
                for (let i = 0; i < 5; i++) yield* Effect.yieldNow()
                active--
                return yield* store.port.write(batch)
              })
          }
          yield* runWith(log, port, { lanes, batchSize: 5 })
          expect(bodies(store)).toEqual(Object.fromEntries(referenceFold(history)))
          return most
        })
      expect(yield* concurrency(1)).toBe(1)
      expect(yield* concurrency(4)).toBeGreaterThan(1)
    }))

  it.scoped.each(["catch-up", "persistent"] as const)(
    "backpressure (%s): deliveries pulled and not done never exceed lanes × lane buffer + batch size",
    (mode) =>
      Effect.gen(function*() {
        const lanes = 3
        const laneBuffer = 4
        const batchSize = 5
        const bound = lanes * laneBuffer + batchSize
        const log = yield* InMemory.makeEventLog({ endAtHead: true })
        const history = credits(500, 40)
        yield* appendHistory(log, history)
        const store = yield* InMemory.makeStore()
        // Pulled from the source but not yet durably written, seen at every write.
        const { port, seen } = slowStore(store, () => log.pulled() - appliedCount(store))
        const fiber = yield* Effect.fork(runWith(log, port, { mode, lanes, laneBuffer, batchSize }))
        const { exit } = yield* driveToEnd(fiber)
        expect(Exit.isSuccess(exit)).toBe(true)
        expect(bodies(store)).toEqual(Object.fromEntries(referenceFold(history)))
        expect(seen.most).toBeLessThanOrEqual(bound)
        // The bound was actually reached: the source really was held back.
        expect(seen.most).toBeGreaterThanOrEqual(bound - batchSize)
        if (mode === "persistent") {
          expect(log.unsettled().max).toBe(bound)
          expect(log.unsettled().now).toBe(0)
        }
      })
  )

  it.scoped("backpressure with chunks: a chunk never takes deliveries in flight past the bound", () =>
    Effect.gen(function*() {
      const lanes = 3
      const laneBuffer = 4
      const batchSize = 5
      const bound = lanes * laneBuffer + batchSize
      // Chunks of 7 do not divide the bound: the last chunk before it must be split.
      const log = yield* InMemory.makeEventLog({ endAtHead: true, chunkSize: 7 })
      const history = credits(500, 40)
      yield* appendHistory(log, history)
      const store = yield* InMemory.makeStore()
      // Every delivery taken in is keyed once (one document each here), so taken in and
      // not yet durably written is `keyed - written()`, seen at every write.
      let keyed = 0
      const counting: typeof ledger = {
        ...ledger,
        key: (event) => {
          keyed++
          return ledger.key(event)
        }
      }
      const { port, seen } = slowStore(store, () => keyed - appliedCount(store))
      const fiber = yield* Effect.fork(
        Reconciler.run(counting, { retrySchedule: Schedule.forever, lanes, laneBuffer, batchSize }).pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore.ReadModelStore, port)
        )
      )
      const { exit } = yield* driveToEnd(fiber)
      expect(Exit.isSuccess(exit)).toBe(true)
      expect(bodies(store)).toEqual(Object.fromEntries(referenceFold(history)))
      expect(seen.most).toBeLessThanOrEqual(bound)
      expect(seen.most).toBeGreaterThanOrEqual(bound - batchSize)
    }))

  it.scoped("interrupted mid-batch: drains in-flight work, commits the checkpoint, never calls the store after release", () =>
    Effect.gen(function*() {
      const rejections: Array<unknown> = []
      const onRejection = (reason: unknown) => rejections.push(reason)
      yield* Effect.acquireRelease(
        Effect.sync(() => process.on("unhandledRejection", onRejection)),
        () => Effect.sync(() => process.off("unhandledRejection", onRejection))
      )
      const log = yield* InMemory.makeEventLog() // live: the subscription never ends by itself
      const history = credits(200, 10)
      yield* appendHistory(log, history)
      const writing = yield* Deferred.make<void>()
      const proceed = yield* Deferred.make<void>()
      let observed: InMemory.MemoryStore | undefined
      const fiber = yield* Effect.gen(function*() {
        const store = yield* InMemory.InMemoryStore
        observed = store
        const port: Port = {
          ...store.port,
          write: (batch) =>
            Deferred.succeed(writing, undefined).pipe(
              Effect.zipRight(Deferred.await(proceed)),
              Effect.zipRight(store.port.write(batch))
            )
        }
        yield* runWith(log, port, { lanes: 2, batchSize: 10 })
      }).pipe(Effect.provide(InMemory.storeLayer()), Effect.fork)
      yield* Deferred.await(writing)
      const stopping = yield* Effect.fork(Fiber.interrupt(fiber))
      yield* Deferred.succeed(proceed, undefined)
      yield* Fiber.join(stopping)
      const store = observed!
      expect(store.callsAfterClose()).toBe(0)
      // The batches in flight were finished, not cut: some documents were written…
      const written = [...store.documents(ledger.collection).values()]
      expect(written.length).toBeGreaterThan(0)
      // …and the committed checkpoint covers exactly what the documents hold.
      const checkpoint = store.checkpoint("ledger@1")!
      expect(checkpoint).toBeGreaterThan(0n)
      const appliedIds = new Set(written.flatMap((doc) => (doc.body as { applied: Array<string> }).applied))
      for (let i = 0; i < Number(checkpoint); i++) expect(appliedIds.has(`e${i}`)).toBe(true)
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      expect(rejections).toEqual([])
    }))

  it.scoped("persistent mode: a drain that times out abandons the batch and nacks it for retry; a restart converges", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const history = credits(60, 6)
      yield* appendHistory(log, history)
      const store = yield* InMemory.makeStore()
      const stuck: Port = { ...store.port, write: () => Effect.never }
      const writing = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(
        runWith(log, { ...stuck, load: (c, ids) => Deferred.succeed(writing, undefined).pipe(Effect.zipRight(store.port.load(c, ids))) }, {
          mode: "persistent",
          drainTimeout: "5 seconds"
        })
      )
      yield* Deferred.await(writing)
      const stopping = yield* Effect.fork(Fiber.interrupt(fiber))
      const { steps } = yield* driveToEnd(stopping, "1 second")
      // It waited out the drain timeout before giving up on the stuck write.
      expect(steps).toBeGreaterThanOrEqual(5)
      // Everything received was handed back: nothing is held, nothing was applied.
      expect(log.unsettled().now).toBe(0)
      expect(store.documents(ledger.collection).size).toBe(0)
      yield* runWith(log, store.port, { mode: "persistent" })
      expect(bodies(store)).toEqual(Object.fromEntries(referenceFold(history)))
      expect(log.parked("ledger@1")).toEqual([])
    }))

  it.scoped("transient store errors are retried on the default jittered exponential schedule", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const history = credits(20, 4)
      yield* appendHistory(log, history)
      const store = yield* InMemory.makeStore()
      store.failNext(4)
      const projection = Projection.make({ ...ledger, name: "ledger-retries" })
      const fiber = yield* Reconciler.run(projection).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, store.port),
        Effect.fork
      )
      const { exit, steps } = yield* driveToEnd(fiber)
      expect(Exit.isSuccess(exit)).toBe(true)
      // Four failures with growing pauses from 50 ms: well over 10 steps of 10 ms of waiting.
      expect(steps).toBeGreaterThan(10)
      const retries = yield* Metric.value(Metric.tagged(Reconciler.metrics.retries, "projection", "ledger-retries"))
      expect(retries.count).toBe(4)
      expect(bodies(store)).toEqual(Object.fromEntries(referenceFold(history)))
    }))

  it.scoped("a non-transient store error stops the engine with a typed error, after committing what was applied", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* appendHistory(log, credits(30, 3))
      const store = yield* InMemory.makeStore()
      let writes = 0
      const port: Port = {
        ...store.port,
        write: (batch) =>
          ++writes > 2
            ? Effect.fail(new ReadModelStore.StoreError({ message: "disk full", transient: false }))
            : store.port.write(batch)
      }
      const exit = yield* Effect.exit(runWith(log, port, { lanes: 1, batchSize: 5 }))
      expect(Exit.isFailure(exit)).toBe(true)
      const error = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
      expect(Option.map(error, (e) => e._tag)).toEqual(Option.some("ReconcilerError"))
      expect(Option.map(error, (e) => e.message.includes("disk full"))).toEqual(Option.some(true))
      // What was applied before the failure is committed: exactly that, no more.
      const applied = [...store.documents(ledger.collection).values()]
        .reduce((n, doc) => n + (doc.body as { applied: Array<string> }).applied.length, 0)
      expect(applied).toBeGreaterThan(0)
      expect(store.checkpoint("ledger@1")).toBe(BigInt(applied))
    }))

  it.effect("a wrong option is a typed error", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      const error = yield* Effect.flip(runWith(log, store.port, { lanes: 0 }))
      expect(error._tag).toBe("InvalidRunOptions")
      expect(error.message).toContain("lanes")
    }).pipe(Effect.scoped))

  it.scoped("unknown event types are skipped and counted; events of other categories are not seen", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* log.append("ledger-1", [{ type: "Renamed", data: { doc: "doc-1" } }, { type: "Credited", data: { doc: "doc-1", amount: 5 } }])
      yield* log.append("other-1", [{ type: "Credited", data: { doc: "doc-2", amount: 5 } }])
      const store = yield* InMemory.makeStore()
      const projection = Projection.make({ ...ledger, name: "ledger-skips" })
      yield* Reconciler.run(projection).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, store.port)
      )
      const skipped = yield* Metric.value(Metric.tagged(Reconciler.metrics.skipped, "projection", "ledger-skips"))
      expect(skipped.count).toBe(1)
      expect([...store.documents(ledger.collection).keys()]).toEqual(["doc-1"])
      expect(store.letters()).toEqual([])
      expect(store.checkpoint("ledger-skips@1")).toBe(2n)
    }))

  it.scoped("handlers: at-least-once, retried, in order per key, dead-lettered when they keep failing", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* log.append("mail-1", [
        { type: "Requested", data: { to: "a@example.org" } },
        { type: "Requested", data: { to: "flaky@example.org" } },
        { type: "Requested", data: { to: "broken@example.org" } },
        { type: "Requested", data: { to: "b@example.org" } }
      ])
      const store = yield* InMemory.makeStore()
      const sent: Array<string> = []
      let flaky = 0
      const mailer = Projection.handler({
        name: "mailer",
        categories: ["mail"],
        events: { Requested: Schema.Struct({ to: Schema.String }) },
        handle: (event) =>
          Effect.suspend(() => {
            if (event.data.to === "broken@example.org") return Effect.fail("mailbox does not exist")
            if (event.data.to === "flaky@example.org" && flaky++ < 2) return Effect.fail("try again")
            sent.push(event.data.to)
            return Effect.void
          })
      })
      yield* Reconciler.run(mailer, { handlerAttempts: 3, retrySchedule: Schedule.forever }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, store.port)
      )
      // The key (the stream) is quarantined at the event that kept failing: its later event is held.
      expect(sent).toEqual(["a@example.org", "flaky@example.org"])
      expect(store.letters().map((l) => [l.document, l.reason.includes("mailbox does not exist")])).toEqual([["mail-1", true]])
      expect(store.held().map((h) => h.revision)).toEqual([3n])
      expect(store.checkpoint("mailer@1")).toBe(4n)
      // Skipping the letter by decision handles the held event and releases the key.
      const outcome = yield* Quarantine.resolve(mailer, store.letters()[0]!, { action: "skipped", by: "test" }).pipe(
        Effect.provideService(ReadModelStore.ReadModelStore, store.port)
      )
      expect(outcome._tag).toBe("Released")
      expect(sent).toEqual(["a@example.org", "flaky@example.org", "b@example.org"])
      expect(store.letters()).toEqual([])
      expect(store.held()).toEqual([])
    }))
  it.scoped("a guard conflict reloads the document and folds again: the lane's cached copy is never trusted over the store", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog() // live
      const store = yield* InMemory.makeStore()
      // Signals when the engine's writes have applied `count` events to doc-1.
      const waiting = new Map<number, Deferred.Deferred<void>>()
      const applied = (count: number) => {
        const deferred = Deferred.unsafeMake<void>(FiberId.none)
        waiting.set(count, deferred)
        return Deferred.await(deferred)
      }
      const port: Port = {
        ...store.port,
        write: (batch) =>
          store.port.write(batch).pipe(Effect.tap(() => {
            const doc = store.documents(ledger.collection).get("doc-1")?.body as { applied: Array<string> } | undefined
            const deferred = waiting.get(doc?.applied.filter((id) => id !== "external").length ?? 0)
            if (deferred !== undefined) Deferred.unsafeDone(deferred, Effect.void)
          }))
      }
      const fiber = yield* Effect.fork(runWith(log, port, { lanes: 2 }))
      const first = applied(2)
      yield* log.append("ledger-1", [
        { id: "e0", type: "Credited", data: { doc: "doc-1", amount: 1 } },
        { id: "e1", type: "Credited", data: { doc: "doc-1", amount: 2 } }
      ])
      yield* first
      // Another writer moves the document behind the engine's back.
      const current = store.stored(ledger.collection).get("doc-1")!
      const result = yield* store.port.write({
        collection: ledger.collection,
        writes: [{
          id: "doc-1",
          expectedVersion: current.meta.version,
          body: { total: 1003, applied: ["e0", "e1", "external"] },
          meta: { ...current.meta, version: current.meta.version + 1 }
        }]
      })
      expect(result.conflicts).toEqual([])
      const second = applied(3)
      yield* log.append("ledger-1", [{ id: "e2", type: "Credited", data: { doc: "doc-1", amount: 4 } }])
      yield* second
      yield* Fiber.interrupt(fiber)
      expect(store.documents(ledger.collection).get("doc-1")!.body).toEqual({
        total: 1007,
        applied: ["e0", "e1", "external", "e2"]
      })
    }))
  it.scoped("joins: a document reads another of the same partition as it stood before the event", () =>
    Effect.gen(function*() {
      const Doc = Schema.Union(
        Schema.Struct({ kind: Schema.Literal("owner"), name: Schema.String }),
        Schema.Struct({ kind: Schema.Literal("account"), owner: Schema.String, ownerName: Schema.String, balance: Schema.Number })
      )
      const accounts = Projection.make({
        name: "join-accounts",
        categories: ["person", "account"],
        collection: "join_accounts",
        document: Doc,
        events: {
          PersonRegistered: Schema.Struct({ person: Schema.String, name: Schema.String }),
          PersonRenamed: Schema.Struct({ person: Schema.String, name: Schema.String }),
          AccountOpened: Schema.Struct({ account: Schema.String, owner: Schema.String }),
          Deposited: Schema.Struct({ account: Schema.String, owner: Schema.String, amount: Schema.Number })
        },
        key: (event) => {
          switch (event.type) {
            case "PersonRegistered":
            case "PersonRenamed":
              return `owner-${event.data.person}`
            case "AccountOpened":
              return [event.data.account, `owner-${event.data.owner}`]
            case "Deposited":
              return event.data.account
          }
        },
        partition: (event) => "owner" in event.data ? event.data.owner : event.data.person,
        // A union document with literal tags: annotating the result keeps the tags literal.
        evolve: (doc, event, { read }): typeof Doc.Type | undefined => {
          switch (event.type) {
            case "PersonRegistered":
            case "PersonRenamed":
              return { kind: "owner", name: event.data.name }
            case "AccountOpened": {
              if (doc?.kind === "owner") return doc
              const owner = read(`owner-${event.data.owner}`)
              return {
                kind: "account",
                owner: event.data.owner,
                ownerName: owner?.kind === "owner" ? owner.name : "?",
                balance: 0
              }
            }
            case "Deposited":
              return doc?.kind === "account" ? { ...doc, balance: doc.balance + event.data.amount } : doc
          }
        }
      })
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const expected: Record<string, unknown> = {}
      for (let p = 0; p < 20; p++) {
        yield* log.append(`person-${p}`, [{ type: "PersonRegistered", data: { person: `p${p}`, name: `Person ${p}` } }])
        expected[`owner-p${p}`] = { kind: "owner", name: `Person ${p}` }
        // Opened in the same batch as the registration: the read must see it.
        yield* log.append(`account-${p}`, [
          { type: "AccountOpened", data: { account: `a${p}`, owner: `p${p}` } },
          { type: "Deposited", data: { account: `a${p}`, owner: `p${p}`, amount: p } }
        ])
        expected[`a${p}`] = { kind: "account", owner: `p${p}`, ownerName: `Person ${p}`, balance: p }
      }
      const store = yield* InMemory.makeStore()
      yield* Reconciler.run(accounts, { lanes: 4, batchSize: 50 }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, store.port)
      )
      const actual = Object.fromEntries([...store.documents("join_accounts")].map(([id, doc]) => [id, doc.body]))
      expect(actual).toEqual(expected)
    }))
  it.scoped("the watchdog flags work in flight that stops moving, and clears once the engine moves on", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* appendHistory(log, credits(10, 2))
      const store = yield* InMemory.makeStore()
      const proceed = yield* Deferred.make<void>()
      const port: Port = { ...store.port, write: (batch) => Deferred.await(proceed).pipe(Effect.zipRight(store.port.write(batch))) }
      const projection = Projection.make({ ...ledger, name: "ledger-watchdog" })
      const stalled = Metric.tagged(Reconciler.metrics.stalled, "projection", "ledger-watchdog")
      const fiber = yield* Reconciler.run(projection, { stallAfter: "30 seconds", retrySchedule: Schedule.forever }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, port),
        Effect.fork
      )
      yield* TestClock.adjust("20 seconds")
      expect((yield* Metric.value(stalled)).value).toBe(0)
      yield* TestClock.adjust("15 seconds")
      expect((yield* Metric.value(stalled)).value).toBe(1)
      yield* Deferred.succeed(proceed, undefined)
      const { exit } = yield* driveToEnd(fiber, "1 second")
      expect(Exit.isSuccess(exit)).toBe(true)
      expect((yield* Metric.value(stalled)).value).toBe(0)
    }))
  it.scoped("source failures: a retryable one resubscribes and loses nothing; any other stops the engine, typed", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const history = credits(30, 3)
      yield* appendHistory(log, history)
      const store = yield* InMemory.makeStore()
      log.failNext(new EventSource.EventSourceError({ message: "connection reset", retryable: true }), 3)
      yield* runWith(log, store.port, { resubscribeSchedule: Schedule.forever })
      expect(bodies(store)).toEqual(Object.fromEntries(referenceFold(history)))

      yield* appendHistory(log, credits(5, 1))
      log.failNext(new EventSource.EventSourceError({ message: "access denied", retryable: false }))
      const error = yield* Effect.flip(runWith(log, store.port))
      expect(error._tag).toBe("ReconcilerError")
      expect(error.message).toContain("access denied")
    }))
  it.scoped("a failing lane does not cut the others: their in-flight batches finish before the engine stops", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog()
      // doc-0 and doc-1 land in different lanes of two.
      yield* log.append("ledger-0", [{ id: "e0", type: "Credited", data: { doc: "doc-0", amount: 1 } }])
      yield* log.append("ledger-1", [{ id: "e1", type: "Credited", data: { doc: "doc-1", amount: 1 } }])
      const store = yield* InMemory.makeStore()
      const failed = yield* Deferred.make<void>()
      const port: Port = {
        ...store.port,
        write: (batch) =>
          batch.writes[0]!.id === "doc-0"
            ? Deferred.succeed(failed, undefined).pipe(
              Effect.zipRight(Effect.fail(new ReadModelStore.StoreError({ message: "disk full", transient: false })))
            )
            // The other lane is mid-write when the first one fails.
            : Deferred.await(failed).pipe(Effect.zipRight(Effect.sleep("1 second")), Effect.zipRight(store.port.write(batch)))
      }
      const fiber = yield* Effect.fork(runWith(log, port, { lanes: 2 }))
      const { exit } = yield* driveToEnd(fiber, "100 millis")
      expect(Exit.isFailure(exit)).toBe(true)
      expect([...store.documents(ledger.collection).keys()]).toEqual(["doc-1"])
    }))

  it.scoped("stopping while the store is down ends within the drain timeout instead of retrying forever", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog()
      yield* appendHistory(log, credits(10, 2))
      const store = yield* InMemory.makeStore()
      let down = false
      const written = yield* Deferred.make<void>()
      const gate = <A>(effect: Effect.Effect<A, ReadModelStore.StoreError>) =>
        Effect.suspend(() => down ? Effect.fail(new ReadModelStore.StoreError({ message: "unreachable", transient: true })) : effect)
      const port: Port = {
        ...store.port,
        write: (batch) => gate(store.port.write(batch)).pipe(Effect.tap(() => Deferred.succeed(written, undefined))),
        commitCheckpoint: (checkpoint) => gate(store.port.commitCheckpoint(checkpoint))
      }
      const fiber = yield* Effect.fork(
        Reconciler.run(ledger, { drainTimeout: "2 seconds" }).pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore.ReadModelStore, port)
        )
      )
      yield* Deferred.await(written)
      down = true
      const stopping = yield* Effect.fork(Fiber.interrupt(fiber))
      const { steps } = yield* driveToEnd(stopping, "500 millis")
      // It gave up on the final commit after its deadline, not before, and did not hang.
      expect(steps).toBeGreaterThanOrEqual(4)
      expect(steps).toBeLessThan(40)
    }))

  it.scoped("a committer that cannot commit stops the engine, typed, instead of dying silently", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog() // live
      yield* appendHistory(log, credits(10, 2))
      const store = yield* InMemory.makeStore()
      const port: Port = {
        ...store.port,
        // Batch writes carry no checkpoint here, so only the committer commits.
        write: (batch) => store.port.write({ ...batch, checkpoint: undefined }),
        commitCheckpoint: () => Effect.fail(new ReadModelStore.StoreError({ message: "permission denied", transient: false }))
      }
      const fiber = yield* Effect.fork(runWith(log, port, { commitInterval: "1 second" }))
      const { exit } = yield* driveToEnd(fiber, "1 second")
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(Exit.isFailure(exit) ? Cause.squash(exit.cause) : "")).toContain("permission denied")
    }))

  it.scoped("a key function returning garbage makes the event poison, dead-lettered, not a crash", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* log.append("ledger-1", [
        { id: "bad", type: "Credited", data: { doc: "doc-1", amount: 1 } },
        { id: "good", type: "Credited", data: { doc: "doc-2", amount: 1 } }
      ])
      const store = yield* InMemory.makeStore()
      const projection = Projection.make({
        ...ledger,
        name: "ledger-bad-key",
        key: (event) => (event.id === "bad" ? undefined : ledger.key(event)) as string
      })
      yield* Reconciler.run(projection).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, store.port)
      )
      expect(store.letters().map((l) => l.eventId)).toEqual(["bad"])
      expect([...store.documents(ledger.collection).keys()]).toEqual(["doc-2"])
    }))
})
