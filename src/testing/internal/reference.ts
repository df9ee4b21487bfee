/**
 * The reference fold: what a projection's documents are after a history, by a
 * plain fold of `evolve` over the events in order — the engine's semantics
 * without lanes, batches, stores or faults. The laws run it with instruments
 * that watch every call.
 */
import { Either, Schema } from "effect"
import type * as InMemory from "../../InMemory.js"
import type * as Projection from "../../Projection.js"
import { decoderOf, identity } from "./records.js"
import { show } from "./show.js"

/** A law found broken inside the fold: never taken for a poison event. */
export class Broken extends Error {
  override readonly name = "LawBroken"
}

/** One document an event touches, while it is being evolved. */
export interface Part {
  readonly index: number
  readonly record: InMemory.RecordedEvent
  readonly event: Projection.Event
  readonly key: string
  /** The event's keys, in order, without repeats. */
  readonly keys: ReadonlyArray<string>
}

/** What the laws may put between the fold and the projection. */
export interface Instruments {
  readonly key?: (event: Projection.Event, index: number) => unknown
  readonly partition?: (event: Projection.Event, key: string, index: number) => string
  readonly evolve?: (document: unknown, context: Projection.EvolveContext<unknown>, part: Part) => unknown
}

/** A poison event: it is dead-lettered (catch-up) or parked (persistent) with its reason. */
export interface Poison {
  readonly index: number
  readonly identity: string
  /** The document it was poison for, when it got that far. */
  readonly key: string | undefined
  readonly reason: string
}

export interface Folded {
  /** The live documents (deleted ones are gone), by id. */
  readonly documents: Map<string, unknown>
  readonly poison: ReadonlyArray<Poison>
}

const describe = (error: unknown): string => error instanceof Error ? `${error.name}: ${error.message}` : String(error)

/** The keys `key` returned, as the engine takes them: one id, or several without repeats. */
export const keysOf = (returned: unknown): ReadonlyArray<string> => {
  if (typeof returned === "string") return [returned]
  if (!Array.isArray(returned)) throw new TypeError(`key returned ${String(returned)}`)
  for (const k of returned) if (typeof k !== "string") throw new TypeError(`key returned a non-string: ${String(k)}`)
  return [...new Set(returned as ReadonlyArray<string>)]
}

/**
 * Folds `records` (in the given order) into documents. Per event: decode it (an
 * undeclared type is skipped, an invalid one is poison), take its keys and
 * partitions (a throw is poison), then evolve each of its documents from the
 * state before the event — `read` of the event's own documents sees them before
 * it, of others their latest state. A throwing `evolve` or a result the document
 * schema cannot encode is poison for that document only.
 */
export const fold = (
  projection: Projection.Projection<any, any>,
  records: ReadonlyArray<InMemory.RecordedEvent>,
  instruments: Instruments = {},
  indexOf: (record: InMemory.RecordedEvent, at: number) => number = (_, at) => at
): Folded => {
  const decode = decoderOf(projection)
  const encode = Schema.encodeEither(projection.document)
  const documents = new Map<string, unknown>()
  const poison: Array<Poison> = []
  const keyOf = instruments.key ?? ((event: Projection.Event) => projection.key(event as never))
  const partitionOf = instruments.partition ??
    ((event: Projection.Event, key: string) => projection.partition === undefined ? key : projection.partition(event as never, key))
  const evolve = instruments.evolve ??
    ((document: unknown, context: Projection.EvolveContext<unknown>, part: Part) =>
      projection.evolve(document, part.event as never, context))

  records.forEach((record, at) => {
    const index = indexOf(record, at)
    const poisoned = (key: string | undefined, reason: string) =>
      poison.push({ index, identity: identity(record), key, reason })
    const event = decode(record)
    if (event === undefined) return
    if (typeof event === "string") return poisoned(undefined, event)
    let keys: ReadonlyArray<string>
    try {
      keys = keysOf(keyOf(event, index))
      for (const key of keys) partitionOf(event, key, index)
    } catch (error) {
      if (error instanceof Broken) throw error
      return poisoned(undefined, `key or partition failed on ${record.type}: ${describe(error)}`)
    }
    const before = new Map(keys.map((key) => [key, documents.get(key)]))
    for (const key of keys) {
      const part: Part = { index, record, event, key, keys }
      const context: Projection.EvolveContext<unknown> = {
        key,
        read: (id) => before.has(id) ? before.get(id) : documents.get(id)
      }
      let next: unknown
      try {
        next = evolve(before.get(key), context, part)
      } catch (error) {
        if (error instanceof Broken) throw error
        poisoned(key, `evolve threw on ${record.type}: ${describe(error)}`)
        continue
      }
      if (next !== undefined) {
        const encoded = encode(next)
        if (Either.isLeft(encoded)) {
          poisoned(key, `evolve returned a document its schema rejects on ${record.type}: ${encoded.left.message}`)
          continue
        }
        documents.set(key, next)
      } else documents.delete(key)
    }
  })
  return { documents, poison }
}

/** Whether two documents are the same by the document schema's equivalence (or, failing that, structurally). */
export const sameDocument = (projection: Projection.Projection<any, any>) => {
  const equivalence = Schema.equivalence(projection.document)
  return (a: unknown, b: unknown): boolean => {
    try {
      return equivalence(a, b)
    } catch {
      return show(a) === show(b)
    }
  }
}
