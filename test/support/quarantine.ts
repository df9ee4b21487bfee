/**
 * A test projection for the quarantine: documents record every event applied to
 * them by position (`stream@revision`: event ids repeat across streams), so a
 * lost, doubled or reordered event shows. Its "broken" version has three kinds
 * of poison — an event that throws (`Exploded`), an event touching two documents
 * that throws for the second only (`Split`), and a payload its schema rejects
 * (`Credited` with amount "lots") — which its "fixed" version all accepts.
 */
import { Effect, FastCheck as fc, Schema } from "effect"
import type { InMemory } from "../../src/index.js"
import { Projection } from "../../src/index.js"
import * as DeadLetters from "../../src/internal/deadLetters.js"
import type { Runnable } from "../../src/Projection.js"
import type { Resolution } from "../../src/ReadModelStore.js"
import type { StoreError } from "../../src/ReadModelStore.js"
import { ReadModelStore } from "../../src/ReadModelStore.js"

export const Account = Schema.Struct({ total: Schema.Number, applied: Schema.Array(Schema.String) })
export type Account = typeof Account.Type

const Credited = Schema.Struct({ doc: Schema.String, amount: Schema.Int })
const CreditedFixed = Schema.Struct({ doc: Schema.String, amount: Schema.Union(Schema.Int, Schema.Literal("lots")) })

export const accounts = (fixed: boolean) =>
  Projection.make({
    name: "accounts",
    categories: ["acct"],
    document: Account,
    events: {
      Credited: fixed ? CreditedFixed : (Credited as unknown as typeof CreditedFixed),
      Split: Schema.Struct({ a: Schema.String, b: Schema.String }),
      Exploded: Schema.Struct({ doc: Schema.String })
    },
    key: (event) => (event.type === "Split" ? [event.data.a, event.data.b] : event.data.doc),
    evolve: (doc, event, context) => {
      const applied = [...(doc?.applied ?? []), `${event.streamId}@${event.revision}`]
      const total = doc?.total ?? 0
      switch (event.type) {
        case "Credited":
          return { total: total + (event.data.amount === "lots" ? 0 : event.data.amount), applied }
        case "Split":
          if (!fixed && context.key === event.data.b) throw new Error(`split refused for ${context.key}`)
          return { total, applied }
        case "Exploded":
          if (!fixed) throw new Error(`exploded on ${event.data.doc}`)
          return { total, applied }
      }
    }
  })

/** One generated event. `reuse`: take the id of an earlier event of another stream. */
export type Step =
  | { readonly kind: "Credited"; readonly stream: number; readonly doc: number; readonly amount: number; readonly reuse: boolean }
  | { readonly kind: "Split"; readonly stream: number; readonly a: number; readonly b: number; readonly reuse: boolean }
  | { readonly kind: "Exploded"; readonly stream: number; readonly doc: number; readonly reuse: boolean }
  | { readonly kind: "Invalid"; readonly stream: number; readonly doc: number; readonly reuse: boolean }

export const stepArbitrary = (streams: number, docs: number): fc.Arbitrary<Step> => {
  const stream = fc.integer({ min: 0, max: streams - 1 })
  const doc = fc.integer({ min: 0, max: docs - 1 })
  const reuse = fc.integer({ min: 0, max: 9 }).map((n) => n < 2)
  return fc.oneof(
    { weight: 10, arbitrary: fc.record({ kind: fc.constant("Credited" as const), stream, doc, amount: fc.integer({ min: -20, max: 50 }), reuse }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant("Split" as const), stream, a: doc, b: doc, reuse }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant("Exploded" as const), stream, doc, reuse }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant("Invalid" as const), stream, doc, reuse }) }
  )
}

const docName = (n: number) => `doc-${n}`

/** The events of a history, with ids: an id repeats across streams where `reuse` says so. */
export const toEvents = (history: ReadonlyArray<Step>, offset = 0) => {
  const ids: Array<{ id: string; stream: number }> = []
  return history.map((step, i): { stream: string; event: InMemory.NewEvent } => {
    // Never an id the stream already has (EventStoreDB would take the append as a retry and drop it).
    const earlier = step.reuse
      ? ids.find((e) => e.stream !== step.stream && !ids.some((o) => o.stream === step.stream && o.id === e.id))
      : undefined
    const id = earlier?.id ?? `00000000-0000-4000-8000-${String(offset + i).padStart(12, "0")}`
    ids.push({ id, stream: step.stream })
    const stream = `acct-${step.stream}`
    switch (step.kind) {
      case "Credited":
        return { stream, event: { id, type: "Credited", data: { doc: docName(step.doc), amount: step.amount } } }
      case "Split":
        return { stream, event: { id, type: "Split", data: { a: docName(step.a), b: docName(step.b) } } }
      case "Exploded":
        return { stream, event: { id, type: "Exploded", data: { doc: docName(step.doc) } } }
      case "Invalid":
        return { stream, event: { id, type: "Credited", data: { doc: docName(step.doc), amount: "lots" } } }
    }
  })
}

/** A recorded event as the reference needs it. */
export interface Recorded {
  readonly streamId: string
  readonly revision: bigint
  readonly step: Step
}

/**
 * The read model once every letter ended: each document is the fold, in order,
 * of its events with the fixed projection, minus the events skipped for it (a
 * letter without a document skips its event for all of them).
 */
export const referenceFold = (events: ReadonlyArray<Recorded>, resolutions: ReadonlyArray<Resolution>) => {
  const skipped = new Set(
    resolutions.filter((r) => r.action === "skipped").map((r) => `${r.letter.document ?? "*"}|${r.letter.streamId}@${r.letter.revision}`)
  )
  const docs = new Map<string, Account>()
  for (const { revision, step, streamId } of events) {
    const at = `${streamId}@${revision}`
    const keys = step.kind === "Split" ? [...new Set([docName(step.a), docName(step.b)])] : [docName(step.doc)]
    for (const key of keys) {
      if (skipped.has(`${key}|${at}`) || skipped.has(`*|${at}`)) continue
      const current = docs.get(key)
      docs.set(key, {
        total: (current?.total ?? 0) + (step.kind === "Credited" ? step.amount : 0),
        applied: [...(current?.applied ?? []), at]
      })
    }
  }
  return docs
}

/**
 * Ends every open letter of `runnable` by skipping it, as `reconciler
 * dead-letters skip --all` does (a release may quarantine the document again at
 * a later held poison event: that letter is skipped too). Returns how many
 * letters ended.
 */
export const skipAll = (runnable: Runnable, port: ReadModelStore["Type"], mode: "catch-up" | "persistent") =>
  Effect.gen(function*() {
    let ended = 0
    for (let round = 0; round < 100; round++) {
      const open = yield* DeadLetters.open([runnable])
      if (open.length === 0) return ended
      const outcomes = yield* DeadLetters.resolveAll(open, { action: "skipped", by: "property" }, mode)
      ended += outcomes.filter((o) => o._tag === "Released" || o._tag === "Requarantined").length
    }
    return yield* Effect.die(new Error("letters did not end within 100 rounds"))
  }).pipe(Effect.provideService(ReadModelStore, steady(port)))

/** The port with transient failures retried at once (the releases' own schedule would wait on the clock). */
export const steady = (port: ReadModelStore["Type"]): ReadModelStore["Type"] =>
  Object.fromEntries(
    Object.entries(port).map(([name, f]) => [
      name,
      (...args: Array<unknown>) => {
        const result = (f as (...a: Array<unknown>) => unknown)(...args)
        return Effect.isEffect(result)
          ? (result as Effect.Effect<unknown, StoreError>).pipe(Effect.retry({ while: (e) => e.transient }))
          : result
      }
    ])
  ) as unknown as ReadModelStore["Type"]
