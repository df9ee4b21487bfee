/**
 * Persistent mode after a restart: a revision an earlier run parked (recorded
 * with the stream's progress, while an earlier revision was still unapplied)
 * is never handed over again by the group. Its successors must not wait for it
 * — neither for the group nor for the timed gap fill — and it must not be
 * quarantined a second time.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit } from "effect"
import { EventSource, InMemory, ReadModelStore, Reconciler } from "../src/index.js"
import type { Step } from "./support/ledger.js"
import { appendHistory, ledger } from "./support/ledger.js"

describe("persistent mode: revisions parked by an earlier run", () => {
  it.scoped("do not hold their successors after a restart, and are parked once", () =>
    Effect.gen(function*() {
      // One stream: e0 for doc-0, e1 undecodable (poison), e2 for doc-2.
      const history: ReadonlyArray<Step> = [
        { kind: "Credited", stream: 1, doc: 0, amount: 5 },
        { kind: "Invalid", stream: 1 },
        { kind: "Credited", stream: 1, doc: 2, amount: 7 }
      ]
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      yield* appendHistory(log, history)
      const store = yield* InMemory.makeStore()
      const id = `${ledger.name}@${ledger.version}`
      const stream = "ledger-1"

      // First run: e1 is parked and recorded while e0's write is still pending; then the
      // store fails for good (the process dies) before e0 is applied.
      const parkedRecorded = yield* Deferred.make<void>()
      const first: ReadModelStore.ReadModelStore["Type"] = {
        ...store.port,
        write: (batch) =>
          Deferred.await(parkedRecorded).pipe(
            Effect.zipRight(Effect.fail(new ReadModelStore.StoreError({ message: "crashed", transient: false }))),
            Effect.zipRight(store.port.write(batch))
          ),
        commitProgress: (projection, progress, gaps) =>
          store.port.commitProgress(projection, progress, gaps).pipe(
            Effect.tap(() => progress.some((p) => p.parked?.includes(1n)) ? Deferred.succeed(parkedRecorded, undefined) : Effect.void)
          )
      }
      const crashed = yield* Reconciler.run(ledger, { mode: "persistent", lanes: 1 }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, first),
        Effect.exit
      )
      expect(Exit.isFailure(crashed)).toBe(true)
      expect(log.parked(id).map((p) => p.event.id)).toEqual(["e1"])
      const recorded = store.progress(id).get(stream)!
      expect(recorded.revision).toBe(-1n)
      expect(recorded.parked).toEqual([1n])

      // Second run: the group redelivers e0 and e2, never e1. No gap fill can help (it
      // would fire only after an hour, and the clock does not move): e2 goes on after e0.
      yield* Reconciler.run(ledger, { mode: "persistent", lanes: 1, fillAfter: "1 hour" }).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, store.port)
      )
      const bodies = Object.fromEntries([...store.documents(ledger.collection)].map(([key, doc]) => [key, doc.body]))
      expect(bodies).toEqual({
        "doc-0": { total: 5, applied: ["e0"] },
        "doc-2": { total: 7, applied: ["e2"] }
      })
      // Parked once, not read back from the stream and dead-lettered as well.
      expect(log.parked(id).map((p) => p.event.id)).toEqual(["e1"])
      expect(store.letters()).toEqual([])
      expect(store.progress(id).get(stream)).toEqual({ stream, revision: 2n, parked: [1n] })
      expect(log.unsettled().now).toBe(0)
    }), 15_000)
})
