/**
 * The law checks: the README's projection keeps every law in both modes; each
 * deliberately broken mutant is caught by the law it breaks (and by no law it
 * keeps), with a shrunk counter-example; a seed replays a run.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck } from "effect"
import type { Projection } from "../../src/index.js"
import { ProjectionLaws } from "../../src/testing/index.js"
import * as F from "./fixtures.js"

const seed = process.env.PROPERTY_SEED === undefined ? undefined : Number(process.env.PROPERTY_SEED)

/** The laws that need no engine: cheap, and enough to tell most mutants apart. */
const withoutEngine: ReadonlyArray<ProjectionLaws.Law> = ["determinism", "no-mutation", "stable-partition", "schema-round-trip", "stream-interleaving"]

/** Runs the check expecting it to fail; returns the failure. */
const broken = (
  projection: Projection.Projection<typeof F.events, any>,
  options: ProjectionLaws.Options<typeof F.events> = {}
) => ProjectionLaws.check(projection, { seed, ...F.hooks, ...options }).pipe(Effect.catchTag("InvalidLawOptions", Effect.die), Effect.flip)

describe("ProjectionLaws", () => {
  for (const mode of ["catch-up", "persistent"] as const) {
    it.effect(`the README's balances keeps every law (${mode})`, () =>
      Effect.gen(function*() {
        const report = yield* ProjectionLaws.check(F.balances, { seed, mode, ...F.hooks, engineRuns: 10 })
        const checked = report.results.filter((r) => "runs" in r).map((r) => r.law)
        expect(checked).toEqual(ProjectionLaws.laws.filter((law) => mode === "persistent" || law !== "stream-interleaving"))
        for (const result of report.results) if ("runs" in result) expect(result.runs).toBeGreaterThan(0)
      }))
  }

  it.effect("non-deterministic evolve: determinism, and the engine laws it makes fail", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.nonDeterministic, { laws: [...withoutEngine, "redelivery"], mode: "catch-up" })
      expect(error.failures.map((f) => f.law)).toEqual(["determinism", "redelivery"])
      const [determinism] = error.failures
      // Random: caught calling evolve twice on one input, or folding the history twice.
      expect(determinism!.message).toMatch(
        /for document "a\d" gave two different documents for the same input|folding the same history twice gave different results/
      )
      expect(determinism!.message).toMatch(/\.transactions: first \d+, then \d+/)
      // shrunk to a few events (one is enough to disagree with itself, most of the time)
      expect(determinism!.counterexample.length).toBeLessThanOrEqual(2)
      expect(error.message).toContain("✗ determinism: key, partition and evolve give the same result for the same input")
      expect(error.message).toContain(`replay with { seed: ${error.seed} }`)
    }))

  it.effect("a key that changes between calls: determinism", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.unstableKey, { laws: withoutEngine })
      expect(error.failures.map((f) => f.law)).toEqual(["determinism"])
      expect(error.failures[0]!.message).toMatch(/key on event #\d gave \{"value":"a1-\d"\}, then \{"value":"a1-\d"\}/)
      expect(error.failures[0]!.counterexample).toHaveLength(1)
    }))

  it.effect("mutating evolve: no-mutation, with the changed fields", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.mutating, { laws: withoutEngine })
      expect(error.failures.map((f) => f.law)).toEqual(["no-mutation"])
      const [failure] = error.failures
      expect(failure!.message).toMatch(/mutated its input: the document was changed:/)
      expect(failure!.message).toMatch(/\.transactions: before 1, after 2/)
      // two events: the first makes the document, the second mutates it
      expect(failure!.counterexample).toHaveLength(2)
    }))

  it.effect("an evolve that changes the event it is given: no-mutation, naming the event", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.mutatingEvent, { laws: withoutEngine })
      expect(error.failures.map((f) => f.law)).toEqual(["no-mutation"])
      expect(error.failures[0]!.message).toMatch(/mutated its input: the event was changed:\n\s+\.data\.amount: before \d+, after 0/)
      expect(error.failures[0]!.counterexample).toHaveLength(1)
    }))

  it.effect("partition by source stream: stable-partition, and the engine loses an event for it", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.unstablePartition, { laws: withoutEngine })
      expect(error.failures.map((f) => f.law)).toEqual(["stable-partition"])
      expect(error.failures[0]!.message).toMatch(
        /document "a\d" is in partition "account-\d" at event #0 and in "account-\d" at event #1: its events may then apply out of order/
      )
      expect(error.failures[0]!.counterexample).toHaveLength(2)
      // Run by the engine, two lanes write one account and an event is lost: what the law warns of.
      const engine = yield* broken(F.unstablePartition, { laws: ["engine-under-faults"], engineRuns: 40, maxEvents: 30 })
      expect(engine.failures.map((f) => f.law)).toEqual(["engine-under-faults"])
      expect(engine.failures[0]!.message).toMatch(/the engine's read model differs from a plain fold of the history \(lanes [2-4],/)
      expect(engine.failures[0]!.message).toMatch(/under faults, document "a\d":\n\s+\.balance: plain fold -?\d+, engine -?\d+/)
    }))

  it.effect("reading a document of another partition: stable-partition", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.crossPartitionRead, { laws: withoutEngine })
      expect(error.failures.map((f) => f.law)).toEqual(["stable-partition"])
      expect(error.failures[0]!.message).toMatch(/\(partition "a\d"\) read document "a\d" of partition "a\d": read sees only documents of the evolving document's partition/)
    }))

  it.effect("a result the document schema rejects: schema-round-trip, with the schema's reason", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.schemaViolating, { laws: withoutEngine })
      expect(error.failures.map((f) => f.law)).toEqual(["schema-round-trip"])
      expect(error.failures[0]!.message).toMatch(/returned a document its schema rejects: \{"balance":-?\d+,"transactions":"1"\}/)
      expect(error.failures[0]!.message).toContain(`Expected number, actual "1"`)
      expect(error.failures[0]!.counterexample).toEqual([expect.objectContaining({ type: "Transferred" })])
    }))

  it.effect("a field the schema drops: schema-round-trip (read back, evolve would see another document)", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.droppedField, { laws: withoutEngine })
      expect(error.failures.map((f) => f.law)).toEqual(["schema-round-trip"])
      expect(error.failures[0]!.message).toContain(`.lastEvent: returned "e0", read back nothing`)
    }))

  it.effect("last writer wins across streams: not safe for persistent mode; fine for catch-up", () =>
    Effect.gen(function*() {
      const error = yield* broken(F.lastWriterWins, { laws: withoutEngine, mode: "persistent" })
      expect(error.failures.map((f) => f.law)).toEqual(["stream-interleaving"])
      const [failure] = error.failures
      expect(failure!.message).toContain("not safe for persistent mode")
      expect(failure!.message).toMatch(/\.balance: recorded order \d+, other order \d+/)
      // two events of one account from two streams, delivered the other way round
      expect(failure!.counterexample).toHaveLength(2)
      expect(new Set(failure!.counterexample.map((e) => e.stream)).size).toBe(2)
      const report = yield* ProjectionLaws.check(F.lastWriterWins, { seed, ...F.hooks, laws: withoutEngine })
      expect(report.results).toContainEqual({ law: "stream-interleaving", skipped: "catch-up keeps the order across streams" })
    }))

  it.effect("the same seed gives the same counter-examples", () =>
    Effect.gen(function*() {
      const options = { laws: withoutEngine, seed: 12345 }
      const [a, b] = [yield* broken(F.mutating, options), yield* broken(F.mutating, options)]
      expect(a.seed).toBe(12345)
      expect(b.failures).toEqual(a.failures)
    }))

  it.effect("options that cannot make a history are a typed InvalidLawOptions, with the reason", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(ProjectionLaws.check(F.balances, { seed, fields: { amount: FastCheck.constant("lots") } }))
      expect(error._tag).toBe("InvalidLawOptions")
      expect(error.message).toMatch(/a hook made (Deposited|Transferred) data its schema rejects/)
      const none = yield* Effect.flip(ProjectionLaws.check(F.balances, { seed, weights: { Deposited: 0, Transferred: 0 } }))
      expect(none._tag).toBe("InvalidLawOptions")
      expect(none.message).toContain("no event type of balances left to generate")
    }))
})
