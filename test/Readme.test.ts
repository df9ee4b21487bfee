/** The README's projection, as written there, run on the in-memory ports. */
import { expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { InMemory, Projection, Reconciler } from "../src/index.js"

const Balance = Schema.Struct({ balance: Schema.Number, transactions: Schema.Number })

const balances = Projection.make({
  name: "balances",
  categories: ["account"],
  collection: "balances",
  document: Balance,
  events: {
    Deposited: Schema.Struct({ account: Schema.String, amount: Schema.Number }),
    Transferred: Schema.Struct({ from: Schema.String, to: Schema.String, amount: Schema.Number })
  },
  key: (event) => event.type === "Deposited" ? event.data.account : [event.data.from, event.data.to],
  evolve: (doc, event, { key }) => {
    const current = doc ?? { balance: 0, transactions: 0 }
    const amount = event.type === "Deposited" ? event.data.amount
      : key === event.data.from ? -event.data.amount : event.data.amount
    return { balance: current.balance + amount, transactions: current.transactions + 1 }
  }
})

it.effect("the README's projection runs on the in-memory ports", () =>
  Effect.gen(function*() {
    const log = yield* InMemory.InMemoryEventLog
    const store = yield* InMemory.InMemoryStore
    yield* log.append("account-1", [{ type: "Deposited", data: { account: "1", amount: 10 } }])
    yield* log.append("account-1", [{ type: "Transferred", data: { from: "1", to: "2", amount: 4 } }])
    yield* Reconciler.run(balances)
    const bodies = Object.fromEntries([...store.documents("balances")].map(([id, doc]) => [id, doc.body]))
    expect(bodies).toEqual({ "1": { balance: 6, transactions: 2 }, "2": { balance: 4, transactions: 1 } })
  }).pipe(Effect.provide(InMemory.layer({ log: { endAtHead: true } }))))
