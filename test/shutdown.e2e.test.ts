/**
 * Graceful shutdown, proven end to end: the service runs as the README tells
 * operators to run it — the compiled `reconciler` bin itself (`reconciler run`),
 * signalled directly, no wrapper — against the embedded servers running in
 * another child process (`reconciler embedded`), through the real clients,
 * while events keep coming.
 *
 * The projection is the test ledger (test/support/ledger.ts): every document
 * lists the ids of the events applied to it, in order, so a lost, doubled or
 * reordered event shows in the read model.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import type { Child } from "./support/child.js"
import { alive, BIN, descendants, spawn, until } from "./support/child.js"
import { ledgerViews, referenceFold } from "./support/e2e.js"

const DRAIN_TIMEOUT_MS = 10_000

/**
 * The embedded servers in their own process, the service's command and
 * environment, and the test's own clients and views of the data.
 */
const harness = (mode: "catch-up" | "persistent") =>
  Effect.gen(function*() {
    // ---- the servers, in their own process ---------------------------------
    // A crashed service's open transaction is aborted after 3 s instead of MongoDB's 60.
    const servers = yield* spawn(BIN, [
      "embedded",
      "--eventstore-port",
      "0",
      "--mongo-port",
      "0",
      "--transaction-lifetime-limit-seconds",
      "3"
    ])
    const eventStoreUri = (yield* servers.line(/EventStoreDB listening on (\S+)/))[1]!
    const mongoUri = (yield* servers.line(/MongoDB listening on (\S+)/))[1]!
    const env = {
      EVENTSTORE_CONNECTION_STRING: eventStoreUri,
      MONGODB_URI: mongoUri,
      MONGODB_DATABASE: "shutdown_e2e",
      RECONCILER_LANES: "3",
      RECONCILER_BATCH_SIZE: "10",
      RECONCILER_COMMIT_INTERVAL: "50 millis",
      RECONCILER_DRAIN_TIMEOUT: `${DRAIN_TIMEOUT_MS} millis`,
      RECONCILER_EMBEDDED: undefined,
      RECONCILER_MODE: mode
    }
    /** The service, once it runs (its signal handlers are installed before it logs). */
    const service = () =>
      spawn(BIN, ["run", "--module", "test/support/ledger.ts"], env).pipe(
        Effect.tap((child) => child.line(/reconciling ledger/))
      )

    // ---- the test's own clients --------------------------------------------
    const { checkpoint, append, recorded, readModel, head } = yield* ledgerViews(eventStoreUri, mongoUri, "shutdown_e2e")
    return { servers, service, checkpoint, append, recorded, readModel, head }
  })

describe("graceful shutdown, end to end", () => {
  it.scopedLive("SIGTERM drains and commits; SIGKILL mid-batch loses nothing; restarts converge with no event applied twice", () =>
    Effect.gen(function*() {
      const { servers, service, checkpoint, append, recorded, readModel, head } = yield* harness("catch-up")
      const converged = (child: Child) =>
        Effect.gen(function*() {
          const target = yield* head
          // After a crash, a transaction the dead process left open keeps its documents
          // (the checkpoint among them) locked until the server aborts it, as MongoDB
          // does after transactionLifetimeLimitSeconds (3 s here): allow for that.
          yield* until("the checkpoint to reach the head", Effect.map(checkpoint, (c) => c >= target), {
            attempts: 1000,
            interval: "100 millis"
          })
          yield* child.kill("SIGTERM")
          expect(yield* child.exit()).toEqual({ code: 0, signal: null })
          const events = yield* recorded
          const expected = referenceFold(events)
          expect(yield* readModel).toEqual(expected)
          // no event applied twice (the reference has each id once per document it touches)
          for (const doc of Object.values(yield* readModel)) expect(new Set(doc.applied).size).toBe(doc.applied.length)
          return events.length
        })

      // ---- 1. SIGTERM while events are in flight ------------------------------
      yield* append(1500, 1)
      const writer = yield* Effect.fork(append(1000, 2)) // keeps appending while the service runs
      const first = yield* service()
      yield* until("the service to be under way", Effect.map(checkpoint, (c) => c >= 200n))
      const before = yield* checkpoint
      const stillBehind = (yield* head) > before
      const tree = descendants(first.process.pid!)
      const stopping = Date.now()
      yield* first.kill("SIGTERM")
      const exit = yield* first.exit(`${DRAIN_TIMEOUT_MS * 2} millis`)
      const took = Date.now() - stopping
      expect(stillBehind).toBe(true)
      expect(exit).toEqual({ code: 0, signal: null })
      expect(took).toBeLessThan(DRAIN_TIMEOUT_MS)
      expect(first.output()).toMatch(/reconciler: SIGTERM: stopping — draining/)
      expect(tree.filter(alive)).toEqual([]) // nothing it started outlives it
      // The checkpoint was committed, and the read model holds exactly the events up to it.
      const committed = yield* checkpoint
      expect(committed).toBeGreaterThanOrEqual(before)
      const upTo = (yield* recorded).filter((e) => e.position <= committed)
      expect(yield* readModel).toEqual(referenceFold(upTo))

      // ---- 2. a restart converges -----------------------------------------------
      yield* Fiber.join(writer)
      const total = yield* converged(yield* service())
      expect(total).toBe(2500)

      // ---- 3. SIGKILL mid-batch, then a restart converges -------------------------
      yield* append(1500, 3)
      const third = yield* service()
      const from = yield* checkpoint
      yield* until("the service to apply part of the backlog", Effect.map(checkpoint, (c) => c >= from + 150n))
      yield* third.kill("SIGKILL")
      expect((yield* third.exit()).signal).toBe("SIGKILL")
      expect(yield* checkpoint).toBeLessThan(yield* head) // it really was cut off mid-stream
      expect(yield* converged(yield* service())).toBe(4000)

      // ---- the servers stop cleanly on SIGTERM too ---------------------------------
      yield* servers.kill("SIGTERM")
      expect(yield* servers.exit()).toEqual({ code: 0, signal: null })
    }), { timeout: 180_000 })
  it.scopedLive("persistent mode: SIGTERM in flight exits 0 within the drain timeout; a restart converges, nothing lost or doubled", () =>
    Effect.gen(function*() {
      const { service, append, recorded, readModel } = yield* harness("persistent")
      /** Per document: the total and the applied ids as a set (a consumer group keeps each stream's order only). */
      const unordered = (model: Record<string, { total: number; applied: Array<string> }>) =>
        Object.fromEntries(Object.entries(model).map(([id, doc]) => [id, { total: doc.total, applied: [...doc.applied].sort() }]))
      const appliedCount = readModel.pipe(
        Effect.map((model) => Object.values(model).reduce((n, doc) => n + doc.applied.length, 0))
      )
      yield* append(1500, 4)
      const expectedParts = Object.values(referenceFold(yield* recorded)).reduce((n, doc) => n + doc.applied.length, 0)

      const first = yield* service()
      yield* until("the group to be under way", Effect.map(appliedCount, (n) => n >= 200))
      const stopping = Date.now()
      yield* first.kill("SIGTERM")
      expect(yield* first.exit(`${DRAIN_TIMEOUT_MS * 2} millis`)).toEqual({ code: 0, signal: null })
      expect(Date.now() - stopping).toBeLessThan(DRAIN_TIMEOUT_MS)
      expect(yield* appliedCount).toBeLessThan(expectedParts) // it was stopped mid-stream

      const second = yield* service()
      yield* until("the read model to hold every event", Effect.map(appliedCount, (n) => n >= expectedParts), { attempts: 1200 })
      yield* second.kill("SIGTERM")
      expect(yield* second.exit()).toEqual({ code: 0, signal: null })
      const model = yield* readModel
      expect(unordered(model)).toEqual(unordered(referenceFold(yield* recorded)))
      for (const doc of Object.values(model)) expect(new Set(doc.applied).size).toBe(doc.applied.length)
    }), { timeout: 120_000 })
})
