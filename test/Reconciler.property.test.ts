/**
 * The engine's guarantees over random histories: random lane counts and batch
 * sizes, duplicate and reordered deliveries, dropped subscriptions, transient
 * store failures, and random stops (graceful interruptions and crashes), each
 * followed by a restart.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, FastCheck as fc, Fiber, Schedule } from "effect"
import { EventSource, InMemory, ReadModelStore, Reconciler } from "../src/index.js"
import type { Step } from "./support/ledger.js"
import { appendHistory, historyArbitrary, ledger, poisonIds, propertySeed, quarantineFold, referenceFold } from "./support/ledger.js"
import { skipAll } from "./support/quarantine.js"

const stopArbitrary = fc.record({
  afterCalls: fc.integer({ min: 1, max: 12 }),
  kind: fc.constantFrom("interrupt" as const, "crash" as const)
})

const paramsArbitrary = fc.record({
  lanes: fc.integer({ min: 1, max: 5 }),
  batchSize: fc.integer({ min: 1, max: 8 }),
  laneBuffer: fc.integer({ min: 1, max: 8 }),
  // tiny caches evict documents a batch is about to fold onto
  cacheSize: fc.constantFrom(1, 2, 10_000),
  duplicateRate: fc.constantFrom(0, 0.1, 0.3),
  dropRate: fc.constantFrom(0, 0, 0.05),
  transientFailureRate: fc.constantFrom(0, 0.1, 0.25),
  lostAcknowledgementRate: fc.constantFrom(0, 0, 0.15),
  stops: fc.array(stopArbitrary, { maxLength: 3 }),
  seed: fc.integer({ min: 1, max: 1_000_000 })
})
type Params = typeof paramsArbitrary extends fc.Arbitrary<infer A> ? A : never

const immediate = Schedule.forever

/** The documents an appended step touches (for the checkpoint invariant). */
const keysOf = (step: Step): ReadonlyArray<string> => {
  switch (step.kind) {
    case "Credited":
    case "Closed":
    case "Exploded":
      return [`doc-${step.doc}`]
    case "Linked":
      return [`doc-${step.a}`, `doc-${step.b}`]
    default:
      return []
  }
}

/**
 * Runs the engine over `history` with the given stops, then once more to the end,
 * and returns the store and log for checking.
 */
const scenario = (mode: "catch-up" | "persistent", history: ReadonlyArray<Step>, params: Params) =>
  Effect.gen(function*() {
    const violations: Array<string> = []
    const log = yield* InMemory.makeEventLog({
      endAtHead: true,
      maxRetryCount: 1_000,
      faults: {
        seed: params.seed,
        duplicateRate: params.duplicateRate,
        dropRate: params.dropRate,
        reorderRate: mode === "persistent" ? 0.2 : undefined
      }
    })
    yield* appendHistory(log, history)
    const poison = new Set(poisonIds(history))
    const quarantined = quarantineFold(history)
    const store = yield* InMemory.makeStore({
      seed: params.seed + 1,
      transientFailureRate: params.transientFailureRate,
      lostAcknowledgementRate: params.lostAcknowledgementRate,
      // The checkpoint is never ahead of durably written documents, dead letters or held events.
      onCheckpoint: (checkpoint, s) => {
        const stored = s.stored(ledger.collection)
        const letters = new Set(s.letters().map((l) => `${l.document}:${l.eventId}`))
        const held = new Set(s.held().map((h) => `${h.document}:${h.eventId}`))
        history.forEach((step, index) => {
          const position = BigInt(index + 1)
          if (position > checkpoint.position) return
          const id = `e${index}`
          if (step.kind === "Invalid" || (mode === "persistent" && poison.has(id))) {
            if (mode === "catch-up" && !letters.has(`undefined:${id}`)) {
              violations.push(`checkpoint ${checkpoint.position} passed ${id} before its dead letter`)
            }
            return
          }
          for (const key of keysOf(step)) {
            const what = mode === "catch-up" ? quarantined.outcome.get(key)?.get(id) : "applied"
            if (what === "blocking" && !letters.has(`${key}:${id}`)) {
              violations.push(`checkpoint ${checkpoint.position} passed ${id} before quarantining ${key}`)
            } else if (what === "held" && !held.has(`${key}:${id}`)) {
              violations.push(`checkpoint ${checkpoint.position} passed ${id} before holding it for ${key}`)
            } else if (what === "applied") {
              const marker = stored.get(key)?.meta.position
              if (marker === undefined || marker < position) {
                violations.push(`checkpoint ${checkpoint.position} passed ${id} not yet applied to ${key}`)
              }
            }
          }
        })
      }
    })
    const options: Reconciler.RunOptions = {
      mode,
      lanes: params.lanes,
      batchSize: params.batchSize,
      laneBuffer: params.laneBuffer,
      cacheSize: params.cacheSize,
      retrySchedule: immediate,
      resubscribeSchedule: immediate
    }
    for (const stop of params.stops) {
      // A crash: from the stop on, every store call fails for good, as if the process died.
      let crashed = false
      let calls = 0
      const reached = yield* Deferred.make<void>()
      const gate = <A>(effect: Effect.Effect<A, ReadModelStore.StoreError>) =>
        Effect.suspend(() => {
          if (crashed) return Effect.fail(new ReadModelStore.StoreError({ message: "crashed", transient: false }))
          if (++calls === stop.afterCalls) Deferred.unsafeDone(reached, Effect.void)
          return effect
        })
      const port: ReadModelStore.ReadModelStore["Type"] = {
        ...store.port,
        write: (batch) => gate(store.port.write(batch)),
        commitCheckpoint: (checkpoint) => gate(store.port.commitCheckpoint(checkpoint)),
        deadLetter: (letter) => gate(store.port.deadLetter(letter))
      }
      const fiber = yield* Reconciler.run(ledger, options).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, port),
        Effect.fork
      )
      yield* Effect.raceFirst(Deferred.await(reached), Fiber.await(fiber))
      if (stop.kind === "interrupt") {
        yield* Fiber.interrupt(fiber)
      } else {
        crashed = true
        yield* Fiber.await(fiber)
      }
    }
    yield* Reconciler.run(ledger, options).pipe(
      Effect.provideService(EventSource.EventSource, log.port),
      Effect.provideService(ReadModelStore.ReadModelStore, store.port)
    )
    return { store, log, violations, poison }
  })

const numRuns = Number(process.env.PROPERTY_RUNS ?? 60)

describe("Reconciler over random histories", () => {
  const catchUpSeed = propertySeed("catch-up")
  it.effect.prop(
    "catch-up: the read model equals the reference fold with poison quarantining its document; no event applied twice; checkpoint never ahead",
    [historyArbitrary({ maxEvents: 60, maxStreams: 6, docs: 6 }), paramsArbitrary],
    ([history, params]) =>
      Effect.scoped(Effect.gen(function*() {
        const { log, poison, store, violations } = yield* scenario("catch-up", history, params)
        expect(violations).toEqual([])
        const expected = quarantineFold(history)
        const actual = new Map([...store.documents(ledger.collection)].map(([id, doc]) => [id, doc.body]))
        // `applied` lists every event id in the order applied: a doubled, lost or
        // reordered event would show here; a quarantined document stops before its poison event.
        expect(Object.fromEntries(actual)).toEqual(Object.fromEntries(expected.docs))
        // Each quarantined document has one letter (its first poison event), each undecodable event one;
        // the events of quarantined documents after it are held, in order.
        const letters = store.letters()
        expect(new Set(letters.map((l) => `${l.document}:${l.eventId}`))).toEqual(
          new Set(expected.letters.map((l) => `${l.document}:${l.eventId}`))
        )
        const held = new Set(store.held().map((h) => `${h.document}:${h.eventId}`))
        const expectedHeld = new Set<string>()
        for (const [doc, events] of expected.outcome) {
          for (const [id, what] of events) if (what === "held") expectedHeld.add(`${doc}:${id}`)
        }
        expect(held).toEqual(expectedHeld)
        for (const letter of letters) {
          expect(letter.reason.length).toBeGreaterThan(0)
          expect(letter.data).toEqual(log.events.find((e) => e.id === letter.eventId)!.data)
        }
        // The final checkpoint covers the whole history.
        expect(store.checkpoint("ledger@1")).toBe(BigInt(history.length))
        expect(log.pulled()).toBeGreaterThanOrEqual(history.length)
      })),
    { fastCheck: { seed: catchUpSeed, numRuns } }
  )

  const persistentSeed = propertySeed("persistent")
  it.effect.prop(
    "persistent: every event applied exactly once, per-stream order kept, poison parked",
    [
      // Deletion is order-sensitive across streams, which a consumer group does not order.
      historyArbitrary({ maxEvents: 60, maxStreams: 6, docs: 6 }).map((h) =>
        h.map((step) => step.kind === "Closed" ? { kind: "Foreign" as const, stream: step.stream } : step)
      ),
      paramsArbitrary
    ],
    ([history, params]) =>
      Effect.scoped(Effect.gen(function*() {
        if (process.env.DEBUG_CASE) console.log(JSON.stringify([history, params]))
        const { log, poison, store } = yield* scenario("persistent", history, params)
        // Quarantine: each letter blocks one document at a poison event, parked in the group.
        const parkedNow = new Set(log.parked("ledger@1").map((p) => p.event.id))
        for (const letter of store.letters()) {
          expect(letter.document).toBeDefined()
          expect(poison.has(letter.eventId)).toBe(true)
          expect(parkedNow.has(letter.eventId)).toBe(true)
          // Blocked: nothing of the blocking event's stream after it applied to the document.
          const at = Number(letter.eventId.slice(1))
          const body = store.documents(ledger.collection).get(letter.document!)?.body as { applied: ReadonlyArray<string> } | undefined
          for (const id of body?.applied ?? []) {
            const index = Number(id.slice(1))
            expect(history[index]!.stream === history[at]!.stream && index > at, `${letter.document} applied ${id} after its block at ${letter.eventId}`)
              .toBe(false)
          }
        }
        // Every letter ends (skipped: `Exploded` never applies); the held events then apply in order.
        yield* skipAll(ledger, store.port, "persistent")
        expect(store.letters()).toEqual([])
        expect(store.held()).toEqual([])
        const expected = referenceFold(history)
        const actual = store.documents(ledger.collection)
        expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort())
        const streamOf = (id: string) => history[Number(id.slice(1))]!.stream
        for (const [id, doc] of expected) {
          const body = actual.get(id)!.body as { total: number; applied: ReadonlyArray<string> }
          expect(body.total).toBe(doc.total)
          // Exactly once: the same events, each once.
          expect([...body.applied].sort()).toEqual([...doc.applied].sort())
          // Per source stream, in order.
          const seen = new Map<number, number>()
          for (const eventId of body.applied) {
            const index = Number(eventId.slice(1))
            const stream = streamOf(eventId)
            expect(index).toBeGreaterThan(seen.get(stream) ?? -1)
            seen.set(stream, index)
          }
        }
        // Poison ends parked (undecodable) or resolved by its letter (a document quarantined at it).
        const resolved = new Set((yield* store.port.resolutions("ledger@1").pipe(Effect.retry({ while: (e) => e.transient }))).map((r) => r.letter.eventId))
        const parked = log.parked("ledger@1")
        for (const id of poison) expect(parkedNow.has(id) || resolved.has(id), `${id} parked or resolved`).toBe(true)
        expect(parked.every((p) => p.reason.length > 0)).toBe(true)
        expect(log.unsettled().now).toBe(0)
        // Replayed, the parked copies of ended letters are acknowledged (never applied twice); the others parked again.
        const before = store.documents(ledger.collection)
        yield* log.port.replayParked!(ledger.categories, "ledger@1")
        yield* Reconciler.run(ledger, { mode: "persistent", lanes: params.lanes, batchSize: params.batchSize, retrySchedule: immediate, resubscribeSchedule: immediate }).pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore.ReadModelStore, store.port)
        )
        expect(store.documents(ledger.collection)).toEqual(before)
        const invalid = new Set(history.flatMap((step, i) => (step.kind === "Invalid" ? [`e${i}`] : [])))
        expect(new Set(log.parked("ledger@1").map((p) => p.event.id))).toEqual(invalid)
        expect(log.unsettled().now).toBe(0)
      })),
    { fastCheck: { seed: persistentSeed, numRuns } }
  )
})
