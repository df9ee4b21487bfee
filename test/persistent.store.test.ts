/**
 * The stores' per-stream progress and skipped gaps (persistent mode): the
 * in-memory store and MongoDB through the real driver (embedded server, or
 * `MONGODB_URI`). Progress never moves backwards, concurrent first commits of
 * one stream keep the highest, parked revisions accumulate, gaps are recorded
 * once, and a projection sees only its own.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { MongoClient } from "mongodb"
import * as MongoServer from "../src/embedded/MongoServer.js"
import { InMemory } from "../src/index.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import type { ReadModelStore, SkippedGap } from "../src/ReadModelStore.js"

let scope: Scope.CloseableScope
let uri: string
let admin: MongoClient
const databases: Array<string> = []

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  uri = process.env.MONGODB_URI ?? (await Effect.runPromise(Scope.extend(MongoServer.make(), scope))).uri
  admin = await new MongoClient(uri).connect()
})

afterAll(async () => {
  for (const db of databases) await admin?.db(db).dropDatabase().catch(() => undefined)
  await admin?.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
})

const stores: ReadonlyArray<readonly [string, Effect.Effect<ReadModelStore["Type"], unknown, Scope.Scope>]> = [
  ["in-memory", InMemory.makeStore().pipe(Effect.map((s) => s.port))],
  [
    "MongoDB",
    Effect.suspend(() => {
      const database = `progress_${process.pid}_${databases.length + 1}`
      databases.push(database)
      return MongoReadModelStore.make({ uri, database })
    })
  ]
]

const gap = (stream: string, from: bigint, to: bigint): SkippedGap => ({
  projection: "p@1",
  stream,
  from,
  to,
  reason: `revisions ${from}…${to} are gone`,
  at: new Date(1_700_000_000_000)
})

describe.each(stores)("stream progress (%s)", (_, make) => {
  it.scoped("moves forward only; parked revisions accumulate; absent streams are absent", () =>
    Effect.gen(function*() {
      const store = yield* make
      expect((yield* store.loadProgress("p@1", ["a", "b"])).size).toBe(0)
      yield* store.commitProgress("p@1", [{ stream: "a", revision: 4n }, { stream: "b", revision: 0n, parked: [0n] }])
      yield* store.commitProgress("p@1", [{ stream: "a", revision: 2n, parked: [1n] }])
      yield* store.commitProgress("p@1", [{ stream: "b", revision: 7n, parked: [0n, 5n] }])
      const loaded = yield* store.loadProgress("p@1", ["a", "b", "c"])
      expect(loaded.get("a")?.revision).toBe(4n)
      expect([...(loaded.get("a")?.parked ?? [])]).toEqual([1n])
      expect(loaded.get("b")?.revision).toBe(7n)
      expect([...(loaded.get("b")?.parked ?? [])].sort()).toEqual([0n, 5n])
      expect(loaded.has("c")).toBe(false)
      // Another projection's progress is its own.
      expect((yield* store.loadProgress("q@1", ["a"])).size).toBe(0)
    }))

  it.scoped("concurrent commits of one stream (first ones included) keep the highest", () =>
    Effect.gen(function*() {
      const store = yield* make
      const revisions = Array.from({ length: 12 }, (_, i) => BigInt((i * 7) % 12))
      yield* Effect.forEach(revisions, (revision) => store.commitProgress("p@1", [{ stream: "x-1", revision }]), {
        concurrency: "unbounded",
        discard: true
      })
      expect((yield* store.loadProgress("p@1", ["x-1"])).get("x-1")?.revision).toBe(11n)
    }))

  it.scoped("gaps are recorded once, oldest first, with their reason", () =>
    Effect.gen(function*() {
      const store = yield* make
      yield* store.commitProgress("p@1", [{ stream: "a", revision: 9n }], [gap("a", 0n, 4n)])
      yield* store.commitProgress("p@1", [{ stream: "a", revision: 9n }], [gap("a", 0n, 4n)])
      yield* store.commitProgress("p@1", [{ stream: "b", revision: 3n }], [{ ...gap("b", 1n, 2n), at: new Date(1_700_000_001_000) }])
      const gaps = yield* store.gaps("p@1")
      expect(gaps.map((g) => [g.stream, g.from, g.to])).toEqual([["a", 0n, 4n], ["b", 1n, 2n]])
      expect(gaps[0]!.reason).toContain("gone")
      expect(yield* store.gaps("q@1")).toEqual([])
    }))
})
