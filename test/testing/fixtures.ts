/** The README's balances projection, and mutants of it that each break one law. */
import { FastCheck, Schema } from "effect"
import { Projection } from "../../src/index.js"
import { History } from "../../src/testing/index.js"

export const Balance = Schema.Struct({ balance: Schema.Number, transactions: Schema.Number })

export const events = {
  Deposited: Schema.Struct({ account: Schema.String, amount: Schema.Number }),
  Transferred: Schema.Struct({ from: Schema.String, to: Schema.String, amount: Schema.Number })
}

export const balances = Projection.make({
  name: "balances",
  categories: ["account"],
  collection: "balances",
  document: Balance,
  events,
  key: (event) => event.type === "Deposited" ? event.data.account : [event.data.from, event.data.to],
  evolve: (doc, event, { key }) => {
    const current = doc ?? { balance: 0, transactions: 0 }
    const amount = event.type === "Deposited" ? event.data.amount
      : key === event.data.from ? -event.data.amount : event.data.amount
    return { balance: current.balance + amount, transactions: current.transactions + 1 }
  }
})

type Balance = typeof Balance.Type

/** Histories where events meet: three accounts, amounts in cents. */
export const hooks = {
  fields: {
    account: History.ids("a", 3),
    from: History.ids("a", 3),
    to: History.ids("a", 3),
    amount: FastCheck.integer({ min: 1, max: 1_000 })
  }
}

const mutant = (
  name: string,
  change: Partial<Pick<typeof balances, "evolve" | "partition" | "key">>
) => Projection.make({ ...balances, name, evolve: change.evolve ?? balances.evolve, key: change.key ?? balances.key, partition: change.partition })

/** Non-deterministic: a transfer is sometimes counted twice. */
export const nonDeterministic = mutant("non-deterministic", {
  evolve: (doc, event, context) => {
    const next = balances.evolve(doc, event, context)!
    return Math.random() < 0.5 ? next : { ...next, transactions: next.transactions + 1 }
  }
})

/** Mutating: updates the document it is given in place. */
export const mutating = mutant("mutating", {
  evolve: (doc, event, context) => {
    const next = balances.evolve(doc, event, context)!
    if (doc === undefined) return next
    const writable = doc as { balance: number; transactions: number }
    writable.balance = next.balance
    writable.transactions = next.transactions
    return writable
  }
})

/** Mutating the event: spends a deposit's amount as it applies it. */
export const mutatingEvent = mutant("mutating-event", {
  evolve: (doc, event, context) => {
    const next = balances.evolve(doc, event, context)
    ;(event.data as { amount: number }).amount = 0
    return next
  }
})

/** Unstable partition: by source stream, so an account fed by two streams lands in two lanes. */
export const unstablePartition = mutant("unstable-partition", { partition: (event) => event.streamId })

/** Schema-violating: a transfer's count comes out as text. */
export const schemaViolating = mutant("schema-violating", {
  evolve: (doc, event, context) => {
    const next = balances.evolve(doc, event, context)!
    return event.type === "Transferred" ? { ...next, transactions: String(next.transactions) as unknown as number } : next
  }
})

/** Non-commuting across streams: the balance is the last amount seen, whichever stream it came from. */
export const lastWriterWins = mutant("last-writer-wins", {
  evolve: (doc, event, context) => ({
    balance: event.data.amount,
    transactions: (doc?.transactions ?? 0) + 1
  }) satisfies Balance
})

/** Keeps a field its schema does not have: stored and read back, the field is gone. */
export const droppedField = mutant("dropped-field", {
  evolve: (doc, event, context) => ({ ...balances.evolve(doc, event, context)!, lastEvent: event.id }) as Balance
})

/**
 * Reads another account without sharing its partition: the transfer's target
 * takes a fee from the sender's balance as it finds it in its own lane.
 */
export const crossPartitionRead = mutant("cross-partition-read", {
  evolve: (doc, event, context) => {
    const next = balances.evolve(doc, event, context)!
    if (event.type !== "Transferred" || context.key !== event.data.to) return next
    const sender = context.read(event.data.from)
    return { ...next, balance: next.balance + ((sender?.balance ?? 0) > 100 ? 1 : 0) }
  }
})

/** A key that changes with every call (a fresh id per call): redelivery lands elsewhere. */
export const unstableKey = (() => {
  let calls = 0
  return mutant("unstable-key", {
    key: (event) => event.type === "Deposited" ? `${event.data.account}-${calls++ % 2}` : [event.data.from, event.data.to]
  })
})()
