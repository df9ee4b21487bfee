/**
 * The example domains' projections keep every law, over histories derived from
 * their own event schemas; the joins that need the order across streams get the
 * "not safe for persistent mode" verdict they deserve.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Openbank from "../examples/openbank.js"
import * as Pizzeria from "../examples/pizzeria.js"
import { History, ProjectionLaws } from "../src/testing/index.js"

const seed = process.env.PROPERTY_SEED === undefined ? undefined : Number(process.env.PROPERTY_SEED)

/** Three accounts of two people; a write side that knows who owns what. */
const ownerOf = (accountId: string) => accountId === "a2" ? "p2" : "p1"
const bank = {
  seed,
  fields: { personId: History.ids("p", 2), accountId: History.ids("a", 3), "transaction.to": History.ids("a", 3) },
  events: {
    BankAccountCreated: (derived) => derived.map((data) => ({ ...data, ownerId: ownerOf(data.accountId) })),
    BankAccountTransactionRecorded: (derived) =>
      derived.map((data) => ({
        ...data,
        ownerId: ownerOf(data.accountId),
        transaction: data.transaction.kind === "transfer"
          ? { ...data.transaction, toOwnerId: ownerOf(data.transaction.to) }
          : data.transaction
      }))
  },
  // An event lives in the stream of what it is about, as the write side records it.
  stream: (event) => event.type === "PersonRegistered" ? `person-${event.data.personId}` : `account-${event.data.accountId}`,
  engineRuns: 8
} satisfies ProjectionLaws.Options<typeof Openbank.BankEvents>

const kitchenOrders = {
  seed,
  fields: { orderId: History.ids("o", 3), pizza: History.ids("pizza-", 2) },
  stream: (event) => `order-${event.data.orderId}`,
  engineRuns: 8
} satisfies ProjectionLaws.Options<typeof Pizzeria.OrderEvents>

describe("openbank's projections", () => {
  it.effect("persons keeps every law (catch-up)", () => ProjectionLaws.check(Openbank.persons, bank))
  it.effect("accounts keeps every law (catch-up), the join included", () => ProjectionLaws.check(Openbank.accounts, bank))

  it.effect("both are not safe for persistent mode: their joins need the order across streams", () =>
    Effect.gen(function*() {
      const verdicts = [
        ProjectionLaws.check(Openbank.persons, { ...bank, mode: "persistent", laws: ["stream-interleaving"] }),
        ProjectionLaws.check(Openbank.accounts, { ...bank, mode: "persistent", laws: ["stream-interleaving"] })
      ]
      for (const verdict of verdicts) {
        const error = yield* Effect.flip(Effect.catchTag(verdict, "InvalidLawOptions", Effect.die))
        expect(error.failures.map((f) => f.law)).toEqual(["stream-interleaving"])
        expect(error.failures[0]!.message).toContain("not safe for persistent mode")
        // two events of two streams that must apply in the order recorded (an owner registered
        // before their account is opened; an account opened before a transfer reaches it)
        const counterexample = error.failures[0]!.counterexample
        expect(counterexample).toHaveLength(2)
        expect(new Set(counterexample.map((e) => e.stream)).size).toBe(2)
      }
    }))
})

describe("pizzeria's projections", () => {
  for (const mode of ["catch-up", "persistent"] as const) {
    it.effect(`orders keeps every law (${mode})`, () => ProjectionLaws.check(Pizzeria.orders, { ...kitchenOrders, mode }))
    // Every order feeds the one dashboard, whose counts add up in any order: safe for persistent mode.
    it.effect(`kitchen keeps every law (${mode})`, () => ProjectionLaws.check(Pizzeria.kitchen, { ...kitchenOrders, mode }))
  }
})
