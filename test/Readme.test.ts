/** The README's projection, as written there, run on the in-memory ports. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, FastCheck, Schema } from "effect"
import { readFileSync } from "node:fs"
import { InMemory, Projection, Reconciler } from "../src/index.js"
import { History, ProjectionLaws, ProjectionSpec } from "../src/testing/index.js"

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

// ---- "Testing your projections", as written there (the test below keeps the two the same) ----
describe("balances", () => {
  it.effect("a transfer moves money from one account to another", () =>
    ProjectionSpec.for(balances)
      .given({ stream: "account-1", type: "Deposited", data: { account: "1", amount: 10 } })
      .when({ stream: "account-1", type: "Transferred", data: { from: "1", to: "2", amount: 4 } })
      .then({ "1": { balance: 6, transactions: 2 }, "2": { balance: 4, transactions: 1 } }))

  it.effect("keeps the laws, persistent mode included", () =>
    ProjectionLaws.check(balances, {
      mode: "persistent",
      // events meet on three accounts; amounts in a realistic range
      fields: {
        account: History.ids("acc", 3),
        from: History.ids("acc", 3),
        to: History.ids("acc", 3),
        amount: FastCheck.integer({ min: 1, max: 100 })
      }
    }))
})
// ---- end of the README's snippet ----

it("the README's testing snippet is the one above, imports aside", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8")
  const section = readme.slice(readme.indexOf("## Testing your projections"))
  const snippet = section.slice(section.indexOf("```ts\n") + 6, section.indexOf("\n```", section.indexOf("```ts\n")))
  const code = (text: string) => text.split("\n").filter((line) => !line.startsWith("import ") && line.trim() !== "").join("\n")
  const self = readFileSync(new URL(import.meta.url), "utf8")
  const here = self.slice(self.indexOf('describe("balances"'), self.indexOf("// ---- end of the README's snippet"))
  expect(code(snippet)).toContain("ProjectionLaws.check(balances")
  expect(code(here)).toBe(code(snippet))
})
