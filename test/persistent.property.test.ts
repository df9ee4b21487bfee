/**
 * Persistent mode keeps per-stream order whatever the consumer group does,
 * through the real EventStoreDB client against the embedded server: random
 * histories (many streams, events touching several documents), 1–4 competing
 * engines in one RoundRobin group, random message timeouts, acknowledged
 * messages redelivered after later ones of their stream (the server's test
 * knob), graceful stops and kills each followed by a restart, and parked
 * replays. Checked: every document holds exactly the events of the reference
 * fold, each stream's events in order, none twice; nothing is acknowledged
 * before it is applied; poison ends parked.
 */
import { DISPATCH_TO_SINGLE, EventStoreDBClient, jsonEvent, persistentSubscriptionToStreamSettingsFromDefaults, ROUND_ROBIN, START } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, FastCheck as fc, Fiber, Layer, Redacted, Schedule, Schema, Scope, Stream } from "effect"
import { start as startServer } from "../src/embedded/eventstore/Server.js"
import type { Delivery } from "../src/EventSource.js"
import { EventSource } from "../src/EventSource.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import { InMemory, Projection, Reconciler } from "../src/index.js"
import { ReadModelStore, StoreError } from "../src/ReadModelStore.js"
import type { Step } from "./support/ledger.js"
import { historyArbitrary, ledger, Ledger, poisonIds, propertySeed, referenceFold, toNewEvent } from "./support/ledger.js"
import { skipAll } from "./support/quarantine.js"

/** The test ledger (test/support/ledger.ts) over its own category (one per run). */
const ledgerOf = (category: string) =>
  Projection.make({
    name: ledger.name,
    categories: [category],
    document: ledger.document,
    events: ledger.events,
    key: ledger.key,
    evolve: ledger.evolve
  })

const stopArbitrary = fc.record({
  engine: fc.nat({ max: 3 }),
  afterMs: fc.integer({ min: 50, max: 600 }),
  kind: fc.constantFrom("interrupt" as const, "kill" as const)
})

const paramsArbitrary = fc.record({
  engines: fc.integer({ min: 1, max: 4 }),
  strategy: fc.constantFrom(ROUND_ROBIN, ROUND_ROBIN, ROUND_ROBIN, DISPATCH_TO_SINGLE),
  lanes: fc.integer({ min: 1, max: 4 }),
  batchSize: fc.integer({ min: 1, max: 8 }),
  bufferSize: fc.integer({ min: 1, max: 12 }),
  messageTimeoutMs: fc.constantFrom(300, 800, 2_000, 30_000),
  overtakeRate: fc.constantFrom(0, 0.1, 0.3),
  redeliverRate: fc.constantFrom(0, 0.05, 0.2),
  duplicateRate: fc.constantFrom(0, 0.1, 0.3),
  fillAfterMs: fc.constantFrom(150, 400, 1_000),
  stops: fc.array(stopArbitrary, { maxLength: 3 }),
  replays: fc.integer({ min: 0, max: 2 }),
  seed: fc.integer({ min: 1, max: 1_000_000 })
})
type Params = typeof paramsArbitrary extends fc.Arbitrary<infer A> ? A : never

const fast = Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(500)))
const immediate = Schedule.spaced("5 millis")

/** The documents a step's event touches. */
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

const numRuns = Number(process.env.PERSISTENT_PROPERTY_RUNS ?? 16)

describe("persistent mode over a RoundRobin group (real client, embedded server)", () => {
  const seed = propertySeed("persistent RoundRobin")
  it.live.prop(
    "every stream applied in order, nothing twice, nothing acked unapplied, whatever the group does",
    [
      // Deletion is order-sensitive across streams, which a consumer group does not order.
      historyArbitrary({ maxEvents: 80, maxStreams: 5, docs: 4 }).map((h) =>
        h.map((step) => step.kind === "Closed" ? { kind: "Foreign" as const, stream: step.stream } : step)
      ),
      paramsArbitrary
    ],
    ([history, params]) => Effect.scoped(scenario(history, params)),
    { timeout: 300_000, fastCheck: { seed, numRuns, endOnFailure: true } }
  )
})

const scenario = (history: ReadonlyArray<Step>, params: Params) =>
  Effect.gen(function*() {
    const server = yield* Effect.acquireRelease(Effect.promise(() => startServer({})), (s) => Effect.promise(() => s.close()))
    server.groups.faults = { seed: params.seed, overtakeRate: params.overtakeRate, redeliverRate: params.redeliverRate, duplicateRate: params.duplicateRate }
    const connectionString = `esdb://${server.host}:${server.port}?tls=false`
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => EventStoreDBClient.connectionString(connectionString)),
      (c) => Effect.promise(() => c.dispose())
    )
    const category = `ledger${params.seed}`
    const projection = ledgerOf(category)
    const group = "shared"
    // The group exists with RoundRobin (or DispatchToSingle), as a user may have made it: the adapter uses it as it is.
    yield* Effect.promise(() =>
      client.createPersistentSubscriptionToStream(
        `$ce-${category}`,
        group,
        persistentSubscriptionToStreamSettingsFromDefaults({
          startFrom: START,
          resolveLinkTos: true,
          consumerStrategyName: params.strategy,
          messageTimeout: params.messageTimeoutMs,
          maxRetryCount: 10
        })
      )
    )
    const stepOf = (eventId: string) => history[Number(eventId.slice(1))]!
    const store = yield* InMemory.makeStore({ seed: params.seed })
    const poison = new Set(poisonIds(history))
    const violations: Array<string> = []
    /** Poison events some engine asked the server to park. */
    const parkedBy = new Set<string>()

    // Nothing acknowledged unapplied: at the moment of an ack, every document the event touches holds it.
    const watchAcks = (delivery: Delivery): Delivery => {
      let first = true
      return {
        ...delivery,
        settle: (settlement) =>
          Effect.suspend(() => {
            if (first && settlement._tag === "Nack" && settlement.action === "park") parkedBy.add(idOf(delivery.id))
            if (first && settlement._tag === "Ack") {
              const id = idOf(delivery.id)
              // A copy of a poison event may be acked once the event is parked (or dead-lettered) elsewhere,
              // and any event once held durably for a quarantined document.
              const letters = new Set(store.letters().map((l) => idOf(l.eventId)))
              const held = new Set(store.held().map((h) => `${h.document}:${idOf(h.eventId)}`))
              if (poison.has(id)) {
                const heldForAll = keysOf(stepOf(id)).every((key) => held.has(`${key}:${id}`))
                if (!parkedBy.has(id) && !letters.has(id) && !heldForAll) violations.push(`${id} (poison) acked before it was parked`)
              } else for (const key of keysOf(stepOf(id))) {
                const docs = store.stored(projection.collection)
                const applied = (docs.get(key)?.body as Ledger | undefined)?.applied ?? []
                if (!applied.includes(delivery.id) && !held.has(`${key}:${id}`)) {
                  violations.push(`${id} acked before applied to (or held for) ${key}`)
                }
              }
            }
            first = false
            return delivery.settle(settlement)
          })
      }
    }

    /** One engine, with its own client (as its own process would have), that can be stopped or killed. */
    const startEngine = Effect.gen(function*() {
      const scope = yield* Scope.make()
      const source = yield* Layer.build(
        EventStoreDB.layer({ connectionString: Redacted.make(connectionString), resubscribe: fast })
      ).pipe(Effect.map(Context.get(EventSource)), Scope.extend(scope))
      let killed = false
      const dead = <A>(effect: Effect.Effect<A, StoreError>) =>
        Effect.suspend(() => killed ? Effect.fail(new StoreError({ message: "killed", transient: false })) : effect)
      const port: ReadModelStore["Type"] = {
        ...store.port,
        write: (batch) => dead(store.port.write(batch)),
        commitProgress: (p, progress, gaps) => dead(store.port.commitProgress(p, progress, gaps)),
        deadLetter: (letter) => dead(store.port.deadLetter(letter))
      }
      const watched: EventSource["Type"] = {
        ...source,
        subscribe: (subscription) =>
          source.subscribe(subscription).pipe(
            Stream.map((delivery) => {
              const d = watchAcks(delivery)
              // A killed process settles nothing.
              return { ...d, settle: (s) => (killed ? Effect.void : d.settle(s)) }
            })
          )
      }
      const fiber = yield* Reconciler.run(projection, {
        mode: "persistent",
        group,
        lanes: params.lanes,
        batchSize: params.batchSize,
        bufferSize: params.bufferSize,
        commitInterval: "20 millis",
        holdCheck: "20 millis",
        fillAfter: `${params.fillAfterMs} millis`,
        retrySchedule: immediate,
        resubscribeSchedule: fast
      }).pipe(
        Effect.provideService(EventSource, watched),
        Effect.provideService(ReadModelStore, port),
        Effect.forkDaemon
      )
      return {
        stop: Fiber.interrupt(fiber).pipe(Effect.zipRight(Scope.close(scope, Exit.void))),
        // As SIGKILL: no more writes, acks or nacks; the connection goes.
        kill: Effect.sync(() => {
          killed = true
        }).pipe(Effect.zipRight(Fiber.interrupt(fiber)), Effect.zipRight(Scope.close(scope, Exit.void)))
      }
    })

    const engines = yield* Effect.forEach(Array.from({ length: params.engines }), () => startEngine)
    yield* Effect.addFinalizer(() => Effect.forEach(engines, (e) => e.stop, { discard: true }))

    // Appends in bursts while the engines run.
    const appending = Effect.forEach(
      history,
      (step, index) => {
        const event = toNewEvent(step, index)
        return Effect.promise(() =>
          client.appendToStream(`${category}-${step.stream}`, jsonEvent({ id: eventUuid(index), type: event.type, data: event.data as never }))
        ).pipe(Effect.zipRight(index % 10 === 9 ? Effect.sleep("15 millis") : Effect.void))
      },
      { discard: true }
    )
    const stopping = Effect.forEach(
      params.stops,
      (stop) =>
        Effect.gen(function*() {
          yield* Effect.sleep(`${stop.afterMs} millis`)
          const i = stop.engine % engines.length
          yield* stop.kind === "kill" ? engines[i]!.kill : engines[i]!.stop
          engines[i] = yield* startEngine
        }),
      { discard: true }
    )
    const replaying = Effect.forEach(
      Array.from({ length: params.replays }),
      () => Effect.sleep("300 millis").pipe(Effect.zipRight(Effect.promise(() => client.replayParkedMessagesToStream(`$ce-${category}`, group)))),
      { discard: true }
    )
    yield* Effect.all([appending, stopping, replaying], { concurrency: "unbounded", discard: true })

    // Convergence: the read model reaches the reference fold (parked messages replayed now and then, as
    // an operator would: what the server parked after its retries comes back and is recognised).
    const expected = referenceFold(history)
    const documents = () =>
      new Map([...store.documents(projection.collection)].map(([id, doc]) => {
        const body = doc.body as Ledger
        return [id, { total: body.total, applied: body.applied.map(idOf) }]
      }))
    const readParked = Effect.promise(async () => {
      const ids = new Set<string>()
      try {
        for await (const e of client.readStream(`$persistentsubscription-$ce-${category}::${group}-parked`, { resolveLinkTos: true })) {
          if (e.event) ids.add(idOf(e.event.id))
        }
      } catch {
        // no parked stream: nothing was parked
      }
      return ids
    })
    /**
     * Poison is set aside with its reason: parked (or, when the engine read it from its stream,
     * dead-lettered), or it quarantined its document and its letter ended (skipped).
     */
    const quarantined = readParked.pipe(Effect.zip(store.port.resolutions(projection.name + "@" + projection.version)), Effect.map(([parked, resolutions]) => {
      for (const letter of store.letters()) parked.add(idOf(letter.eventId))
      for (const r of resolutions) parked.add(idOf(r.letter.eventId))
      return parked
    }))
    const check = Effect.gen(function*() {
      // An operator ends the letters (`dead-letters skip --all`) while the engines run.
      yield* skipAll(projection, store.port, "persistent")
      const actual = documents()
      const missing: Array<string> = []
      for (const [id, doc] of expected) {
        const body = actual.get(id)
        if (body === undefined || body.applied.length < doc.applied.length) missing.push(id)
      }
      const set = yield* quarantined
      for (const id of poison) if (!set.has(id)) missing.push(`poison ${id}`)
      if (missing.length > 0) yield* Effect.fail(new Error(`not yet converged: ${missing.join(", ")}`))
    })
    const poll = (attempts: number) => check.pipe(Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.intersect(Schedule.recurs(attempts)))))
    yield* poll(40).pipe(
      Effect.catchAll(() =>
        Effect.promise(() => client.replayParkedMessagesToStream(`$ce-${category}`, group)).pipe(
          Effect.zipRight(poll(80)),
          Effect.retry(Schedule.recurs(5))
        )
      ),
      Effect.orDie
    )

    const actual = documents()
    expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort())
    const streamOf = (id: string) => stepOf(id).stream
    for (const [id, doc] of expected) {
      const body = actual.get(id)!
      expect(body.total, `${id} total`).toBe(doc.total)
      // Exactly once: the same events, each once.
      expect([...body.applied].sort(), `${id} events`).toEqual([...doc.applied].sort())
      // Per source stream, in order.
      const seen = new Map<number, number>()
      for (const eventId of body.applied) {
        const index = Number(eventId.slice(1))
        const stream = streamOf(eventId)
        expect(index, `${id}: ${eventId} after a later event of stream ${stream}`).toBeGreaterThan(seen.get(stream) ?? -1)
        seen.set(stream, index)
      }
    }
    expect(violations.join("; ")).toBe("")
    const set = yield* quarantined
    for (const id of poison) expect(set.has(id), `poison ${id} parked or dead-lettered`).toBe(true)
  })

const idOf = (uuid: string) => `e${parseInt(uuid.slice(-12), 16)}`

/** Event ids are UUIDs on the wire; `e<index>` is recovered from them. */
const eventUuid = (index: number) => `00000000-0000-4000-8000-${index.toString(16).padStart(12, "0")}`
