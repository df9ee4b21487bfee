/**
 * The MongoDB store through the real driver against the embedded server: guard
 * semantics, checkpoints, crash between documents and checkpoint, typed errors,
 * use after close, and the engine's property re-run at small sizes.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Cause, ConfigProvider, Deferred, Effect, Exit, FastCheck as fc, Fiber, Layer, Option, Schedule, Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { MongoClient, MongoError, MongoNetworkError, MongoServerError, type Document } from "mongodb"
import * as MongoServer from "../src/embedded/MongoServer.js"
import { EventSource, InMemory, Reconciler } from "../src/index.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import {
  type DocumentMeta,
  type DocumentWrite,
  ReadModelStore,
  StoreError
} from "../src/ReadModelStore.js"
import type { Step } from "./support/ledger.js"
import { appendHistory, historyArbitrary, ledger, poisonIds, propertySeed, quarantineFold, referenceFold } from "./support/ledger.js"
import { skipAll } from "./support/quarantine.js"

let scope: Scope.CloseableScope
let uri: string
let admin: MongoClient
let databases = 0

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  uri = process.env.MONGODB_URI ?? (await Effect.runPromise(Scope.extend(MongoServer.make(), scope))).uri
  admin = await new MongoClient(uri).connect()
})

afterAll(async () => {
  for (let i = 1; i <= databases; i++) await admin?.db(`store_${process.pid}_${i}`).dropDatabase().catch(() => undefined)
  await admin?.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
})

const freshDatabase = () => `store_${process.pid}_${++databases}`

/** A store on a fresh database, for the test's scope. */
const store = (options: Partial<MongoReadModelStore.Options> = {}) =>
  Effect.gen(function*() {
    const database = freshDatabase()
    const port = yield* MongoReadModelStore.make({ uri, database, ...options })
    return { port, database, raw: admin.db(database) }
  })

const meta = (version: number, position?: bigint, streams: Record<string, bigint> = {}, deleted = false): DocumentMeta => ({
  version,
  position,
  streams,
  deleted
})

const put = (id: string, expectedVersion: number, body: Record<string, unknown> | undefined, m: DocumentMeta): DocumentWrite => ({
  id,
  expectedVersion,
  body,
  meta: m
})

describe("MongoReadModelStore", () => {
  it.scoped("writes and loads documents with their bookkeeping; bigints and any stream id round-trip", () =>
    Effect.gen(function*() {
      const { port, raw } = yield* store()
      const big = 2n ** 62n + 7n
      const streams = { "order-1": 3n, "a.b$c": big }
      const result = yield* port.write({
        collection: "orders",
        writes: [put("o1", 0, { total: 5, items: ["x"], when: "2024-01-01" }, meta(1, big, streams))]
      })
      expect(result.conflicts).toEqual([])
      const loaded = yield* port.load("orders", ["o1", "missing"])
      expect([...loaded.keys()]).toEqual(["o1"])
      expect(loaded.get("o1")).toEqual({ id: "o1", body: { total: 5, items: ["x"], when: "2024-01-01" }, meta: meta(1, big, streams) })
      // Layout: body at top level, bookkeeping in the reserved field.
      const stored = yield* Effect.promise(() => raw.collection("orders").findOne({ _id: "o1" } as Document))
      expect(Object.keys(stored!)).toEqual(["_id", "total", "items", "when", MongoReadModelStore.META_FIELD])
      expect(yield* port.load("orders", [])).toEqual(new Map())
    }))

  it.scoped("reports stale writes as conflicts and applies the rest of the batch", () =>
    Effect.gen(function*() {
      const { port } = yield* store()
      yield* port.write({ collection: "c", writes: [put("a", 0, { n: 1 }, meta(1, 1n)), put("b", 0, { n: 1 }, meta(1, 1n))] })
      const result = yield* port.write({
        collection: "c",
        writes: [
          put("a", 0, { n: 99 }, meta(1, 9n)), // already exists: conflict (duplicate key on the guarded upsert)
          put("b", 1, { n: 2 }, meta(2, 2n)), // current: applied
          put("c", 0, { n: 1 }, meta(1, 2n)), // new: applied
          put("d", 3, { n: 1 }, meta(4, 2n)) // never existed at version 3: conflict
        ]
      })
      expect(result.conflicts).toEqual(["a", "d"])
      const docs = yield* port.load("c", ["a", "b", "c", "d"])
      expect(docs.get("a")?.body).toEqual({ n: 1 })
      expect(docs.get("b")?.body).toEqual({ n: 2 })
      expect(docs.get("b")?.meta.version).toBe(2)
      expect(docs.get("c")?.body).toEqual({ n: 1 })
      expect(docs.has("d")).toBe(false)
      // A stale replacement (version moved on) is a conflict too.
      const stale = yield* port.write({ collection: "c", writes: [put("b", 1, { n: 3 }, meta(2, 3n))] })
      expect(stale.conflicts).toEqual(["b"])
      expect((yield* port.load("c", ["b"])).get("b")?.body).toEqual({ n: 2 })
    }))

  it.scoped("a redelivered batch is a no-op", () =>
    Effect.gen(function*() {
      const { port } = yield* store()
      const batch = { collection: "c", writes: [put("a", 0, { n: 1 }, meta(1, 5n)), put("b", 0, { n: 2 }, meta(1, 5n))] }
      expect((yield* port.write(batch)).conflicts).toEqual([])
      const before = yield* port.load("c", ["a", "b"])
      expect((yield* port.write(batch)).conflicts).toEqual(["a", "b"])
      expect(yield* port.load("c", ["a", "b"])).toEqual(before)
    }))

  it.scoped("keeps tombstones with only _id and the bookkeeping", () =>
    Effect.gen(function*() {
      const { port, raw } = yield* store()
      yield* port.write({ collection: "c", writes: [put("a", 0, { n: 1 }, meta(1, 1n))] })
      yield* port.write({ collection: "c", writes: [put("a", 1, undefined, meta(2, 2n, {}, true))] })
      const loaded = (yield* port.load("c", ["a"])).get("a")
      expect(loaded).toEqual({ id: "a", body: undefined, meta: meta(2, 2n, {}, true) })
      const stored = yield* Effect.promise(() => raw.collection("c").findOne({ _id: "a" } as Document))
      expect(Object.keys(stored!)).toEqual(["_id", MongoReadModelStore.META_FIELD])
      // A redelivered create cannot bring it back.
      expect((yield* port.write({ collection: "c", writes: [put("a", 0, { n: 1 }, meta(1, 1n))] })).conflicts).toEqual(["a"])
    }))

  for (const transactions of ["auto", "never"] as const) {
    it.scoped(`checkpoints never move backwards (transactions: ${transactions})`, () =>
      Effect.gen(function*() {
        const { port } = yield* store({ transactions })
        expect(yield* port.readCheckpoint("p@1")).toEqual(Option.none())
        yield* port.commitCheckpoint({ projection: "p@1", position: 10n })
        yield* port.commitCheckpoint({ projection: "p@1", position: 5n })
        expect(yield* port.readCheckpoint("p@1")).toEqual(Option.some(10n))
        yield* port.write({ collection: "c", writes: [put("a", 0, { n: 1 }, meta(1, 12n))], checkpoint: { projection: "p@1", position: 12n } })
        expect(yield* port.readCheckpoint("p@1")).toEqual(Option.some(12n))
        yield* port.write({ collection: "c", writes: [put("a", 1, { n: 2 }, meta(2, 13n))], checkpoint: { projection: "p@1", position: 11n } })
        expect(yield* port.readCheckpoint("p@1")).toEqual(Option.some(12n))
        expect((yield* port.load("c", ["a"])).get("a")?.body).toEqual({ n: 2 })
        const big = 2n ** 60n + 1n
        yield* port.commitCheckpoint({ projection: "q@1", position: big })
        expect(yield* port.readCheckpoint("q@1")).toEqual(Option.some(big))
        // Only conflicts in the batch: the checkpoint still commits.
        const r = yield* port.write({ collection: "c", writes: [put("a", 0, { n: 9 }, meta(1, 20n))], checkpoint: { projection: "p@1", position: 20n } })
        expect(r.conflicts).toEqual(["a"])
        expect(yield* port.readCheckpoint("p@1")).toEqual(Option.some(20n))
      }))
  }

  it.scoped("commits the checkpoint in the same transaction as the documents", () =>
    Effect.gen(function*() {
      const { port, raw } = yield* store({ transactions: "auto" })
      yield* Effect.promise(() => raw.collection("c").createIndex({ email: 1 }, { unique: true, sparse: true }))
      yield* port.write({ collection: "c", writes: [put("x", 0, { email: "e" }, meta(1, 1n))] })
      // The second document violates the unique index: it is refused alone; the transaction runs again
      // without it and commits the rest with the checkpoint.
      const result = yield* port.write({
        collection: "c",
        writes: [put("a", 0, { n: 1 }, meta(1, 2n)), put("b", 0, { email: "e" }, meta(1, 2n))],
        checkpoint: { projection: "p@1", position: 2n }
      })
      expect(result.conflicts).toEqual([])
      expect(result.rejected?.map((r) => r.id)).toEqual(["b"])
      expect(result.rejected?.[0]?.reason).toMatch(/unique index violation for document b/)
      expect(yield* port.readCheckpoint("p@1")).toEqual(Option.some(2n))
      expect([...(yield* port.load("c", ["a", "b"])).keys()]).toEqual(["a"])
    }))

  it.scoped("a unique-index violation refuses that document alone, with the reason; the rest of the batch applies", () =>
    Effect.gen(function*() {
      const { port, raw } = yield* store({ transactions: "never", indexes: [{ collection: "users", key: { email: 1 }, unique: true }] })
      const indexes = yield* Effect.promise(() => raw.collection("users").listIndexes().toArray())
      expect(indexes.map((i) => [i.name, i.unique === true])).toContainEqual(["email_1", true])
      yield* port.write({ collection: "users", writes: [put("u1", 0, { email: "a@x" }, meta(1, 1n))] })
      const result = yield* port.write({
        collection: "users",
        writes: [put("u2", 0, { email: "a@x" }, meta(1, 2n)), put("u3", 0, { email: "b@x" }, meta(1, 2n))]
      })
      expect(result.conflicts).toEqual([])
      expect(result.rejected?.map((r) => r.id)).toEqual(["u2"])
      expect(result.rejected?.[0]?.reason).toMatch(/unique index violation for document u2/)
      expect(result.rejected?.[0]?.reason).toMatch(/E11000/)
      expect([...(yield* port.load("users", ["u2", "u3"])).keys()]).toEqual(["u3"])
    }))

  it.scoped("refuses a body that uses a reserved field", () =>
    Effect.gen(function*() {
      const { port } = yield* store()
      const error = yield* port.write({ collection: "c", writes: [put("a", 0, { _reconciler: 1 }, meta(1))] }).pipe(Effect.flip)
      expect(error.transient).toBe(false)
      expect(error.message).toMatch(/reserved field/)
    }))

  it.scoped("keeps dead letters once, with their raw bytes", () =>
    Effect.gen(function*() {
      const { port } = yield* store()
      const letter = {
        id: "p@1:e1",
        projection: "p@1",
        eventId: "e1",
        eventType: "Credited",
        streamId: "ledger-1",
        revision: 3n,
        position: 2n ** 55n,
        data: new Uint8Array([123, 0, 255]),
        metadata: new Uint8Array([]),
        reason: "bad payload",
        at: new Date(1000)
      }
      yield* port.deadLetter(letter)
      yield* port.deadLetter({ ...letter, reason: "second time" })
      yield* port.deadLetter({ ...letter, id: "q@1:e1", projection: "q@1" })
      expect(yield* port.deadLetters("p@1")).toEqual([letter])
      yield* port.removeDeadLetter("p@1:e1")
      expect(yield* port.deadLetters("p@1")).toEqual([])
      expect((yield* port.deadLetters("q@1")).length).toBe(1)
    }))

  it.effect("fails with a clear typed error when used after its scope closed", () =>
    Effect.gen(function*() {
      const port = yield* Effect.scoped(MongoReadModelStore.make({ uri, database: freshDatabase() }))
      const error = yield* port.load("c", ["a"]).pipe(Effect.flip)
      expect(error.transient).toBe(false)
      expect(error.message).toMatch(/after its scope closed/)
      const write = yield* port.write({ collection: "c", writes: [] }).pipe(Effect.flip)
      expect(write.message).toMatch(/after its scope closed/)
    }))

  it.effect("the layer provides the port and owns the client", () =>
    Effect.gen(function*() {
      const layer = MongoReadModelStore.layer({ uri, database: freshDatabase() })
      const port = yield* Effect.scoped(Layer.build(layer).pipe(Effect.map((ctx) => ctx.unsafeMap.get(ReadModelStore.key) as ReadModelStore["Type"])))
      const error = yield* port.readCheckpoint("p").pipe(Effect.flip)
      expect(error.message).toMatch(/after its scope closed/)
    }))

  it.effect("layerConfig reads MONGODB_URI (redacted) and MONGODB_DATABASE", () =>
    Effect.gen(function*() {
      const database = freshDatabase()
      const provider = ConfigProvider.fromMap(new Map([["MONGODB_URI", uri], ["MONGODB_DATABASE", database]]))
      yield* Effect.gen(function*() {
        const port = yield* ReadModelStore
        yield* port.write({ collection: "c", writes: [put("a", 0, { n: 1 }, meta(1, 1n))] })
      }).pipe(Effect.provide(MongoReadModelStore.layerConfig()), Effect.withConfigProvider(provider))
      const stored = yield* Effect.promise(() => admin.db(database).collection("c").countDocuments())
      expect(stored).toBe(1)
      const config = yield* MongoReadModelStore.config.pipe(Effect.withConfigProvider(provider))
      expect(String(config.uri)).not.toContain("127.0.0.1")
      const missing = yield* Layer.build(MongoReadModelStore.layerConfig()).pipe(
        Effect.scoped,
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map())),
        Effect.flip
      )
      expect(missing._tag).not.toBe("StoreError")
    }))

  it.effect("a lost server is a transient error", () =>
    Effect.gen(function*() {
      const serverScope = yield* Scope.make()
      const server = yield* Scope.extend(MongoServer.make(), serverScope)
      yield* Effect.scoped(
        Effect.gen(function*() {
          const port = yield* MongoReadModelStore.make({
            uri: server.uri,
            database: "lost",
            clientOptions: { serverSelectionTimeoutMS: 300, retryWrites: false, retryReads: false }
          })
          yield* port.write({ collection: "c", writes: [put("a", 0, { n: 1 }, meta(1, 1n))] })
          yield* Scope.close(serverScope, Exit.void)
          const error = yield* port.load("c", ["a"]).pipe(Effect.flip)
          expect(error.transient).toBe(true)
        })
      )
    }))

  it("classifies driver errors", () => {
    expect(MongoReadModelStore.toStoreError("op", new MongoNetworkError("reset")).transient).toBe(true)
    const labelled = new MongoServerError({ message: "conflict", code: 112, errorLabels: ["TransientTransactionError"] })
    expect(MongoReadModelStore.toStoreError("op", labelled).transient).toBe(true)
    const retryable = new MongoServerError({ message: "stepdown", code: 11602 })
    retryable.addErrorLabel("RetryableWriteError")
    expect(MongoReadModelStore.toStoreError("op", retryable).transient).toBe(true)
    const bad = new MongoServerError({ message: "bad", code: 2 })
    const error = MongoReadModelStore.toStoreError("op", bad)
    expect(error.transient).toBe(false)
    expect(error.cause).toBe(bad)
    expect(MongoReadModelStore.toStoreError("op", new Error("x")).transient).toBe(false)
    // A bulk write reports a lost connection as a wrapped network error, without labels.
    const wrapped = Object.assign(new MongoError("connection closed"), { errorResponse: new MongoNetworkError("closed") })
    expect(MongoReadModelStore.toStoreError("op", wrapped).transient).toBe(true)
    expect(new MongoError("x")).toBeInstanceOf(Error)
  })
})

// ---- with the engine --------------------------------------------------------------

const immediate = Schedule.forever

/** The read model as stored (tombstones excluded), by id. */
const readModel = (database: string) =>
  Effect.promise(async () => {
    const docs = await admin.db(database).collection(ledger.collection).find({}).toArray()
    return Object.fromEntries(
      docs
        .filter((d) => (d[MongoReadModelStore.META_FIELD] as Document).deleted !== true)
        .map((d) => [String(d._id), { total: d.total, applied: d.applied }])
    )
  })

describe("MongoReadModelStore with the engine", () => {
  it.scoped("a crash between the documents and the checkpoint: the replay converges with no double apply", () =>
    Effect.gen(function*() {
      const history = [
        { kind: "Credited" as const, stream: 0, doc: 0, amount: 5 },
        { kind: "Credited" as const, stream: 1, doc: 1, amount: 7 },
        { kind: "Linked" as const, stream: 0, a: 0, b: 1 },
        { kind: "Credited" as const, stream: 2, doc: 0, amount: -2 },
        { kind: "Closed" as const, stream: 1, doc: 1 },
        { kind: "Credited" as const, stream: 1, doc: 2, amount: 1 }
      ]
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* appendHistory(log, history)
      const { port, database, raw } = yield* store({ transactions: "never" })
      const run = Reconciler.run(ledger, { batchSize: 2, lanes: 2, retrySchedule: immediate, resubscribeSchedule: immediate }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore, port)
      )
      yield* run
      const expected = Object.fromEntries(referenceFold(history))
      expect(yield* readModel(database)).toEqual(expected)
      // The crash: documents are durable, the checkpoint is not (as if the process died before committing it).
      yield* Effect.promise(() => raw.collection(MongoReadModelStore.CHECKPOINTS).deleteMany({}))
      yield* run
      expect(yield* readModel(database)).toEqual(expected)
      expect(yield* port.readCheckpoint("ledger@1")).toEqual(Option.some(BigInt(history.length)))
    }))

  it.scoped("a stored document that fails its Schema comes back as a typed failure: the event is dead-lettered, the document untouched", () =>
    Effect.gen(function*() {
      const history = [
        { kind: "Credited" as const, stream: 0, doc: 0, amount: 5 },
        { kind: "Credited" as const, stream: 0, doc: 1, amount: 7 }
      ]
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* appendHistory(log, history)
      const { port, database, raw } = yield* store()
      const corrupt = { _id: "doc-0", total: "not a number", applied: [], [MongoReadModelStore.META_FIELD]: { version: 1, position: null, streams: [], deleted: false } }
      yield* Effect.promise(() => raw.collection(ledger.collection).insertOne(corrupt as Document))
      yield* Reconciler.run(ledger, { retrySchedule: immediate, resubscribeSchedule: immediate }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore, port)
      )
      const letters = yield* port.deadLetters("ledger@1")
      expect(letters.map((l) => l.eventId)).toEqual(["e0"])
      expect(letters[0]!.reason).toMatch(/does not match its schema/)
      const model = yield* readModel(database)
      expect(model["doc-0"]).toEqual({ total: "not a number", applied: [] })
      expect(model["doc-1"]).toEqual({ total: 7, applied: ["e1"] })
    }))

  it.scoped("converges when the server restarts mid-run (data directory, same port)", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "store-failover-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const firstScope = yield* Scope.make()
      const secondScope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(secondScope, Exit.void).pipe(Effect.andThen(Scope.close(firstScope, Exit.void))))
      const first = yield* Scope.extend(MongoServer.make({ dataDir: dir }), firstScope)
      const history = Array.from({ length: 40 }, (_, i) => ({ kind: "Credited" as const, stream: i % 3, doc: i % 5, amount: i }))
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* appendHistory(log, history)
      const port = yield* MongoReadModelStore.make({ uri: first.uri, database: "failover", clientOptions: { serverSelectionTimeoutMS: 10_000 } })
      let writes = 0
      let restarts = 0
      const restarting: ReadModelStore["Type"] = {
        ...port,
        write: (batch) =>
          Effect.tap(port.write(batch), () =>
            ++writes === 3
              ? Effect.gen(function*() {
                // The server goes away after the third write, and comes back on the same port with its data.
                yield* Scope.close(firstScope, Exit.void)
                yield* Scope.extend(MongoServer.make({ dataDir: dir, port: first.port }), secondScope).pipe(Effect.orDie)
                restarts++
              })
              : Effect.void)
      }
      yield* Reconciler.run(ledger, { batchSize: 4, lanes: 2, retrySchedule: immediate, resubscribeSchedule: immediate }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore, restarting)
      )
      expect(restarts).toBe(1)
      const check = yield* Effect.promise(async () => {
        const client = await new MongoClient(first.uri).connect()
        try {
          return await client.db("failover").collection(ledger.collection).find({}).toArray()
        } finally {
          await client.close()
        }
      })
      const model = Object.fromEntries(check.map((d) => [String(d._id), { total: d.total, applied: d.applied }]))
      expect(model).toEqual(Object.fromEntries(referenceFold(history)))
      expect(yield* port.readCheckpoint("ledger@1")).toEqual(Option.some(BigInt(history.length)))
    }))

  it.scoped("parallel lanes moving one checkpoint: write conflicts are retried inside the store", () =>
    Effect.gen(function*() {
      const history = Array.from({ length: 1200 }, (_, i) => ({ kind: "Credited" as const, stream: i % 30, doc: i % 120, amount: 1 }))
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* appendHistory(log, history)
      const { port, database } = yield* store({ transactions: "auto" })
      const failures: Array<string> = []
      const watched: ReadModelStore["Type"] = {
        ...port,
        write: (batch) => Effect.tapError(port.write(batch), (e) => Effect.sync(() => failures.push(e.message)))
      }
      yield* Reconciler.run(ledger, { lanes: 4, batchSize: 25, retrySchedule: immediate, resubscribeSchedule: immediate }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore, watched)
      )
      // Every batch commits the checkpoint in its transaction, so lanes collide on it; the engine must not see it.
      expect(failures).toEqual([])
      expect(yield* readModel(database)).toEqual(Object.fromEntries(referenceFold(history)))
    }))

  const paramsArbitrary = fc.record({
    lanes: fc.integer({ min: 1, max: 4 }),
    batchSize: fc.integer({ min: 1, max: 6 }),
    duplicateRate: fc.constantFrom(0, 0.2),
    failureRate: fc.constantFrom(0, 0.15),
    /** Also fail some calls after they succeeded (the acknowledgement lost on the way back). */
    lostAcks: fc.boolean(),
    transactions: fc.constantFrom("auto" as const, "never" as const),
    restarts: fc.array(fc.integer({ min: 1, max: 10 }), { maxLength: 2 }),
    seed: fc.integer({ min: 1, max: 1_000_000 })
  })
  type Params = typeof paramsArbitrary extends fc.Arbitrary<infer A> ? A : never

  const scenario = (mode: "catch-up" | "persistent", history: ReadonlyArray<Step>, params: Params) =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({
        endAtHead: true,
        maxRetryCount: 1_000,
        faults: { seed: params.seed, duplicateRate: params.duplicateRate, reorderRate: mode === "persistent" ? 0.2 : undefined }
      })
      yield* appendHistory(log, history)
      const { port, database } = yield* store({ transactions: params.transactions })
      // Transient failures, before the call or after it succeeded (the acknowledgement lost).
      let state = params.seed
      const random = () => ((state = (state * 48271) % 0x7fffffff) / 0x7fffffff)
      const flaky = <A>(effect: Effect.Effect<A, StoreError>) =>
        Effect.suspend(() => {
          const r = random()
          if (r < params.failureRate / 2) return Effect.fail(new StoreError({ message: "injected before", transient: true }))
          const after = params.lostAcks && r < params.failureRate
          return Effect.flatMap(effect, (a) => (after ? Effect.fail(new StoreError({ message: "injected after", transient: true })) : Effect.succeed(a)))
        })
      const flakyPort: ReadModelStore["Type"] = {
        ...port,
        load: (c, ids) => flaky(port.load(c, ids)),
        write: (batch) => flaky(port.write(batch)),
        commitCheckpoint: (cp) => flaky(port.commitCheckpoint(cp)),
        deadLetter: (l) => flaky(port.deadLetter(l))
      }
      const options: Reconciler.RunOptions = {
        mode,
        lanes: params.lanes,
        batchSize: params.batchSize,
        retrySchedule: immediate,
        resubscribeSchedule: immediate
      }
      for (const afterWrites of params.restarts) {
        let writes = 0
        const reached = yield* Deferred.make<void>()
        const counting: ReadModelStore["Type"] = {
          ...flakyPort,
          write: (batch) => Effect.tap(flakyPort.write(batch), () => (++writes === afterWrites ? Deferred.succeed(reached, undefined) : Effect.void))
        }
        const fiber = yield* Reconciler.run(ledger, options).pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore, counting),
          Effect.fork
        )
        yield* Effect.raceFirst(Deferred.await(reached), Fiber.await(fiber))
        yield* Fiber.interrupt(fiber)
      }
      const exit = yield* Effect.exit(
        Reconciler.run(ledger, options).pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore, flakyPort)
        )
      )
      if (Exit.isFailure(exit)) throw new Error(Cause.pretty(exit.cause))
      return { port, database, log }
    })

  const numRuns = Number(process.env.PROPERTY_RUNS_MONGO ?? 25)

  const catchUpSeed = propertySeed("MongoReadModelStore catch-up")
  it.effect.prop(
    "catch-up over random histories: the read model equals the reference fold under duplicates, transient failures and restarts",
    [historyArbitrary({ maxEvents: 25, maxStreams: 4, docs: 4 }), paramsArbitrary],
    ([history, params]) =>
      Effect.scoped(
        Effect.gen(function*() {
          const { database, port } = yield* scenario("catch-up", history, params)
          // A quarantined document stops before its poison event; its later events are held.
          const expected = quarantineFold(history)
          expect(yield* readModel(database)).toEqual(Object.fromEntries(expected.docs))
          const letters = new Set((yield* port.deadLetters("ledger@1")).map((l) => `${l.document}:${l.eventId}`))
          // Exactly the blocking and undecodable events, also when a write's acknowledgement was lost and the write retried.
          expect(letters).toEqual(new Set(expected.letters.map((l) => `${l.document}:${l.eventId}`)))
          expect(yield* port.readCheckpoint("ledger@1")).toEqual(Option.some(BigInt(history.length)))
        })
      ),
    { fastCheck: { seed: catchUpSeed, numRuns } }
  )

  const persistentSeed = propertySeed("MongoReadModelStore persistent")
  it.effect.prop(
    "persistent over random histories: every event applied exactly once, per-stream order kept",
    [
      // Deletion is order-sensitive across streams, which a consumer group does not order.
      historyArbitrary({ maxEvents: 25, maxStreams: 4, docs: 4 }).map((h) =>
        h.map((step) => (step.kind === "Closed" ? { kind: "Foreign" as const, stream: step.stream } : step))
      ),
      paramsArbitrary
    ],
    ([history, params]) =>
      Effect.scoped(
        Effect.gen(function*() {
          const { database, log, port } = yield* scenario("persistent", history, params)
          // Poison quarantines its document (parked in the group); every letter ends by skip, then the held events apply.
          const parkedNow = new Set(log.parked("ledger@1").map((p) => p.event.id))
          for (const letter of yield* port.deadLetters("ledger@1")) expect(parkedNow.has(letter.eventId)).toBe(true)
          yield* skipAll(ledger, port, "persistent")
          expect(yield* port.deadLetters("ledger@1")).toEqual([])
          const expected = referenceFold(history)
          const actual = (yield* readModel(database)) as Record<string, { total: number; applied: ReadonlyArray<string> }>
          expect(Object.keys(actual).sort()).toEqual([...expected.keys()].sort())
          for (const [id, doc] of expected) {
            const body = actual[id]!
            expect(body.total).toBe(doc.total)
            expect([...body.applied].sort()).toEqual([...doc.applied].sort())
            const seen = new Map<number, number>()
            for (const eventId of body.applied) {
              const index = Number(eventId.slice(1))
              const stream = history[index]!.stream
              expect(index).toBeGreaterThan(seen.get(stream) ?? -1)
              seen.set(stream, index)
            }
          }
          // Poison ends parked (undecodable) or resolved by its letter (a document quarantined at it).
          const resolved = new Set((yield* port.resolutions("ledger@1")).map((r) => r.letter.eventId))
          for (const id of poisonIds(history)) expect(parkedNow.has(id) || resolved.has(id), `${id} parked or resolved`).toBe(true)
          expect(log.unsettled().now).toBe(0)
        })
      ),
    { fastCheck: { seed: persistentSeed, numRuns } }
  )
})
