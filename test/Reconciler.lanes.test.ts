/**
 * Lanes own their documents: however many lanes run in parallel, two writes of
 * one document are never in flight at once (so writes never contend, and no
 * document is shared by every lane, not even a checkpoint).
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import { EventSource, InMemory, ReadModelStore, Reconciler } from "../src/index.js"
import type { Step } from "./support/ledger.js"
import { appendHistory, ledger, referenceFold } from "./support/ledger.js"

const history: ReadonlyArray<Step> = Array.from({ length: 800 }, (_, i) =>
  i % 5 === 2
    ? { kind: "Linked", stream: i % 7, a: i % 13, b: (i * 7 + 3) % 13 }
    : { kind: "Credited", stream: i % 7, doc: (i * 3) % 13, amount: i % 17 })

describe("Reconciler lanes", () => {
  it.scoped.each([1, 4, 7])("%i lanes: no document is ever written by two batches at once", (lanes) =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true, chunkSize: 32 })
      yield* appendHistory(log, history)
      const store = yield* InMemory.makeStore()
      const writing = new Set<string>()
      const overlaps: Array<string> = []
      let active = 0
      let mostActive = 0
      const port: ReadModelStore.ReadModelStore["Type"] = {
        ...store.port,
        write: (batch) =>
          Effect.gen(function*() {
            // The checkpoint is not a document the lanes write: only the committer commits it.
            if (batch.checkpoint !== undefined) overlaps.push(`checkpoint ${batch.checkpoint.projection} in a lane's write`)
            for (const w of batch.writes) {
              if (writing.has(w.id)) overlaps.push(w.id)
              writing.add(w.id)
            }
            mostActive = Math.max(mostActive, ++active)
            // The write is "on the wire": every other lane gets to run meanwhile.
            for (let i = 0; i < 5; i++) yield* Effect.yieldNow()
            active--
            for (const w of batch.writes) writing.delete(w.id)
            return yield* store.port.write(batch)
          })
      }
      yield* Reconciler.run(ledger, { lanes, batchSize: 4 }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, port)
      )
      expect(overlaps).toEqual([])
      expect(Object.fromEntries([...store.documents(ledger.collection)].map(([id, doc]) => [id, doc.body])))
        .toEqual(Object.fromEntries(referenceFold(history)))
      // The test can fail: with several lanes, writes really were in flight together.
      if (lanes > 1) expect(mostActive).toBeGreaterThan(1)
      expect(store.checkpoint("ledger@1")).toBe(BigInt(history.length))
    }))

  it.scoped.each([10, 50])("under a backlog a lane's batches fill to batchSize (%i)", (batchSize) =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true, chunkSize: 64 })
      const credits: ReadonlyArray<Step> = Array.from({ length: 2000 }, (_, i) => ({ kind: "Credited", stream: i % 7, doc: i % 40, amount: 1 }))
      yield* appendHistory(log, credits)
      const store = yield* InMemory.makeStore()
      const sizes: Array<number> = []
      const port: ReadModelStore.ReadModelStore["Type"] = {
        ...store.port,
        // One write per batch: the number of events a batch folded is what its documents gained.
        write: (batch) =>
          Effect.sync(() => {
            let events = 0
            for (const w of batch.writes) {
              const before = (store.stored(ledger.collection).get(w.id)?.body as { applied: ReadonlyArray<string> } | undefined)?.applied.length ?? 0
              events += (w.body as { applied: ReadonlyArray<string> }).applied.length - before
            }
            sizes.push(events)
          }).pipe(Effect.zipRight(store.port.write(batch)))
      }
      yield* Reconciler.run(ledger, { lanes: 2, batchSize }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, port)
      )
      const full = sizes.filter((n) => n === batchSize).length
      // All but the last batch of each lane are full.
      expect(full).toBeGreaterThanOrEqual(sizes.length - 2)
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(credits.length)
    }))

  it.live("caught up, a lane writes each event at once: no waiting for a batch to fill", () =>
    Effect.scoped(Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog() // live: the subscription waits for new events
      const store = yield* InMemory.makeStore()
      let written = yield* Deferred.make<number>()
      const port: ReadModelStore.ReadModelStore["Type"] = {
        ...store.port,
        write: (batch) =>
          store.port.write(batch).pipe(Effect.tap(() => Deferred.succeed(written, batch.writes.length)))
      }
      const engine = yield* Reconciler.run(ledger, { lanes: 2, batchSize: 100 }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, port),
        Effect.forkScoped
      )
      for (let i = 0; i < 20; i++) {
        written = yield* Deferred.make<number>()
        const started = performance.now()
        yield* log.append(`ledger-${i % 3}`, [{ id: `e${i}`, type: "Credited", data: { doc: `doc-${i % 5}`, amount: 1 } }])
        expect(yield* Deferred.await(written)).toBe(1)
        // A batch of one, written without lingering (the lanes' safety net is 1 s).
        expect(performance.now() - started).toBeLessThan(900)
      }
      yield* Fiber.interrupt(engine)
    })))
})
