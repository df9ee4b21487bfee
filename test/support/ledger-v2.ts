/**
 * Version 2 of the test ledger, for rebuilds: `doubled` changes what Credited
 * means (amounts count twice), `same` is a refactor that must not change
 * anything. Both keep the name and the collection of version 1.
 */
import { Projection } from "../../src/index.js"
import { ledger } from "./ledger.js"

/** Version 2 with a deliberate change of meaning. */
export const doubled = Projection.make({
  name: ledger.name,
  version: 2,
  categories: ledger.categories,
  document: ledger.document,
  events: ledger.events,
  key: ledger.key,
  evolve: (doc, event, context) => {
    const next = ledger.evolve(doc, event, context)
    return next !== undefined && event.type === "Credited" ? { ...next, total: next.total + event.data.amount } : next
  }
})

/** Version 2 that folds exactly as version 1 does. */
export const same = Projection.make({
  name: ledger.name,
  version: 2,
  categories: ledger.categories,
  document: ledger.document,
  events: ledger.events,
  key: ledger.key,
  evolve: ledger.evolve
})

export const projections = [doubled]
