/**
 * The quarantine's guarantees over random histories: random poison events (some
 * touching two documents, some sharing event ids across streams), random fixes
 * and skips, crashes and restarts of the engine and of the releases. After every
 * letter ended, each document is the reference fold of its events minus those
 * skipped for it: nothing lost, nothing applied twice; while a document is
 * quarantined it never moves past its blocking event.
 *
 * Run over the in-memory ports, and through the real clients on the embedded
 * EventStoreDB and MongoDB servers.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, FastCheck as fc, Fiber, Layer, Redacted, Schedule } from "effect"
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import * as App from "../src/App.js"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import { EventSource, InMemory, ReadModelStore, Reconciler } from "../src/index.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import { checkpointId } from "../src/Projection.js"
import * as Quarantine from "../src/internal/quarantine.js"
import { propertySeed } from "./support/ledger.js"
import type { Recorded, Step } from "./support/quarantine.js"
import type { Account } from "./support/quarantine.js"
import { accounts, referenceFold, stepArbitrary, toEvents } from "./support/quarantine.js"
import type { Resolution } from "../src/ReadModelStore.js"

type Port = ReadModelStore.ReadModelStore["Type"]

const broken = accounts(false)
const fixed = accounts(true)
const ID = checkpointId(broken)

const historyArbitrary = (maxEvents: number) =>
  fc.integer({ min: 1, max: 4 }).chain((streams) =>
    fc.tuple(
      fc.array(stepArbitrary(streams, 5), { minLength: 1, maxLength: maxEvents }),
      fc.array(stepArbitrary(streams, 5), { maxLength: maxEvents })
    )
  )

const paramsArbitrary = fc.record({
  lanes: fc.integer({ min: 1, max: 4 }),
  batchSize: fc.integer({ min: 1, max: 6 }),
  duplicateRate: fc.constantFrom(0, 0.2),
  transientFailureRate: fc.constantFrom(0, 0.1),
  lostAcknowledgementRate: fc.constantFrom(0, 0.1),
  /** Engine stops in each run phase: after this many store calls, a crash or an interruption. */
  stops: fc.array(fc.record({ afterCalls: fc.integer({ min: 1, max: 15 }), crash: fc.boolean() }), { maxLength: 2 }),
  /** Per letter (in order of appearance): skip, retry after the fix, or retry unfixed first (it fails again). */
  decisions: fc.array(fc.constantFrom("skip" as const, "fix" as const, "unfixed-then-fix" as const), { minLength: 30, maxLength: 30 }),
  /** Releases that crash after this many store calls (then run again). */
  releaseCrashes: fc.array(fc.integer({ min: 1, max: 8 }), { maxLength: 3 }),
  seed: fc.integer({ min: 1, max: 1_000_000 })
})
type Params = typeof paramsArbitrary extends fc.Arbitrary<infer A> ? A : never

/** A store whose calls fail for good after `after` calls, as if the process died. */
const crashing = (port: Port, after: number, onReached?: () => void) => {
  let calls = 0
  let crashed = false
  const gate = <A>(effect: Effect.Effect<A, ReadModelStore.StoreError>) =>
    Effect.suspend(() => {
      if (crashed) return Effect.fail(new ReadModelStore.StoreError({ message: "crashed", transient: false }))
      if (++calls === after) onReached?.()
      return effect
    })
  const gated: Port = {
    ...port,
    write: (batch) => gate(port.write(batch)),
    commitCheckpoint: (c) => gate(port.commitCheckpoint(c)),
    deadLetter: (l) => gate(port.deadLetter(l)),
    hold: (e) => gate(port.hold(e)),
    releaseHeld: (p, d, e) => gate(port.releaseHeld(p, d, e)),
    resolveDeadLetter: (r) => gate(port.resolveDeadLetter(r))
  }
  return { port: gated, crash: () => (crashed = true) }
}

/** The port with transient failures retried: for the test's own reads (the engine and releases meet them raw). */
const steady = (port: Port): Port =>
  Object.fromEntries(
    Object.entries(port).map(([name, f]) => [
      name,
      (...args: Array<unknown>) =>
        (f as (...a: Array<unknown>) => Effect.Effect<unknown, ReadModelStore.StoreError>)(...args).pipe(
          Effect.retry({ while: (e) => e.transient })
        )
    ])
  ) as unknown as Port

/**
 * While quarantined, a document never moves past its blocking event (persistent
 * mode: past it in its stream; a consumer group does not order streams).
 */
const blockedNeverAdvance = (raw: Port, mode: Mode = "catch-up") =>
  Effect.gen(function*() {
    const port = steady(raw)
    const violations: Array<string> = []
    for (const letter of yield* port.deadLetters(ID)) {
      if (letter.document === undefined) continue
      const stored = (yield* port.load(broken.collection, [letter.document])).get(letter.document)
      if (mode === "persistent") {
        for (const at of (stored?.body as Account | undefined)?.applied ?? []) {
          const [stream, revision] = at.split("@") as [string, string]
          if (stream === letter.streamId && BigInt(revision) >= letter.revision) {
            violations.push(`${letter.document} applied ${at} at or past its blocking event at ${letter.streamId}@${letter.revision}`)
          }
        }
        continue
      }
      const position = stored?.meta.position
      if (position !== undefined && position >= letter.position) {
        violations.push(`${letter.document} moved to ${position} past its blocking event at ${letter.position}`)
      }
    }
    return violations
  })

type Mode = "catch-up" | "persistent"

/** Ends open letters with the decisions; a release may crash (and is run again). Returns when none is open. */
const resolveLetters = (
  port: Port,
  params: Params,
  decided: Map<string, "skip" | "fix" | "unfixed-then-fix">,
  only?: number,
  mode: Mode = "catch-up"
) =>
  Effect.gen(function*() {
    const crashes = [...params.releaseCrashes]
    const triedUnfixed = new Set<string>()
    let ended = 0
    // A release that crashed runs again at once (as its user would), before anything else moves.
    let rerun: string | undefined
    for (let round = 0; round < 200; round++) {
      const open = [...(yield* steady(port).deadLetters(ID))].sort((a, b) => (a.position < b.position ? -1 : 1))
      const again = open.find((l) => l.id === rerun)
      if (again === undefined && (open.length === 0 || (only !== undefined && ended >= only))) return
      const letter = again ?? open[round % open.length]!
      rerun = undefined
      let decision = decided.get(letter.id)
      if (decision === undefined) {
        decision = params.decisions[decided.size % params.decisions.length]!
        decided.set(letter.id, decision)
      }
      // Some releases crash once a few of their store calls went through.
      const crashAfter = crashes.shift()
      let target = port
      if (crashAfter !== undefined) {
        const c = crashing(port, crashAfter, () => c.crash())
        target = c.port
      }
      const unfixedFirst = decision === "unfixed-then-fix" && !triedUnfixed.has(letter.id)
      if (unfixedFirst) triedUnfixed.add(letter.id)
      const release = yield* Quarantine.resolve(
        unfixedFirst ? broken : fixed,
        letter,
        decision === "skip" ? { action: "skipped", by: "property" } : { action: "retried", by: "property" },
        { mode }
      ).pipe(Effect.provideService(ReadModelStore.ReadModelStore, target), Effect.either)
      if (release._tag === "Left") {
        rerun = letter.id // crashed: run again
        continue
      }
      if (release.right._tag === "Late") decided.set(letter.id, "skip") // cannot apply in order: skip it
      if (release.right._tag === "Released" || release.right._tag === "Requarantined") ended++
    }
    throw new Error("letters did not end within 200 releases")
  })

const immediate = Schedule.forever

const inMemoryScenario = (history: readonly [ReadonlyArray<Step>, ReadonlyArray<Step>], params: Params, mode: Mode = "catch-up") =>
  Effect.gen(function*() {
    const log = yield* InMemory.makeEventLog({ endAtHead: true, faults: { seed: params.seed, duplicateRate: params.duplicateRate } })
    const store = yield* InMemory.makeStore({
      seed: params.seed + 1,
      transientFailureRate: params.transientFailureRate,
      lostAcknowledgementRate: params.lostAcknowledgementRate
    })
    const options: Reconciler.RunOptions = {
      mode,
      lanes: params.lanes,
      batchSize: params.batchSize,
      retrySchedule: immediate,
      resubscribeSchedule: immediate
    }
    const violations: Array<string> = []
    const runPhase = Effect.gen(function*() {
      for (const stop of params.stops) {
        const reached = yield* Deferred.make<void>()
        const gated = crashing(store.port, stop.afterCalls, () => Deferred.unsafeDone(reached, Effect.void))
        const fiber = yield* Reconciler.run(broken, options).pipe(
          Effect.provideService(EventSource.EventSource, log.port),
          Effect.provideService(ReadModelStore.ReadModelStore, gated.port),
          Effect.fork
        )
        yield* Effect.raceFirst(Deferred.await(reached), Fiber.await(fiber))
        if (stop.crash) {
          gated.crash()
          yield* Fiber.await(fiber)
        } else yield* Fiber.interrupt(fiber)
        violations.push(...(yield* blockedNeverAdvance(store.port, mode)))
      }
      yield* Reconciler.run(broken, options).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, store.port)
      )
      violations.push(...(yield* blockedNeverAdvance(store.port, mode)))
    })
    const append = (steps: ReadonlyArray<Step>, offset: number) =>
      Effect.forEach(toEvents(steps, offset), ({ event, stream }) => log.append(stream, [event]), { discard: true })
    const decided = new Map<string, "skip" | "fix" | "unfixed-then-fix">()

    yield* append(history[0], 0)
    yield* runPhase
    // Some letters end while the engine is stopped; then more events come.
    yield* resolveLetters(store.port, params, decided, 2, mode)
    yield* append(history[1], history[0].length)
    yield* runPhase
    yield* resolveLetters(store.port, params, decided, undefined, mode)
    // The fixed projection goes live: nothing is left to apply.
    yield* Reconciler.run(fixed, options).pipe(
      Effect.provideService(EventSource.EventSource, log.port),
      Effect.provideService(ReadModelStore.ReadModelStore, store.port)
    )
    const steps = [...history[0], ...history[1]]
    const recorded: Array<Recorded> = log.events.map((e, i) => ({ streamId: e.streamId, revision: e.revision, step: steps[i]! }))
    return {
      violations,
      recorded,
      documents: new Map([...store.documents(broken.collection)].map(([id, doc]) => [id, doc.body])),
      resolutions: yield* steady(store.port).resolutions(ID),
      open: store.letters(),
      held: store.held(),
      checkpoint: store.checkpoint(ID),
      total: log.events.length,
      /** Persistent mode: events parked in the group without a letter (their documents unknown). */
      parked: log.parked(ID).map((p) => ({ streamId: p.event.streamId, revision: p.event.revision })),
      unsettled: log.unsettled().now
    }
  })

const numRuns = Number(process.env.PROPERTY_RUNS ?? 40)

describe("quarantine over random histories", () => {
  const seed = propertySeed("quarantine (in-memory)")
  it.effect.prop(
    "in-memory: after every letter ended, each document is its reference fold minus its skipped events; blocked documents never advance",
    [historyArbitrary(25), paramsArbitrary],
    ([history, params]) =>
      Effect.scoped(Effect.gen(function*() {
        const result = yield* inMemoryScenario(history, params)
        expect(result.violations).toEqual([])
        expect(result.open).toEqual([])
        expect(result.held).toEqual([])
        expect(Object.fromEntries(result.documents)).toEqual(Object.fromEntries(referenceFold(result.recorded, result.resolutions)))
        expect(result.checkpoint).toBe(BigInt(result.total))
      })),
    { fastCheck: { seed, numRuns } }
  )
})

/** The order a consumer group keeps: per document, the same events (each once), each stream's in order. */
const sameUpToStreamOrder = (actual: ReadonlyMap<string, unknown>, expected: ReadonlyMap<string, Account>) => {
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort())
  for (const [id, doc] of expected) {
    const body = actual.get(id) as Account
    expect(body.total, `${id} total`).toBe(doc.total)
    expect([...body.applied].sort(), `${id} events`).toEqual([...doc.applied].sort())
    const seen = new Map<string, bigint>()
    for (const at of body.applied) {
      const [stream, revision] = at.split("@") as [string, string]
      expect(BigInt(revision) > (seen.get(stream) ?? -1n), `${id}: ${at} after a later event of ${stream}`).toBe(true)
      seen.set(stream, BigInt(revision))
    }
  }
}

describe("quarantine in persistent mode over random histories", () => {
  const seed = propertySeed("quarantine persistent (in-memory)")
  it.effect.prop(
    "in-memory consumer group: after every letter ended, each document is its reference fold minus its skipped events; blocked documents never advance",
    [historyArbitrary(25), paramsArbitrary],
    ([history, params]) =>
      Effect.scoped(Effect.gen(function*() {
        const result = yield* inMemoryScenario(history, params, "persistent")
        expect(result.violations).toEqual([])
        expect(result.open).toEqual([])
        expect(result.held).toEqual([])
        // Undecodable events (documents unknown) are parked without a letter in persistent mode: not applied.
        // (A parked event with a letter quarantined its document: its letter says how it ended.)
        const lettered = new Set(result.resolutions.map((r) => `${r.letter.streamId}@${r.letter.revision}`))
        const unknown = result.parked
          .filter((p) => !lettered.has(`${p.streamId}@${p.revision}`))
          .map((p) => ({ letter: { ...p, document: undefined }, action: "skipped" }) as unknown as Resolution)
        sameUpToStreamOrder(result.documents, referenceFold(result.recorded, [...result.resolutions, ...unknown]))
        expect(result.unsettled).toBe(0)
      })),
    { fastCheck: { seed, numRuns } }
  )
})

describe("quarantine through the real clients", () => {
  const seed = propertySeed("quarantine (embedded servers)")
  // Live clock: the engine polls the real servers until it has caught up.
  it.live.prop(
    "EventStoreDB and MongoDB clients on the embedded servers: the same, with restarts",
    [historyArbitrary(10), paramsArbitrary],
    ([history, params]) => realScenario(history, params, "catch-up"),
    { fastCheck: { seed, numRuns: Number(process.env.PROPERTY_RUNS_REAL ?? 6) }, timeout: 240_000 }
  )
  const persistentSeed = propertySeed("quarantine persistent (embedded servers)")
  it.live.prop(
    "persistent mode, a consumer group on the embedded servers through the real clients: the same, with restarts",
    [historyArbitrary(10), paramsArbitrary],
    ([history, params]) => realScenario(history, params, "persistent"),
    { fastCheck: { seed: persistentSeed, numRuns: Number(process.env.PROPERTY_RUNS_REAL ?? 6) }, timeout: 240_000 }
  )
})

const realScenario = (history: readonly [ReadonlyArray<Step>, ReadonlyArray<Step>], params: Params, mode: Mode) =>
      Effect.scoped(Effect.gen(function*() {
        const eventStore = yield* EventStoreServer.make()
        const mongo = yield* MongoServer.make()
        const client = yield* Effect.acquireRelease(
          Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
          (c) => Effect.promise(() => c.dispose())
        )
        const ports = Layer.merge(
          EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
          MongoReadModelStore.layer({ uri: mongo.uri, database: `q_${params.seed}` })
        )
        const context = yield* Layer.build(ports)
        const port = yield* ReadModelStore.ReadModelStore.pipe(Effect.provide(context))
        const options: Reconciler.RunOptions = {
          mode,
          lanes: params.lanes,
          batchSize: params.batchSize,
          commitInterval: "10 millis",
          holdCheck: "20 millis"
        }
        const violations: Array<string> = []
        const runPhase = (projection: typeof broken) =>
          Effect.gen(function*() {
            // A restart per stop (the engine drains and starts again from its checkpoint).
            for (let i = 0; i <= params.stops.length; i++) {
              yield* App.runUntilCaughtUp([projection], options).pipe(Effect.provide(context))
              violations.push(...(yield* blockedNeverAdvance(port, mode)))
            }
          })
        const append = (steps: ReadonlyArray<Step>, offset: number) =>
          Effect.forEach(
            toEvents(steps, offset),
            ({ event, stream }) => Effect.promise(() => client.appendToStream(stream, jsonEvent({ id: event.id!, type: event.type, data: event.data as never }))),
            { discard: true }
          )
        const decided = new Map<string, "skip" | "fix" | "unfixed-then-fix">()
        yield* append(history[0], 0)
        yield* runPhase(broken)
        yield* resolveLetters(port, params, decided, 2, mode)
        yield* append(history[1], history[0].length)
        yield* runPhase(broken)
        yield* resolveLetters(port, params, decided, undefined, mode)
        yield* runPhase(fixed)
        expect(violations).toEqual([])
        expect(yield* port.deadLetters(ID)).toEqual([])
        // The recorded events, in the order of the category stream.
        const steps = [...history[0], ...history[1]]
        const recorded = yield* Effect.promise(async () => {
          const found: Array<Recorded> = []
          for await (const resolved of client.readStream("$ce-acct", { resolveLinkTos: true })) {
            found.push({ streamId: resolved.event!.streamId, revision: resolved.event!.revision, step: steps[found.length]! })
          }
          return found
        })
        const documents = yield* Effect.promise(async () => {
          const { MongoClient } = await import("mongodb")
          const m = await new MongoClient(mongo.uri).connect()
          try {
            const docs = await m.db(`q_${params.seed}`).collection(broken.collection).find({ total: { $exists: true } }).toArray()
            const held = await m.db(`q_${params.seed}`).collection(MongoReadModelStore.HELD_EVENTS).countDocuments()
            return { docs: Object.fromEntries(docs.map(({ _id, _reconciler, ...body }) => [String(_id), body])), held }
          } finally {
            await m.close()
          }
        })
        expect(documents.held).toBe(0)
        const resolutions = yield* port.resolutions(ID)
        if (mode === "catch-up") {
          expect(documents.docs).toEqual(Object.fromEntries(referenceFold(recorded, resolutions)))
          return
        }
        // Persistent: undecodable events are parked in the group without a letter (not applied).
        const parked = yield* Effect.promise(async () => {
          const found: Array<{ streamId: string; revision: bigint }> = []
          try {
            for await (const e of client.readStream(`$persistentsubscription-$ce-acct::${ID}-parked`, { resolveLinkTos: true })) {
              if (e.event) found.push({ streamId: e.event.streamId, revision: e.event.revision })
            }
          } catch {
            // no parked stream: nothing was parked
          }
          return found
        })
        const lettered = new Set(resolutions.map((r) => `${r.letter.streamId}@${r.letter.revision}`))
        const unknown = parked
          .filter((p) => !lettered.has(`${p.streamId}@${p.revision}`))
          .map((p) => ({ letter: { ...p, document: undefined }, action: "skipped" }) as unknown as Resolution)
        sameUpToStreamOrder(new Map(Object.entries(documents.docs)), referenceFold(recorded, [...resolutions, ...unknown]))
      }))
