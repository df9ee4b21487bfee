/**
 * What a library user of `Reconciler.run` gets without the service around it
 * (and what the service gets, once): the read-model guard of `App.run` and
 * `Rebuild` (typed `VersionConflict` / `ReadModelTaken`, the first version
 * registered), and one warning per dead letter recorded and per delivery
 * parked, naming projection, event, stream and revision, document, and the
 * whole reason.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger, Option } from "effect"
import * as App from "../src/App.js"
import { EventSource } from "../src/EventSource.js"
import * as InMemory from "../src/InMemory.js"
import * as ReadModels from "../src/ReadModels.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import * as Rebuild from "../src/Rebuild.js"
import * as Reconciler from "../src/Reconciler.js"
import { ledger } from "./support/ledger.js"

/** The messages of the warnings logged while `effect` runs. */
const warnings = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    const capture = Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ logLevel, message }) => {
        if (logLevel._tag === "Warning") lines.push(Array.isArray(message) ? message.join(" ") : String(message))
      })
    )
    yield* effect.pipe(Effect.provide(capture))
    return lines
  })

/** doc-1 quarantined at ledger-1@1 (its later event held), an undecodable event at ledger-1@3. */
const poisoned = (log: InMemory.EventLog) =>
  log.append("ledger-1", [
    { type: "Credited", data: { doc: "doc-1", amount: 1 } },
    { type: "Exploded", data: { doc: "doc-1" } },
    { type: "Credited", data: { doc: "doc-1", amount: 2 } },
    { type: "Credited", data: { doc: "doc-2", amount: "ten" } },
    { type: "Credited", data: { doc: "doc-3", amount: 3 } }
  ])

const expectOneLinePerLetter = (lines: ReadonlyArray<string>) => {
  const letters = lines.filter((l) => l.startsWith("dead-lettered:"))
  expect(letters).toHaveLength(2)
  // lanes run in parallel: the two letters come in either order
  const exploded = letters.find((l) => l.includes("(Exploded)"))
  const invalid = letters.find((l) => l.includes("(Credited)"))
  expect(exploded).toMatch(
    /^dead-lettered: projection ledger@1, event \S+ \(Exploded\), stream ledger-1 revision 1, position 2, document doc-1 quarantined: evolve threw on Exploded.*exploded on doc-1/s
  )
  expect(invalid).toMatch(/^dead-lettered: projection ledger@1, event \S+ \(Credited\), stream ledger-1 revision 3, position 4: /)
  // the whole reason, down to the line that says what was wrong
  expect(invalid).toContain("\n")
  expect(invalid).toMatch(/Expected number, actual "ten"$/)
  // and no second line about the same letter
  expect(lines.filter((l) => l.includes("doc-1") && l.includes("quarantined"))).toHaveLength(1)
}

describe("Reconciler.run as a library user calls it", () => {
  it.scoped("logs one warning per dead letter, where it is recorded", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      yield* poisoned(log)
      const lines = yield* warnings(Reconciler.run(ledger, { commitInterval: "10 millis" }).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port)
      ))
      expectOneLinePerLetter(lines)
      expect((yield* store.port.deadLetters("ledger@1")).length).toBe(2)
    }))

  it.scopedLive("under App.run: the same lines, once each", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog()
      const store = yield* InMemory.makeStore()
      yield* poisoned(log)
      const lines = yield* warnings(App.runUntilCaughtUp([ledger], { commitInterval: "10 millis" }).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port)
      ))
      expectOneLinePerLetter(lines)
    }))

  it.scoped("persistent mode: one warning per parked delivery", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      yield* poisoned(log)
      const lines = yield* warnings(Reconciler.run(ledger, { mode: "persistent", commitInterval: "10 millis" }).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port)
      ))
      const parked = lines.filter((l) => l.startsWith("parked:")).sort((a, b) => (a.includes("(Exploded)") ? -1 : b.includes("(Exploded)") ? 1 : 0))
      expect(parked).toHaveLength(2)
      expect(parked[0]).toMatch(/^parked: group ledger@1, event \S+ \(Exploded\), stream ledger-1 revision 1: evolve threw on Exploded/)
      expect(parked[1]).toMatch(/^parked: group ledger@1, event \S+ \(Credited\), stream ledger-1 revision 3: .*Expected number, actual "ten"$/s)
    }))

  it.scopedLive("registers the first version of a read model, as App.run does", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog({ endAtHead: true })
      const store = yield* InMemory.makeStore()
      yield* log.append("ledger-1", [{ type: "Credited", data: { doc: "doc-1", amount: 1 } }])
      yield* Reconciler.run(ledger).pipe(Effect.provideService(EventSource, log.port), Effect.provideService(ReadModelStore, store.port))
      const registration = yield* store.port.registration("ledger")
      expect(Option.getOrThrow(registration)).toMatchObject({ projection: "ledger", live: 1, versions: { "1": "ledger" } })
      // and App.run then refuses version 2 on version 1's documents
      const v2 = { ...ledger, version: 2 } as typeof ledger
      const refused = yield* App.runUntilCaughtUp([v2]).pipe(
        Effect.provideService(EventSource, log.port),
        Effect.provideService(ReadModelStore, store.port),
        Effect.flip
      )
      expect(refused._tag).toBe("VersionConflict")
    }))

  it.scopedLive("refuses a version that would write another version's documents, and a second projection on a read model, typed; writes nothing", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.makeEventLog()
      const store = yield* InMemory.makeStore()
      const ports = <A, E>(effect: Effect.Effect<A, E, EventSource | ReadModelStore>) =>
        effect.pipe(Effect.provideService(EventSource, log.port), Effect.provideService(ReadModelStore, store.port))
      yield* log.append("ledger-1", [{ type: "Credited", data: { doc: "doc-1", amount: 1 } }])
      yield* ports(App.runUntilCaughtUp([ledger]))
      yield* log.append("ledger-1", [{ type: "Credited", data: { doc: "doc-1", amount: 10 } }])

      const v2 = { ...ledger, version: 2 } as typeof ledger
      const conflict = yield* ports(Reconciler.run(v2)).pipe(Effect.flip)
      expect(conflict).toBeInstanceOf(ReadModels.VersionConflict)
      expect(conflict.message).toContain("reconciler rebuild")
      const taken = yield* ports(Reconciler.runAll([{ ...ledger, name: "other" } as typeof ledger])).pipe(Effect.flip)
      expect(taken).toBeInstanceOf(ReadModels.ReadModelTaken)
      // nothing was written: version 1's document holds version 1's event only, and no checkpoint for version 2
      expect((yield* store.port.load("ledger", ["doc-1"])).get("doc-1")?.body).toMatchObject({ total: 1 })
      expect(Option.isNone(yield* store.port.readCheckpoint("ledger@2"))).toBe(true)

      // the way Rebuild runs a version beside the live one still passes the guard
      yield* ports(Rebuild.run(v2, { interval: "20 millis" }))
      expect((yield* store.port.load("ledger__v2", ["doc-1"])).get("doc-1")?.body).toMatchObject({ total: 11 })
      // and a version moved onto another version's collection is refused
      const elsewhere = ReadModels.withCollection({ ...ledger, version: 3 } as typeof ledger, "ledger__v2")
      const onV2 = yield* ports(Reconciler.run(elsewhere)).pipe(Effect.flip)
      expect(onV2._tag).toBe("VersionConflict")
    }))
})
