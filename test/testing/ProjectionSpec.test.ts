/**
 * Given/when/then specs: they pass when the engine's documents are the expected
 * ones, and fail with a readable diff otherwise; poison expectations; redelivery
 * replayed by default.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { Projection } from "../../src/index.js"
import { ProjectionSpec } from "../../src/testing/index.js"
import { balances, events } from "./fixtures.js"

const deposit = (account: string, amount: number, stream = `account-${account}`) =>
  ({ stream, type: "Deposited", data: { account, amount } }) as const
const transfer = (from: string, to: string, amount: number) =>
  ({ stream: `account-${from}`, type: "Transferred", data: { from, to, amount } }) as const

/** The message of the spec's failure (the test fails if it passes). */
const failureOf = <E extends { readonly message: string }>(spec: Effect.Effect<void, E>) =>
  Effect.flip(spec).pipe(Effect.map((error) => error.message))

/** Refuses negative deposits: they are poison. */
const strict = Projection.make({
  ...balances,
  name: "strict",
  partition: undefined,
  evolve: (doc, event, context) => {
    if (event.type === "Deposited" && event.data.amount < 0) throw new Error(`negative deposit ${event.data.amount}`)
    return balances.evolve(doc, event, context)
  }
})

describe("ProjectionSpec", () => {
  for (const mode of ["catch-up", "persistent"] as const) {
    it.effect(`a spec that holds passes (${mode})`, () =>
      ProjectionSpec.for(balances, { mode })
        .given(deposit("1", 10))
        .when(transfer("1", "2", 4))
        .then({ "1": { balance: 6, transactions: 2 }, "2": { balance: 4, transactions: 1 } }))
  }

  it.effect("a wrong expectation fails with the differing fields, the missing and unexpected documents, and the events", () =>
    Effect.gen(function*() {
      const message = yield* failureOf(
        ProjectionSpec.for(balances)
          .given(deposit("1", 10))
          .when(transfer("1", "2", 4))
          .then({ "1": { balance: 7, transactions: 2 }, "3": { balance: 4, transactions: 1 } })
      )
      expect(message).toContain("ProjectionSpec balances (catch-up): the documents differ from the expected ones")
      expect(message).toContain(`document "1":\n    .balance: expected 7, got 6`)
      expect(message).toContain(`document "2": not expected, got {"balance":4,"transactions":1}`)
      expect(message).toContain(`document "3": expected {"balance":4,"transactions":1}, missing`)
      expect(message).toContain(`#0 account-1 Deposited {"account":"1","amount":10}`)
      expect(message).toContain(`#1 account-1 Transferred {"amount":4,"from":"1","to":"2"}  (when)`)
    }))

  it.effect("documents compare by the document schema's equivalence, not by reference or field order", () =>
    ProjectionSpec.for(balances)
      .when(deposit("1", 0.1), deposit("1", 0.2))
      .then({ "1": { transactions: 2, balance: 0.1 + 0.2 } }))

  it.effect("an event the schema rejects is a typed failure of the spec, naming the event", () =>
    Effect.gen(function*() {
      const message = yield* failureOf(
        ProjectionSpec.for(balances).when({ type: "Deposited", data: { account: "1", amount: "ten" as unknown as number } }).then({})
      )
      expect(message).toContain("event #0 (Deposited) does not match its schema")
      expect(message).toContain(`Expected number, actual "ten"`)
    }))

  it.effect("thenDeadLettered: the poison event, by index across given and when, with its reason; other documents go on", () =>
    ProjectionSpec.for(strict)
      .given(deposit("1", 10))
      .when(deposit("2", -5), deposit("1", 1))
      .thenDeadLettered(1, /negative deposit -5/, { "1": { balance: 11, transactions: 2 } }))

  it.effect("thenDeadLettered in persistent mode expects the event parked", () =>
    ProjectionSpec.for(strict, { mode: "persistent" })
      .when(deposit("1", -5))
      .thenDeadLettered(0, "negative deposit"))

  it.effect("a malformed payload (raw event) is dead-lettered with the schema's reason", () =>
    ProjectionSpec.for(balances)
      .given(deposit("1", 10))
      .when(ProjectionSpec.raw({ stream: "account-1", type: "Deposited", data: { account: 1 } }))
      .thenDeadLettered(1, /does not match the schema of Deposited/, { "1": { balance: 10, transactions: 1 } }))

  it.effect("types the projection does not declare are skipped, not poison", () =>
    ProjectionSpec.for(balances)
      .when(ProjectionSpec.raw({ stream: "account-1", type: "AccountRenamed", data: { name: "x" } }), deposit("1", 1))
      .then({ "1": { balance: 1, transactions: 1 } }))

  it.effect("then fails when an event was unexpectedly poison; thenDeadLettered fails on the wrong event or reason", () =>
    Effect.gen(function*() {
      const unexpected = yield* failureOf(ProjectionSpec.for(strict).when(deposit("1", 3), deposit("1", -1)).then({}))
      expect(unexpected).toContain("an event was dead-lettered")
      expect(unexpected).toContain("event #1 (Deposited) was dead-lettered: evolve threw on Deposited: Error: negative deposit -1")
      const wrongEvent = yield* failureOf(ProjectionSpec.for(strict).when(deposit("1", 3), deposit("1", -1)).thenDeadLettered(0, /negative/))
      expect(wrongEvent).toContain("event #0 (Deposited) was expected to be dead-lettered, and was not")
      expect(wrongEvent).toContain("event #1 (Deposited) was dead-lettered")
      const wrongReason = yield* failureOf(ProjectionSpec.for(strict).when(deposit("1", -1)).thenDeadLettered(0, /overdrawn/))
      expect(wrongReason).toContain("its reason does not match /overdrawn/")
      const outOfRange = yield* failureOf(ProjectionSpec.for(strict).when(deposit("1", -1)).thenDeadLettered(3, /x/))
      expect(outOfRange).toContain("the spec has events #0 to #0")
    }))

  it.effect("replay (on by default) catches a projection that keeps state between calls; replay: false does not look", () =>
    Effect.gen(function*() {
      // Counts its calls in a variable of its own: right the first time, wrong when an event comes again.
      const counting = () => {
        let calls = 0
        return Projection.make({
          name: "counting",
          categories: ["account"],
          document: Schema.Struct({ calls: Schema.Number }),
          events,
          key: (event) => event.type === "Deposited" ? event.data.account : event.data.from,
          evolve: () => ({ calls: ++calls })
        })
      }
      const message = yield* failureOf(ProjectionSpec.for(counting()).when(deposit("1", 1), deposit("1", 2)).then({ "1": { calls: 2 } }))
      expect(message).toContain("redelivery changed the read model (it must be a no-op)")
      expect(message).toContain(`delivering every event twice: the documents differ from the expected ones`)
      yield* ProjectionSpec.for(counting(), { replay: false }).when(deposit("1", 1), deposit("1", 2)).then({ "1": { calls: 2 } })
    }))

  it.effect("an expected document the schema rejects is reported as such", () =>
    Effect.gen(function*() {
      const message = yield* failureOf(
        ProjectionSpec.for(balances).when(deposit("1", 1)).then({ "1": { balance: "1" as unknown as number, transactions: 1 } })
      )
      expect(message).toContain(`expected document "1" does not match the document schema`)
    }))

  it("a spec is not a promise: awaiting one without then(expected) rejects with an explanation", async () => {
    const spec = ProjectionSpec.for(balances).when(deposit("1", 1))
    await expect((async () => await (spec as unknown as Promise<void>))()).rejects.toThrow(
      "A ProjectionSpec is not a promise: end it with .then(expectedDocuments)"
    )
  })
})
