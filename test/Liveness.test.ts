/**
 * Liveness against the head, on the TestClock: the stall detector alone, and
 * the monitor supervising runs over the in-memory ports — the real engine
 * behind a subscription that goes silent without an error, and a run that
 * reports progress through the engine's callback.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Effect, Fiber, FastCheck as fc, TestClock } from "effect"
import { EventSource } from "../src/EventSource.js"
import * as InMemory from "../src/InMemory.js"
import * as Monitor from "../src/Monitor.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import * as Reconciler from "../src/Reconciler.js"
import { distance, StallDetector } from "../src/internal/liveness.js"
import { ledger } from "./support/ledger.js"

describe("StallDetector", () => {
  it("stalls only when behind and not moving for stallAfter; restarts first, reports unhealthy second", () => {
    const d = new StallDetector(1000, 0)
    // the first sight of a mark is movement
    expect(d.observe({ now: 0, marks: [1n], behind: true })).toMatchObject({ stalled: false, stalledForMs: 0 })
    expect(d.observe({ now: 999, marks: [1n], behind: true })).toMatchObject({ stalled: false, stalledForMs: 999 })
    expect(d.observe({ now: 1000, marks: [1n], behind: true })).toMatchObject({
      stalled: true,
      began: true,
      resubscribe: true,
      unhealthy: false,
      resubscriptions: 1
    })
    expect(d.observe({ now: 1500, marks: [1n], behind: true })).toMatchObject({ stalled: true, began: false, resubscribe: false, unhealthy: false })
    // a restart had stallAfter to help and did not
    expect(d.observe({ now: 2000, marks: [1n], behind: true })).toMatchObject({ resubscribe: true, unhealthy: true, resubscriptions: 2 })
    expect(d.observe({ now: 2500, marks: [1n], behind: true })).toMatchObject({ resubscribe: false, unhealthy: true })
    // marks that fall back (a restarted run counting from zero) are not movement
    expect(d.observe({ now: 2600, marks: [0n], behind: true })).toMatchObject({ stalled: true, unhealthy: true })
    expect(d.observe({ now: 2700, marks: [2n], behind: true })).toMatchObject({ stalled: false, ended: true, unhealthy: false })
  })

  it("never stalls while caught up, however long it is idle", () => {
    const d = new StallDetector(1000, 0)
    for (let now = 0; now < 100_000; now += 250) {
      expect(d.observe({ now, marks: [5n, undefined], behind: false }).stalled).toBe(false)
    }
  })

  it.prop(
    "stalled exactly when behind and unmoved for stallAfter",
    [fc.array(fc.record({ dt: fc.integer({ min: 0, max: 700 }), moves: fc.boolean(), behind: fc.boolean() }), { maxLength: 200 })],
    ([steps]) => {
      const stallAfter = 1000
      const d = new StallDetector(stallAfter, 0)
      let now = 0
      let mark = 0
      let since = 0
      let first = true
      for (const step of steps) {
        now += step.dt
        if (step.moves) mark++
        const verdict = d.observe({ now, marks: [mark], behind: step.behind })
        if (step.moves || !step.behind || first) since = now
        first = false
        expect(verdict.stalled).toBe(now - since >= stallAfter)
        if (verdict.unhealthy) expect(verdict.stalled).toBe(true)
      }
    }
  )

  it("distance: head minus checkpoint, head + 1 without one, 0 once reached", () => {
    expect(distance(1n, 51n)).toBe(50n)
    expect(distance(undefined, 0n)).toBe(1n)
    expect(distance(60n, 51n)).toBe(0n)
    expect(distance(undefined, undefined)).toBe(0n)
  })
})

const credits = (count: number) =>
  Array.from({ length: count }, (_, i) => ({ type: "Credited", data: { doc: `doc-${i % 5}`, amount: 1 } }))

/**
 * Lets the forked fibers run (the in-memory ports need no clock): Effect's
 * scheduler hands long runs over to the event loop, so turn it too.
 */
const settle = Effect.repeatN(
  Effect.yieldNow().pipe(Effect.zipRight(Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve))))),
  50
)

describe("Monitor on the TestClock", () => {
  it.scoped("a subscription that goes silent without an error: stalled after stallAfter, restarted, unhealthy after a restart did not help, healthy once it delivers again", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ faults: { silentAfter: 1 } })
      const store = yield* InMemory.makeStore()
      yield* log.append("ledger-1", credits(51))
      const monitor = yield* Monitor.make([ledger], { mode: "catch-up", stallAfter: "5 seconds", interval: "1 second", readyDistance: 0 }).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port)
      )
      let runs = 0
      const engine = yield* monitor.supervise([ledger], (onProgress) => {
        runs++
        return Reconciler.run(ledger, { commitInterval: "1 second", stallAfter: "1 hour", onProgress })
      }).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port),
        Effect.forkScoped
      )
      const state = () => monitor.snapshot.pipe(Effect.map((states) => states[0]!))
      const tick = (seconds: number) =>
        Effect.gen(function*() {
          for (let i = 0; i < seconds; i++) {
            yield* settle
            yield* TestClock.adjust("1 second")
          }
          yield* settle
        })

      const untilState = (what: string, accept: (s: Monitor.ProjectionState) => boolean, most: number) =>
        Effect.gen(function*() {
          for (let waited = 0; ; waited++) {
            if (accept(yield* state())) return waited
            if (waited === most) break
            yield* tick(1)
          }
          return yield* Effect.dieMessage(`not ${what} within ${most} s: ${JSON.stringify(yield* monitor.snapshot, (_, v) => typeof v === "bigint" ? String(v) : v)}`)
        })
      // One delivery, then silence: once it is applied and committed, nothing moves any more. (On this
      // clock the engine may hold it in a lane's batch until a first stall's restart drains it: that
      // commit is movement too.)
      yield* untilState("committed at 1", (s) => s.checkpoint === 1n && store.checkpoint("ledger@1") === 1n, 20)
      const committedAt = yield* Clock.currentTimeMillis
      yield* tick(1)
      expect(yield* state()).toMatchObject({ running: true, head: 51n, checkpoint: 1n, behind: 50n, stalled: false })
      expect((yield* monitor.health).ok).toBe(true)
      expect((yield* monitor.readiness).ok).toBe(false)

      // stallAfter is 5 s from the last movement, which was judged at most a second before it was seen here
      yield* tick(2)
      expect(yield* state(), `at ${yield* Clock.currentTimeMillis}: committed by ${committedAt}`).toMatchObject({ stalled: false })
      const stallsBefore = (yield* state()).stalls
      const restartsBefore = (yield* state()).restarts
      const runsBefore = runs
      yield* untilState("stalled", (s) => s.stalled, 4)
      const stalled = yield* state()
      expect(stalled).toMatchObject({ stalled: true, stalls: stallsBefore + 1, restarts: restartsBefore + 1, unhealthy: false })
      expect(stalled.behind).toBe(50n)
      expect(runs).toBe(runsBefore + 1) // restarted once: drained, resubscribed from its checkpoint
      expect((yield* monitor.health).ok).toBe(true) // resolved by resubscribing before it is reported

      // unhealthy once the restart has had stallAfter (5 s) to help
      const waited = yield* untilState("unhealthy", (s) => s.unhealthy, 7)
      expect(waited).toBeGreaterThanOrEqual(4)
      expect(yield* state()).toMatchObject({ stalled: true, unhealthy: true, stalls: stallsBefore + 1, restarts: restartsBefore + 2 })
      expect(runs).toBe(runsBefore + 2)
      const health = yield* monitor.health
      expect(health.ok).toBe(false)
      expect(health.projections[0]!.reason).toMatch(/stalled for \d+ ms, 50 positions behind the head/)

      log.resume()
      yield* tick(3)
      expect(store.checkpoint("ledger@1")).toBe(51n)
      expect(yield* state()).toMatchObject({ stalled: false, unhealthy: false, behind: 0n, oldestUnappliedAgeMs: 0 })
      expect((yield* monitor.health).ok).toBe(true)
      expect((yield* monitor.readiness).ok).toBe(true)
      yield* Fiber.interrupt(engine)
    }))

  it.scoped("judges by the engine's progress: an idle, caught-up projection is never stalled", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog()
      const store = yield* InMemory.makeStore()
      yield* log.append("ledger-1", credits(10))
      const monitor = yield* Monitor.make([ledger], { mode: "catch-up", stallAfter: "3 seconds", interval: "1 second" }).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port)
      )
      let report: ((progress: Monitor.Progress) => Effect.Effect<void>) | undefined
      const progress = (checkpoint: bigint | undefined, at: number): Monitor.Progress => ({
        projection: "ledger@1",
        mode: "catch-up",
        checkpoint,
        received: checkpoint,
        inFlight: 0,
        processed: Number(checkpoint ?? 0n),
        skipped: 0,
        duplicates: 0,
        deadLettered: 0,
        lastSettledAt: at
      })
      yield* monitor.supervise([ledger], (onProgress) => {
        report = onProgress
        return Effect.never
      }).pipe(Effect.forkScoped)
      yield* settle
      expect((yield* monitor.snapshot)[0]).toMatchObject({ lastSettledAgoMs: undefined }) // nothing settled yet
      yield* TestClock.adjust("1 second")
      yield* report!(progress(4n, 1000))
      yield* TestClock.adjust("2 seconds")
      yield* settle
      const behind = (yield* monitor.snapshot)[0]!
      expect(behind).toMatchObject({ checkpoint: 4n, behind: 6n, stalled: false, inFlight: 0, lastSettledAgoMs: 2000 })
      expect(behind.oldestUnappliedAgeMs).toBeTypeOf("number")
      yield* report!(progress(10n, 2000))
      for (let i = 0; i < 60; i++) {
        yield* TestClock.adjust("1 second")
        yield* settle
        expect((yield* monitor.snapshot)[0]).toMatchObject({ behind: 0n, stalled: false, oldestUnappliedAgeMs: 0 })
      }
    }))
})
