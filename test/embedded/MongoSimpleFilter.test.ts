/**
 * The embedded server's fast path for simple filters (SimpleFilter.ts) answers
 * exactly what the full query (mingo on the view) answers, whenever it answers:
 * random raw documents (every numeric BSON type, nulls, dates, ids, nested
 * documents, arrays) and random simple filters, both through BSON with the
 * server's decode options. The conformance suite checks the full query against
 * MongoDB itself (with MONGODB_URI).
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { deserialize, Double, Int32, Long, ObjectId, serialize } from "bson"
import { compileQuery } from "../../src/embedded/mongo/Operations.js"
import { simpleMatcher } from "../../src/embedded/mongo/SimpleFilter.js"
import { type Doc, toView } from "../../src/embedded/mongo/Values.js"
import { propertySeed } from "../support/ledger.js"

const raw = (d: Doc): Doc => deserialize(serialize(d), { promoteValues: false, validation: { utf8: false } }) as Doc

const number = fc.oneof(
  fc.integer({ min: -3, max: 3 }),
  fc.integer({ min: -3, max: 3 }).map((n) => new Int32(n)),
  fc.constantFrom(0.5, -1.5, 2.5, Number.NaN, -0).map((n) => new Double(n)),
  fc.integer({ min: -3, max: 3 }).map((n) => Long.fromNumber(n)),
  fc.constantFrom(2n ** 53n + 1n, -(2n ** 60n)).map((n) => Long.fromBigInt(n))
)
const scalar = fc.oneof(number, fc.constantFrom("x", "y", ""), fc.boolean())
const leaf = fc.oneof(
  scalar,
  fc.constant(null),
  fc.constant(new Date(0)),
  fc.constant(new ObjectId("64b000000000000000000001"))
)
const value: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: "small", withCrossShrink: true }, leaf, tie("doc"), fc.array(tie("value"), { maxLength: 3 })),
  doc: fc.dictionary(fc.constantFrom("a", "b", "c"), tie("value"), { maxKeys: 3 })
})).value
const document = fc.dictionary(fc.constantFrom("a", "b", "c"), value, { maxKeys: 3 })

const path = fc.constantFrom("a", "b", "a.b", "a.c", "b.a", "a.b.c")
const condition = fc.oneof(
  scalar,
  fc.record({ $eq: scalar }),
  fc.record({ $exists: fc.boolean() }),
  fc.tuple(fc.constantFrom("$lt", "$lte", "$gt", "$gte"), number).map(([op, n]) => ({ [op]: n })),
  fc.record({ $gt: number, $lt: number })
)
const filter = fc.dictionary(path, condition, { minKeys: 1, maxKeys: 2 })

describe("simple filters", () => {
  const seed = propertySeed("mongo-simple-filter")
  let decided = 0
  it.prop(
    "decide as the full query does",
    [document, filter],
    ([doc, f]) => {
      const d = raw(doc)
      const q = raw(f)
      const matcher = simpleMatcher(q)
      const answer = matcher?.(d)
      if (answer === undefined) return
      decided++
      expect(answer).toBe(compileQuery(q).test(toView(d) as Doc))
    },
    { fastCheck: { seed, numRuns: 3000 } }
  )
  it("decides most of them (the test is not vacuous)", () => {
    expect(decided).toBeGreaterThan(1000)
  })

  it("takes the guards' shapes and leaves the rest to the full query", () => {
    expect(simpleMatcher(raw({ "_reconciler.version": 3 }))).toBeDefined()
    expect(simpleMatcher(raw({ "_reconciler.version": { $exists: false } }))).toBeDefined()
    expect(simpleMatcher(raw({ pos: { $lt: Long.fromNumber(7) } }))).toBeDefined()
    for (const f of [{ $or: [{ a: 1 }] }, { "a.0": 1 }, { a: null }, { a: { $in: [1] } }, { a: { $lt: "x" } }, { a: { b: 1 } }, { a: /x/ }]) {
      expect(simpleMatcher(raw(f))).toBeUndefined()
    }
    // An array on the path: MongoDB matches element by element; the full query decides.
    expect(simpleMatcher(raw({ "a.b": 1 }))!(raw({ a: [{ b: 1 }] }))).toBeUndefined()
  })
})
