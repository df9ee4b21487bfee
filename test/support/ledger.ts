/**
 * A test projection whose documents record every event applied to them, in
 * order, so that a lost, doubled or reordered event shows in the read model.
 * Shared by the engine's property tests and the store adapters' re-runs.
 */
import { Effect, FastCheck as fc, Schema } from "effect"
import type { InMemory } from "../../src/index.js"
import { Projection } from "../../src/index.js"

export const Ledger = Schema.Struct({
  total: Schema.Number,
  applied: Schema.Array(Schema.String)
})
export type Ledger = typeof Ledger.Type

export const ledger = Projection.make({
  name: "ledger",
  categories: ["ledger"],
  document: Ledger,
  events: {
    Credited: Schema.Struct({ doc: Schema.String, amount: Schema.Int }),
    Linked: Schema.Struct({ a: Schema.String, b: Schema.String }),
    Closed: Schema.Struct({ doc: Schema.String }),
    Exploded: Schema.Struct({ doc: Schema.String })
  },
  key: (event) => event.type === "Linked" ? [event.data.a, event.data.b] : event.data.doc,
  evolve: (doc, event) => {
    const applied = [...(doc?.applied ?? []), event.id]
    switch (event.type) {
      case "Credited":
        return { total: (doc?.total ?? 0) + event.data.amount, applied }
      case "Linked":
        return { total: doc?.total ?? 0, applied }
      case "Closed":
        return undefined
      case "Exploded":
        throw new Error(`exploded on ${event.data.doc}`)
    }
  }
})

/** One generated event: what kind, on which stream, touching which documents. */
export type Step =
  | { readonly kind: "Credited"; readonly stream: number; readonly doc: number; readonly amount: number }
  | { readonly kind: "Linked"; readonly stream: number; readonly a: number; readonly b: number }
  | { readonly kind: "Closed"; readonly stream: number; readonly doc: number }
  | { readonly kind: "Exploded"; readonly stream: number; readonly doc: number }
  | { readonly kind: "Invalid"; readonly stream: number }
  | { readonly kind: "Foreign"; readonly stream: number }

export const stepArbitrary = (streams: number, docs: number): fc.Arbitrary<Step> => {
  const stream = fc.integer({ min: 0, max: streams - 1 })
  const doc = fc.integer({ min: 0, max: docs - 1 })
  return fc.oneof(
    { weight: 10, arbitrary: fc.record({ kind: fc.constant("Credited" as const), stream, doc, amount: fc.integer({ min: -50, max: 100 }) }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant("Linked" as const), stream, a: doc, b: doc }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("Closed" as const), stream, doc }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("Exploded" as const), stream, doc }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("Invalid" as const), stream }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("Foreign" as const), stream }) }
  )
}

export const historyArbitrary = (options: { maxEvents: number; maxStreams: number; docs: number }) =>
  fc.integer({ min: 1, max: options.maxStreams }).chain((streams) =>
    fc.array(stepArbitrary(streams, options.docs), { minLength: 1, maxLength: options.maxEvents })
  )

const docName = (n: number) => `doc-${n}`

/** The event an appended step becomes. */
export const toNewEvent = (step: Step, index: number): InMemory.NewEvent => {
  const id = `e${index}`
  switch (step.kind) {
    case "Credited":
      return { id, type: "Credited", data: { doc: docName(step.doc), amount: step.amount } }
    case "Linked":
      return { id, type: "Linked", data: { a: docName(step.a), b: docName(step.b) } }
    case "Closed":
      return { id, type: "Closed", data: { doc: docName(step.doc) } }
    case "Exploded":
      return { id, type: "Exploded", data: { doc: docName(step.doc) } }
    case "Invalid":
      return { id, type: "Credited", data: { doc: 42, amount: "lots" } }
    case "Foreign":
      return { id, type: "SomethingElse", data: { whatever: true } }
  }
}

export const appendHistory = (log: InMemory.EventLog, history: ReadonlyArray<Step>) =>
  Effect.forEach(history, (step, index) => log.append(`ledger-${step.stream}`, [toNewEvent(step, index)]), {
    discard: true
  })

/** The ids of the events that must end in the dead letters (or parked). */
export const poisonIds = (history: ReadonlyArray<Step>): ReadonlyArray<string> =>
  history.flatMap((step, index) => step.kind === "Invalid" || step.kind === "Exploded" ? [`e${index}`] : [])

/** The read model, computed by a plain fold over the events in order. */
export const referenceFold = (history: ReadonlyArray<Step>): Map<string, Ledger> => {
  const docs = new Map<string, Ledger>()
  const apply = (doc: string, id: string, change: (current: Ledger | undefined) => Ledger | undefined) => {
    const next = change(docs.get(doc))
    if (next === undefined) docs.delete(doc)
    else docs.set(doc, next)
  }
  history.forEach((step, index) => {
    const id = `e${index}`
    const credit = (amount: number) => (current: Ledger | undefined): Ledger => ({
      total: (current?.total ?? 0) + amount,
      applied: [...(current?.applied ?? []), id]
    })
    switch (step.kind) {
      case "Credited":
        return apply(docName(step.doc), id, credit(step.amount))
      case "Linked":
        apply(docName(step.a), id, credit(0))
        if (step.b !== step.a) apply(docName(step.b), id, credit(0))
        return
      case "Closed":
        return apply(docName(step.doc), id, () => undefined)
      default:
        return
    }
  })
  return docs
}

/** The seed of a property run: `PROPERTY_SEED` when set (to replay), otherwise fresh; always printed. */
export const propertySeed = (name: string): number => {
  const fromEnv = process.env.PROPERTY_SEED
  const seed = fromEnv !== undefined ? Number(fromEnv) : (Date.now() ^ (Math.random() * 0x7fffffff)) | 0
  console.log(`[property] ${name}: seed ${seed} (replay with PROPERTY_SEED=${seed})`)
  return seed
}

/** What each event became under per-document quarantine (catch-up mode, nothing resolved yet). */
export interface QuarantineFold {
  /** The read model: every document as it stands, quarantined ones stopped before their poison event. */
  readonly docs: Map<string, Ledger>
  /** Per document and event id: applied, blocking (its letter), or held. */
  readonly outcome: Map<string, Map<string, "applied" | "blocking" | "held">>
  /** Event ids with a letter: blocking events by document, and events whose documents are unknown. */
  readonly letters: ReadonlyArray<{ readonly eventId: string; readonly document: string | undefined }>
}

/** The engine's semantics with quarantine, as a plain fold: a document stops at its first poison event. */
export const quarantineFold = (history: ReadonlyArray<Step>): QuarantineFold => {
  const docs = new Map<string, Ledger>()
  const outcome = new Map<string, Map<string, "applied" | "blocking" | "held">>()
  const letters: Array<{ eventId: string; document: string | undefined }> = []
  const blocked = new Set<string>()
  const mark = (doc: string, id: string, what: "applied" | "blocking" | "held") => {
    let m = outcome.get(doc)
    if (m === undefined) outcome.set(doc, m = new Map())
    m.set(id, what)
  }
  history.forEach((step, index) => {
    const id = `e${index}`
    if (step.kind === "Invalid") return void letters.push({ eventId: id, document: undefined })
    if (step.kind === "Foreign") return
    const keys = step.kind === "Linked" ? [...new Set([docName(step.a), docName(step.b)])] : [docName(step.doc)]
    for (const doc of keys) {
      if (blocked.has(doc)) {
        mark(doc, id, "held")
        continue
      }
      if (step.kind === "Exploded") {
        blocked.add(doc)
        letters.push({ eventId: id, document: doc })
        mark(doc, id, "blocking")
        continue
      }
      mark(doc, id, "applied")
      if (step.kind === "Closed") docs.delete(doc)
      else {
        const current = docs.get(doc)
        docs.set(doc, {
          total: (current?.total ?? 0) + (step.kind === "Credited" ? step.amount : 0),
          applied: [...(current?.applied ?? []), id]
        })
      }
    }
  })
  return { docs, outcome, letters }
}
