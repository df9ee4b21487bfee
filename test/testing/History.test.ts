/**
 * Histories derived from event schemas: valid by construction, spread over
 * streams, shaped by hooks, and shrinking to small counter-examples.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck as fc, Schema } from "effect"
import { Projection } from "../../src/index.js"
import { History } from "../../src/testing/index.js"
import { balances, hooks } from "./fixtures.js"

const seed = Number(process.env.PROPERTY_SEED ?? 42)

describe("History.arbitrary", () => {
  it("generates only the projection's events, valid for their schemas, over the category's streams", () => {
    const samples = fc.sample(History.arbitrary(balances, { maxEvents: 10, streams: 2 }), { seed, numRuns: 200 })
    const valid = {
      Deposited: Schema.is(balances.events.Deposited),
      Transferred: Schema.is(balances.events.Transferred)
    }
    for (const history of samples) {
      expect(history.length).toBeGreaterThanOrEqual(1)
      expect(history.length).toBeLessThanOrEqual(10)
      for (const event of history) {
        expect(valid[event.type](event.data)).toBe(true)
        expect(["account-0", "account-1"]).toContain(event.stream)
        // what the store of events carries: JSON, so no NaN or infinities
        expect(JSON.parse(JSON.stringify(event.data))).toEqual(event.data)
      }
    }
    const types = new Set(samples.flat().map((e) => e.type))
    expect(types).toEqual(new Set(["Deposited", "Transferred"]))
  })

  it("fields, events, weights and stream hooks shape the data", () => {
    const arbitrary = History.arbitrary(balances, {
      ...hooks,
      weights: { Transferred: 0 },
      events: { Deposited: (derived) => derived.map((data) => ({ ...data, amount: data.amount * 100 })) },
      stream: (event) => `account-${event.type === "Deposited" ? event.data.account : event.data.from}`
    })
    for (const history of fc.sample(arbitrary, { seed, numRuns: 100 })) {
      for (const event of history) {
        expect(event.type).toBe("Deposited")
        if (event.type !== "Deposited") continue
        expect(["a1", "a2", "a3"]).toContain(event.data.account)
        expect(event.data.amount % 100).toBe(0)
        expect(event.data.amount).toBeGreaterThanOrEqual(100)
        expect(event.stream).toBe(`account-${event.data.account}`)
      }
    }
  })

  it("dotted field paths reach nested data", () => {
    const nested = Projection.make({
      name: "nested",
      categories: ["order"],
      document: Schema.Struct({ n: Schema.Number }),
      events: { Placed: Schema.Struct({ order: Schema.Struct({ id: Schema.String, lines: Schema.Number }) }) },
      key: (event) => event.data.order.id,
      evolve: (doc) => ({ n: (doc?.n ?? 0) + 1 })
    })
    for (const history of fc.sample(History.arbitrary(nested, { fields: { "order.id": History.ids("o", 2) } }), { seed, numRuns: 50 })) {
      for (const event of history) expect(["o1", "o2"]).toContain(event.data.order.id)
    }
  })

  it("shrinks through the hooks to a small counter-example", () => {
    // "no amount reaches 700": false, and a small proof is one event of the first kind, stream and id.
    const details = fc.check(
      fc.property(History.arbitrary(balances, { ...hooks, maxEvents: 30 }), (history) => history.every((e) => e.data.amount < 700)),
      { seed, numRuns: 200 }
    )
    expect(details.failed).toBe(true)
    const [history] = details.counterexample!
    expect(history.length).toBeLessThanOrEqual(2)
    // the culprit shrunk to the boundary, in the first stream, on the first id of the pool
    expect(history).toContainEqual({ stream: "account-0", type: "Deposited", data: { account: "a1", amount: 700 } })
  })

  it("a hook that makes data its schema rejects fails generation with the reason", () => {
    const arbitrary = History.arbitrary(balances, { fields: { amount: fc.constant("lots") } })
    expect(() => fc.sample(arbitrary, { seed, numRuns: 5 })).toThrow(/a hook made (Deposited|Transferred) data its schema rejects/)
  })

  it("format lists a history one event a line", () => {
    expect(History.format([{ stream: "account-1", type: "Deposited", data: { account: "a1", amount: 5 } }])).toBe(
      `  #0 account-1 Deposited {"account":"a1","amount":5}`
    )
  })

  it.effect("histories are an ordinary arbitrary: @effect/vitest properties take them", () =>
    Effect.sync(() => {
      const arbitrary = History.arbitrary(balances, hooks)
      fc.assert(fc.property(arbitrary, (history) => history.every((e) => e.stream.startsWith("account-"))), { seed, numRuns: 50 })
    }))
})
