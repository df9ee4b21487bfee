/**
 * Lanes own their documents: however many lanes run in parallel, two writes of
 * one document are never in flight at once (so writes never contend, and no
 * document is shared by every lane, not even a checkpoint).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
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
})
