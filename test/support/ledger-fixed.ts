/**
 * The test ledger after a "fix": the same projection (name and version), except
 * that `Exploded` no longer throws — it is recorded like a zero credit. Used to
 * show `reconciler dead-letters retry` applying what failed before.
 */
import { Projection } from "../../src/index.js"
import { ledger } from "./ledger.js"

export const projections = [
  Projection.make({
    name: ledger.name,
    categories: ledger.categories,
    document: ledger.document,
    events: ledger.events,
    key: ledger.key,
    evolve: (doc, event, context) =>
      event.type === "Exploded"
        ? { total: doc?.total ?? 0, applied: [...(doc?.applied ?? []), event.id] }
        : ledger.evolve(doc, event, context)
  })
]
