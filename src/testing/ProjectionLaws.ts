/**
 * The rules a projection must keep for the engine's guarantees to hold, checked
 * over random histories derived from its own event schemas, in one call:
 *
 * ```ts
 * yield* ProjectionLaws.check(balances, { fields: { account: History.ids("a", 3) } })
 * ```
 *
 * Each law is a property of its own, so a failure is shrunk to a small
 * counter-example for that law. The check fails with {@link ProjectionLawsFailed}
 * naming every law broken, each with its shrunk history; it succeeds with a
 * {@link Report}. The seed is printed, and `seed` replays a run.
 *
 * @since 0.1.0
 */
import { Console, Data, Effect, Either, FastCheck as fc, Schema } from "effect"
import type * as InMemory from "../InMemory.js"
import type * as Projection from "../Projection.js"
import * as History from "./History.js"
import type { Faults, Mode, Outcome, Stop } from "./internal/engine.js"
import { decodeBodies, runEngine, twiceRate } from "./internal/engine.js"
import type { Appended } from "./internal/records.js"
import { decoderOf, encodeData, identity, record } from "./internal/records.js"
import type { Folded, Instruments, Part } from "./internal/reference.js"
import { Broken, fold, sameDocument } from "./internal/reference.js"
import { diff, show } from "./internal/show.js"

/**
 * The laws:
 *
 * - `determinism`: `key`, `partition` and `evolve` give the same result for the same input;
 * - `no-mutation`: `evolve` and `key` leave their inputs (the document, the
 *   event, documents they `read`) as they found them;
 * - `redelivery`: delivering every event twice, or all again from the start,
 *   changes no document (the engine's guards, with the projection's keys);
 * - `stable-partition`: every document a key yields keeps one partition, and
 *   `evolve` reads only documents of its own partition;
 * - `schema-round-trip`: every document `evolve` returns encodes with the
 *   document schema and decodes back to the same document (nothing dropped);
 * - `stream-interleaving` (persistent mode only): any interleaving of the
 *   streams that keeps each stream's order gives the same documents — a consumer
 *   group orders events within a stream only. Failing it means *not safe for
 *   persistent mode*;
 * - `engine-under-faults`: the engine, with duplicates, reorders across streams
 *   (persistent), dropped subscriptions, transient store failures, lost
 *   acknowledgements, interruptions and crashes with restarts, ends with the
 *   documents a plain fold of the history gives, and sets aside the same poison events.
 *
 * @since 0.1.0
 */
export type Law =
  | "determinism"
  | "no-mutation"
  | "redelivery"
  | "stable-partition"
  | "schema-round-trip"
  | "stream-interleaving"
  | "engine-under-faults"

/** Every law, in the order they are checked. @since 0.1.0 */
export const laws: ReadonlyArray<Law> = [
  "determinism",
  "no-mutation",
  "stable-partition",
  "schema-round-trip",
  "stream-interleaving",
  "redelivery",
  "engine-under-faults"
]

const descriptions: Record<Law, string> = {
  "determinism": "key, partition and evolve give the same result for the same input",
  "no-mutation": "evolve and key leave their inputs unchanged",
  "redelivery": "delivering events again changes no document",
  "stable-partition": "every document keeps one partition, and evolve reads only its own partition",
  "schema-round-trip": "every document evolve returns round-trips through the document schema",
  "stream-interleaving": "interleaving the streams differently gives the same documents (persistent mode)",
  "engine-under-faults": "the engine under faults ends with the documents of a plain fold"
}

/**
 * What to check, and how the histories are made (see {@link History.Options}).
 *
 * @since 0.1.0
 */
export interface Options<Events extends Projection.EventSchemas> extends History.Options<Events> {
  /** The mode the projection is meant for. `persistent` adds `stream-interleaving`. Default `catch-up`. */
  readonly mode?: Mode | undefined
  /** Only these laws. Default: all that apply to the mode. */
  readonly laws?: ReadonlyArray<Law> | undefined
  /** The seed of every law's run; printed when not given. Default: a fresh one. */
  readonly seed?: number | undefined
  /** Histories per law that runs without the engine. Default 100. */
  readonly numRuns?: number | undefined
  /** Histories per law that runs the engine (`redelivery`, `engine-under-faults`). Default 15. */
  readonly engineRuns?: number | undefined
}

/** One broken law, with its shrunk counter-example. @since 0.1.0 */
export interface LawFailure {
  readonly law: Law
  /** What was found, with the details that show it. */
  readonly message: string
  /** The smallest history found that breaks the law. */
  readonly counterexample: History.History
  readonly shrinks: number
}

/**
 * Laws were broken. `failures` names each, with its counter-example; the
 * message says it all in text, with the seed that replays it.
 *
 * @since 0.1.0
 */
export class ProjectionLawsFailed extends Data.TaggedError("ProjectionLawsFailed")<{
  readonly projection: string
  readonly seed: number
  readonly failures: ReadonlyArray<LawFailure>
  readonly message: string
}> {}

/**
 * The histories cannot be made as the options say (a hook yields data its
 * schema rejects, no event type left to generate): nothing was checked.
 *
 * @since 0.1.0
 */
export class InvalidLawOptions extends Data.TaggedError("InvalidLawOptions")<{
  readonly message: string
  readonly cause: unknown
}> {}

/** What a passing check checked. @since 0.1.0 */
export interface Report {
  readonly projection: string
  readonly seed: number
  readonly mode: Mode
  readonly results: ReadonlyArray<{ readonly law: Law; readonly runs: number } | { readonly law: Law; readonly skipped: string }>
}

/**
 * Checks the laws for a projection (see {@link Law}). Succeeds with what was
 * checked; fails with every broken law and its shrunk counter-example.
 *
 * @since 0.1.0
 */
export const check = <Events extends Projection.EventSchemas, Doc>(
  projection: Projection.Projection<Events, Doc>,
  // Options for a wider set of events (shared by several projections) fit too.
  options: Options<NoInfer<Events>> = {}
): Effect.Effect<Report, ProjectionLawsFailed | InvalidLawOptions> => checkLaws(projection, options)

const checkLaws = Effect.fn("ProjectionLaws.check")(
  function*(projection: Projection.Projection<any, any>, options: Options<any>) {
    yield* Effect.annotateCurrentSpan("projection", projection.name)
    const mode = options.mode ?? "catch-up"
    const seed = options.seed ?? ((Date.now() ^ (Math.random() * 0x7fffffff)) | 0)
    yield* Console.log(`[ProjectionLaws] ${projection.name} (${mode}): seed ${seed} (replay with { seed: ${seed} })`)
    const selected = options.laws ?? laws
    const histories = yield* Effect.try({
      try: () => History.arbitrary(projection, options),
      catch: (cause) => new InvalidLawOptions({ message: messageOf(cause), cause })
    })
    const numRuns = options.numRuns ?? 100
    const engineRuns = options.engineRuns ?? 15
    const results: Array<Report["results"][number]> = []
    const failures: Array<LawFailure> = []
    for (const law of laws) {
      if (!selected.includes(law)) continue
      if (law === "stream-interleaving" && mode !== "persistent") {
        results.push({ law, skipped: "catch-up keeps the order across streams" })
        continue
      }
      const runs = law === "redelivery" || law === "engine-under-faults" ? engineRuns : numRuns
      // The projection's failures are the properties' own; what escapes is a history that cannot be made.
      const details = yield* Effect.tryPromise({
        try: () => runLaw(projection, mode, law, histories, { seed, numRuns: runs }),
        catch: (cause) => new InvalidLawOptions({ message: `${law}: ${messageOf(cause)}`, cause })
      })
      if (details.failure !== undefined) {
        const { history, message, shrinks } = details.failure
        failures.push({ law, message, counterexample: history, shrinks })
      } else results.push({ law, runs: details.runs })
    }
    if (failures.length > 0) {
      return yield* new ProjectionLawsFailed({
        projection: projection.name,
        seed,
        failures,
        message: [
          `ProjectionLaws: ${projection.name} (${mode}) breaks ${failures.length} law${failures.length === 1 ? "" : "s"} ` +
          `(seed ${seed}; replay with { seed: ${seed} })`,
          ...failures.map((failure) =>
            [
              "",
              `✗ ${failure.law}: ${descriptions[failure.law]}`,
              indent(failure.message),
              `  counter-example (shrunk ${failure.shrinks} times):`,
              History.format(failure.counterexample)
            ].join("\n")
          )
        ].join("\n")
      })
    }
    return { projection: projection.name, seed, mode, results } satisfies Report
  }
)

const messageOf = (cause: unknown) => cause instanceof Error ? cause.message : String(cause)

const indent = (text: string) => text.split("\n").map((line) => `  ${line}`).join("\n")

// ---- running one law ------------------------------------------------------------------

/** What running a law found: nothing, or its smallest counter-example. */
interface Verdict {
  readonly runs: number
  readonly failure?: { readonly history: History.History; readonly message: string; readonly shrinks: number } | undefined
}

/** A law as a property: throws (or rejects) with `Broken` when the history breaks it. */
interface LawProperty {
  readonly extras: fc.Arbitrary<unknown>
  readonly holds: (history: History.History, extras: any) => void | Promise<void>
}

const lawProperty = (projection: Projection.Projection<any, any>, mode: Mode, law: Law): LawProperty => {
  const pure = (check: (projection: Projection.Projection<any, any>, prepared: Prepared) => void): LawProperty => ({
    extras: fc.constant(undefined),
    holds: (history) => check(projection, prepare(projection, history))
  })
  switch (law) {
    case "determinism":
      return pure(determinism)
    case "no-mutation":
      return pure(noMutation)
    case "stable-partition":
      return pure(stablePartition)
    case "schema-round-trip":
      return pure(schemaRoundTrip)
    case "stream-interleaving":
      return {
        extras: fc.array(fc.nat({ max: 1_000 }), { maxLength: 64 }),
        holds: (history, choices) => streamInterleaving(projection, prepare(projection, history), choices)
      }
    case "redelivery":
      return {
        extras: fc.record({ lanes: fc.integer({ min: 1, max: 4 }), batchSize: fc.integer({ min: 1, max: 8 }) }),
        holds: (history, params) => violation(redelivery(projection, mode, prepare(projection, history), params))
      }
    case "engine-under-faults":
      return {
        extras: faultsArbitrary,
        holds: (history, params) => violation(underFaults(projection, mode, prepare(projection, history), params))
      }
  }
}

/**
 * Runs a law over random histories; a failure is shrunk by fast-check, then by
 * removing single events while it still fails (fast-check's array shrinking
 * can leave an event the failure does not need).
 */
const runLaw = async (
  projection: Projection.Projection<any, any>,
  mode: Mode,
  law: Law,
  histories: fc.Arbitrary<History.History>,
  parameters: { readonly seed: number; readonly numRuns: number }
): Promise<Verdict> => {
  const { extras, holds } = lawProperty(projection, mode, law)
  const engine = law === "redelivery" || law === "engine-under-faults"
  const details = engine
    ? await fc.check(fc.asyncProperty(histories, extras, async (history, extra) => holds(history, extra)), parameters)
    : fc.check(fc.property(histories, extras, (history, extra) => holds(history, extra) as void), parameters)
  if (!details.failed) return { runs: details.numRuns }
  let [history, extra] = details.counterexample as [History.History, unknown]
  let message = messageOf(details.errorInstance ?? details.error)
  let shrinks = details.numShrinks
  const failure = async (candidate: History.History): Promise<string | undefined> => {
    try {
      await holds(candidate, extra)
      return undefined
    } catch (error) {
      return messageOf(error)
    }
  }
  for (let i = 0; i < history.length && history.length > 1;) {
    const candidate = [...history.slice(0, i), ...history.slice(i + 1)]
    const found = await failure(candidate)
    if (found === undefined) i++
    else {
      history = candidate
      message = found
      shrinks++
    }
  }
  return { runs: details.numRuns, failure: { history, message, shrinks } }
}

/** A history as it is appended and recorded. */
interface Prepared {
  readonly appended: ReadonlyArray<Appended>
  readonly records: ReadonlyArray<InMemory.RecordedEvent>
}

const prepare = (projection: Projection.Projection<any, any>, history: History.History): Prepared => {
  const appended = history.map((event, index): Appended => {
    const data = encodeData(projection, event.type, event.data)
    // Histories are valid by construction; a hand-made one may not be.
    if (Either.isLeft(data)) throw new TypeError(`history event #${index} (${event.type}) does not match its schema: ${data.left}`)
    return { stream: event.stream, type: event.type, data: data.right, id: `e${index}` }
  })
  return { appended, records: record(appended) }
}

// ---- the laws without the engine --------------------------------------------------------

/** A fresh copy of a document (through its schema) and of an event (decoded again). */
const copier = (projection: Projection.Projection<any, any>) => {
  const encode = Schema.encodeSync(projection.document)
  const decode = Schema.decodeUnknownSync(projection.document)
  const decodeEvent = decoderOf(projection)
  return {
    document: (doc: unknown): unknown => doc === undefined ? undefined : decode(encode(doc)),
    event: (record: InMemory.RecordedEvent) => decodeEvent(record) as Projection.Event
  }
}

type Outcome_ = { readonly threw: unknown } | { readonly value: unknown }

const attempt = (f: () => unknown): Outcome_ => {
  try {
    return { value: f() }
  } catch (error) {
    if (error instanceof Broken) throw error
    return { threw: error }
  }
}

const describeCall = (part: Part) => `evolve on event #${part.index} (${part.record.type}) for document "${part.key}"`

const determinism = (projection: Projection.Projection<any, any>, { records }: Prepared): void => {
  const copy = copier(projection)
  const same = sameDocument(projection)
  const instruments: Instruments = {
    key: (_, index) => {
      const [a, b] = [attempt(() => projection.key(copy.event(records[index]!) as never)), attempt(() => projection.key(copy.event(records[index]!) as never))]
      if (show(a) !== show(b)) throw new Broken(`key on event #${index} gave ${show(a)}, then ${show(b)}`)
      if ("threw" in a) throw a.threw
      return a.value
    },
    partition: (event, key, index) => {
      if (projection.partition === undefined) return key
      const a = projection.partition(copy.event(records[index]!) as never, key)
      const b = projection.partition(copy.event(records[index]!) as never, key)
      if (a !== b) throw new Broken(`partition on event #${index} for document "${key}" gave ${show(a)}, then ${show(b)}`)
      return a
    },
    evolve: (doc, context, part) => {
      const call = () => projection.evolve(copy.document(doc), copy.event(part.record) as never, context)
      const [a, b] = [attempt(call), attempt(call)]
      if ("threw" in a !== "threw" in b) {
        throw new Broken(`${describeCall(part)} ${"threw" in a ? "threw, then returned" : "returned, then threw"} on the same input`)
      }
      if ("value" in a && "value" in b && !same(a.value, b.value)) {
        throw new Broken(
          `${describeCall(part)} gave two different documents for the same input:\n` +
            diff(a.value, b.value, ["first", "then"]).map((line) => `  ${line}`).join("\n")
        )
      }
      if ("threw" in a) throw a.threw
      return a.value
    }
  }
  // The second fold also gives each call inputs of its own: what a mutation does is no-mutation's to tell.
  const fresh: Instruments = {
    key: (_, index) => projection.key(copy.event(records[index]!) as never),
    evolve: (doc, context, part) => projection.evolve(copy.document(doc), copy.event(part.record) as never, context)
  }
  const [first, second] = [fold(projection, records, instruments), fold(projection, records, fresh)]
  const difference = compareFolds(projection, first, second, ["first", "then"])
  if (difference !== undefined) throw new Broken(`folding the same history twice gave different results:\n${difference}`)
}

const noMutation = (projection: Projection.Projection<any, any>, { records }: Prepared): void => {
  const copy = copier(projection)
  const watch = (what: string, value: unknown) => {
    const before = show(value)
    return () => {
      if (show(value) !== before) {
        return `${what} was changed:\n${diff(JSON.parse(before), value, ["before", "after"]).map((line) => `  ${line}`).join("\n")}`
      }
      return undefined
    }
  }
  const instruments: Instruments = {
    key: (_, index) => {
      const event = copy.event(records[index]!)
      const unchanged = watch(`the event #${index} given to key`, event)
      const result = attempt(() => projection.key(event as never))
      const change = unchanged()
      if (change !== undefined) throw new Broken(`key mutated its input: ${change}`)
      if ("threw" in result) throw result.threw
      return result.value
    },
    evolve: (doc, context, part) => {
      const document = copy.document(doc)
      const event = copy.event(part.record)
      const checks = [watch("the document", document), watch("the event", event)]
      const read = (id: string) => {
        const other = copy.document(context.read(id))
        checks.push(watch(`the document "${id}" it read`, other))
        return other
      }
      const result = attempt(() => projection.evolve(document, event as never, { key: context.key, read }))
      for (const unchanged of checks) {
        const change = unchanged()
        if (change !== undefined) throw new Broken(`${describeCall(part)} mutated its input: ${change}`)
      }
      if ("threw" in result) throw result.threw
      return result.value
    }
  }
  fold(projection, records, instruments)
}

const stablePartition = (projection: Projection.Projection<any, any>, { records }: Prepared): void => {
  const partitionOf = (event: Projection.Event, key: string) =>
    projection.partition === undefined ? key : projection.partition(event as never, key)
  const known = new Map<string, { readonly partition: string; readonly index: number }>()
  const instruments: Instruments = {
    partition: (event, key, index) => {
      const partition = partitionOf(event, key)
      const before = known.get(key)
      if (before !== undefined && before.partition !== partition) {
        throw new Broken(
          `document "${key}" is in partition ${show(before.partition)} at event #${before.index} ` +
            `and in ${show(partition)} at event #${index}: its events may then apply out of order, in two lanes`
        )
      }
      if (before === undefined) known.set(key, { partition, index })
      return partition
    },
    evolve: (doc, context, part) => {
      const mine = partitionOf(part.event, part.key)
      const read = (id: string) => {
        const theirs = part.keys.includes(id) ? partitionOf(part.event, id) : known.get(id)?.partition
        if (theirs !== undefined && theirs !== mine) {
          throw new Broken(
            `${describeCall(part)} (partition ${show(mine)}) read document "${id}" of partition ${show(theirs)}: ` +
              "read sees only documents of the evolving document's partition (give them one partition)"
          )
        }
        return context.read(id)
      }
      return projection.evolve(doc, part.event as never, { key: context.key, read })
    }
  }
  fold(projection, records, instruments)
}

const schemaRoundTrip = (projection: Projection.Projection<any, any>, { records }: Prepared): void => {
  const encode = Schema.encodeEither(projection.document)
  const decode = Schema.decodeUnknownEither(projection.document)
  const same = sameDocument(projection)
  const instruments: Instruments = {
    evolve: (doc, context, part) => {
      const next = projection.evolve(doc, part.event as never, context)
      if (next === undefined) return next
      const encoded = encode(next)
      if (Either.isLeft(encoded)) {
        throw new Broken(`${describeCall(part)} returned a document its schema rejects: ${show(next)}\n${encoded.left.message}`)
      }
      const decoded = decode(encoded.right)
      if (Either.isLeft(decoded)) {
        throw new Broken(`${describeCall(part)} returned a document that does not decode once encoded: ${show(encoded.right)}\n${decoded.left.message}`)
      }
      const lost = diff(withoutUndefined(next), withoutUndefined(decoded.right), ["returned", "read back"])
      if (!same(next, decoded.right) || lost.length > 0) {
        throw new Broken(
          `${describeCall(part)} returned a document that changes through its schema ` +
            `(stored, then read back, evolve would see another document):\n${lost.map((line) => `  ${line}`).join("\n")}`
        )
      }
      return next
    }
  }
  fold(projection, records, instruments)
}

/** A plain copy without fields whose value is `undefined` (an optional field left out is no difference). */
const withoutUndefined = (value: unknown): unknown => {
  if (Array.isArray(value)) return value.map(withoutUndefined)
  if (typeof value === "object" && value !== null && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => [k, withoutUndefined(v)]))
  }
  return value
}

const streamInterleaving = (
  projection: Projection.Projection<any, any>,
  { records }: Prepared,
  choices: ReadonlyArray<number>
): void => {
  // Another order that keeps each stream's order: at each step, `choices` picks the
  // stream that goes next among those left, by the recorded order of their next
  // events — so choices of 0 are the recorded order, and shrinking heads back to it.
  const queues = new Map<string, Array<InMemory.RecordedEvent>>()
  for (const r of records) {
    const queue = queues.get(r.streamId)
    if (queue === undefined) queues.set(r.streamId, [r])
    else queue.push(r)
  }
  const pending = [...queues.values()]
  const reordered: Array<InMemory.RecordedEvent> = []
  for (let step = 0; pending.length > 0; step++) {
    pending.sort((a, b) => Number(a[0]!.position - b[0]!.position))
    const at = (choices[step] ?? 0) % pending.length
    reordered.push(pending[at]!.shift()!)
    if (pending[at]!.length === 0) pending.splice(at, 1)
  }
  const indexOf = (r: InMemory.RecordedEvent) => Number(r.position) - 1
  const inOrder = fold(projection, records)
  // Besides the random order, each swap of two neighbours of different streams: a
  // check that depends on the history alone, so that it shrinks to two events.
  const orders = [reordered]
  for (let i = 0; i + 1 < records.length; i++) {
    if (records[i]!.streamId === records[i + 1]!.streamId) continue
    orders.push([...records.slice(0, i), records[i + 1]!, records[i]!, ...records.slice(i + 2)])
  }
  for (const order of orders) {
    const difference = compareFolds(projection, inOrder, fold(projection, order, {}, indexOf), ["recorded order", "other order"])
    if (difference !== undefined) {
      throw new Broken(
        "not safe for persistent mode: delivered in another order that keeps each stream's order " +
          `(#${order.map(indexOf).join(", #")}), the documents differ from the recorded order's:\n${difference}`
      )
    }
  }
}

/** How two folds differ, as text; `undefined` when they agree. */
const compareFolds = (
  projection: Projection.Projection<any, any>,
  expected: Folded,
  actual: Folded,
  labels: readonly [string, string]
): string | undefined => {
  const same = sameDocument(projection)
  const lines: Array<string> = []
  for (const id of [...new Set([...expected.documents.keys(), ...actual.documents.keys()])].sort()) {
    const e = expected.documents.get(id)
    const a = actual.documents.get(id)
    if (e === undefined || a === undefined || !same(e, a)) {
      lines.push(`  document "${id}":`, ...diff(e, a, labels).map((line) => `    ${line}`))
    }
  }
  const poisonOf = (folded: Folded) => [...new Set(folded.poison.map((p) => `#${p.index}`))].sort().join(", ")
  if (poisonOf(expected) !== poisonOf(actual)) {
    lines.push(`  poison events: ${labels[0]} [${poisonOf(expected)}], ${labels[1]} [${poisonOf(actual)}]`)
  }
  return lines.length === 0 ? undefined : lines.join("\n")
}

// ---- the laws with the engine --------------------------------------------------------------

const stopArbitrary: fc.Arbitrary<Stop> = fc.record({
  afterCalls: fc.integer({ min: 1, max: 10 }),
  kind: fc.constantFrom("interrupt" as const, "crash" as const)
})

const faultsArbitrary = fc.record({
  lanes: fc.integer({ min: 1, max: 4 }),
  batchSize: fc.integer({ min: 1, max: 8 }),
  chunkSize: fc.integer({ min: 1, max: 8 }),
  faults: fc.record({
    seed: fc.integer({ min: 1, max: 1_000_000 }),
    duplicateRate: fc.constantFrom(0, 0.2),
    reorderRate: fc.constantFrom(0, 0.3),
    dropRate: fc.constantFrom(0, 0.05),
    transientFailureRate: fc.constantFrom(0, 0.2),
    lostAcknowledgementRate: fc.constantFrom(0, 0.15),
    stops: fc.array(stopArbitrary, { maxLength: 2 })
  }) as fc.Arbitrary<Faults>
})

/** Runs an engine law's scenario: its violation, if any, becomes the property's failure. */
const violation = async (scenario: Effect.Effect<string | undefined>): Promise<void> => {
  const found = await Effect.runPromise(scenario)
  if (found !== undefined) throw new Broken(found)
}

/**
 * Every event delivered twice must give what a plain fold of the same log gives
 * (each event once); every event again from the start must then change nothing.
 * (One log for both: the in-memory log stamps events with the time of appending.)
 */
const redelivery = (
  projection: Projection.Projection<any, any>,
  mode: Mode,
  { appended }: Prepared,
  params: { readonly lanes: number; readonly batchSize: number }
) =>
  Effect.gen(function*() {
    const twice = yield* runEngine(projection, appended, {
      mode,
      ...params,
      faults: { seed: 1, duplicateRate: twiceRate(mode) },
      replayFromStart: true
    })
    const reference = fold(projection, twice.recorded)
    const lines = [
      ...documentChanges(projection, "every event delivered twice", reference, twice),
      ...poisonChanges(reference, twice),
      // Documents only: whether a replay sets a poison event aside again once its document moved on is the engine's policy.
      ...outcomeChanges("then every event replayed from the start", twice, twice.replayed!)
    ]
    return lines.length === 0
      ? undefined
      : `redelivery changed the read model (lanes ${params.lanes}, batch size ${params.batchSize}):\n${lines.join("\n")}`
  }).pipe(Effect.catchTag("EngineFailed", (error) => Effect.succeed(error.message)))

/** Where the engine's documents differ from a plain fold's, leaving out documents a poison event stopped at. */
const documentChanges = (projection: Projection.Projection<any, any>, what: string, reference: Folded, outcome: Outcome) => {
  const actual = decodeBodies(projection, outcome.bodies)
  if (Either.isLeft(actual)) return [`  ${what}: ${actual.left}`]
  const same = sameDocument(projection)
  // Whether a poisoned document's later events apply or wait for the poison to be
  // resolved is the engine's policy: those documents are not compared.
  const stopped = new Set(reference.poison.flatMap((p) => p.key === undefined ? [] : [p.key]))
  const lines: Array<string> = []
  for (const id of [...new Set([...reference.documents.keys(), ...actual.right.keys()])].sort()) {
    if (stopped.has(id)) continue
    const e = reference.documents.get(id)
    const a = actual.right.get(id)
    if (e === undefined || a === undefined || !same(e, a)) {
      lines.push(`  ${what}, document "${id}":`, ...diff(e, a, ["plain fold", "engine"]).map((line) => `    ${line}`))
    }
  }
  return lines
}

/**
 * Where the engine's poison differs from a plain fold's: everything it set aside
 * must be poison in the fold, and the first poison event of each document set aside.
 */
const poisonChanges = (reference: Folded, outcome: Outcome): Array<string> => {
  const indexOf = new Map(outcome.recorded.map((r) => [identity(r), Number(r.position) - 1]))
  const poison = new Set(reference.poison.map((p) => p.identity))
  const firstPerDocument = new Set<string>()
  const seen = new Set<string>()
  for (const p of reference.poison) {
    if (p.key === undefined || !seen.has(p.key)) firstPerDocument.add(p.identity)
    if (p.key !== undefined) seen.add(p.key)
  }
  const lines: Array<string> = []
  for (const [id, reason] of outcome.poison) {
    if (!poison.has(id)) lines.push(`  event #${indexOf.get(id)} was set aside, but a plain fold applies it: ${reason}`)
  }
  for (const id of firstPerDocument) {
    if (!outcome.poison.has(id)) lines.push(`  event #${indexOf.get(id)} is poison in a plain fold, but the engine did not set it aside`)
  }
  return lines
}

const outcomeChanges = (what: string, before: Pick<Outcome, "bodies">, after: Pick<Outcome, "bodies">) => {
  const lines: Array<string> = []
  for (const id of [...new Set([...before.bodies.keys(), ...after.bodies.keys()])].sort()) {
    const a = before.bodies.get(id)
    const b = after.bodies.get(id)
    if (show(a) !== show(b)) lines.push(`  ${what}, document "${id}":`, ...diff(a, b, ["before", "after"]).map((line) => `    ${line}`))
  }
  return lines
}

const underFaults = (
  projection: Projection.Projection<any, any>,
  mode: Mode,
  { appended }: Prepared,
  params: { readonly lanes: number; readonly batchSize: number; readonly chunkSize: number; readonly faults: Faults }
) =>
  Effect.gen(function*() {
    const outcome = yield* runEngine(projection, appended, { mode, ...params })
    const reference = fold(projection, outcome.recorded)
    const lines = documentChanges(projection, "under faults", reference, outcome)
    lines.push(...poisonChanges(reference, outcome))
    if (lines.length === 0) return undefined
    const { batchSize, chunkSize, faults, lanes } = params
    return `the engine's read model differs from a plain fold of the history ` +
      `(lanes ${lanes}, batch size ${batchSize}, chunk size ${chunkSize}, faults ${show(faults)}):\n${lines.join("\n")}`
  }).pipe(Effect.catchTag("EngineFailed", (error) => Effect.succeed(error.message)))
