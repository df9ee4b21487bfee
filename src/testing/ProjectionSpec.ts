/**
 * Given/when/then specs for a projection, run by the real engine on the
 * in-memory ports:
 *
 * ```ts
 * ProjectionSpec.for(balances)
 *   .given({ stream: "account-1", type: "Deposited", data: { account: "1", amount: 10 } })
 *   .when({ stream: "account-1", type: "Transferred", data: { from: "1", to: "2", amount: 4 } })
 *   .then({ "1": { balance: 6, transactions: 2 }, "2": { balance: 4, transactions: 1 } })
 * ```
 *
 * `then` returns an Effect that fails with a readable {@link ProjectionSpecFailed}
 * (which documents differ, field by field, and the events). By default every
 * event is also delivered a second time, and all of them replayed from the
 * start, and the documents must not change.
 *
 * @since 0.1.0
 */
import { Data, Effect, Either, Schema } from "effect"
import type * as Projection from "../Projection.js"
import type { Outcome } from "./internal/engine.js"
import { decodeBodies, runEngine, twiceRate } from "./internal/engine.js"
import type { Appended } from "./internal/records.js"
import { encodeData, identity } from "./internal/records.js"
import { sameDocument } from "./internal/reference.js"
import { diff, show } from "./internal/show.js"

/**
 * How a spec runs the engine.
 *
 * @since 0.1.0
 */
export interface Options {
  /** `catch-up` (default) or `persistent` (poison events are then parked, not dead-lettered). */
  readonly mode?: "catch-up" | "persistent" | undefined
  /** Also deliver every event twice, and replay all from the start, and expect no change. Default true. */
  readonly replay?: boolean | undefined
  /** Engine lanes. Default 4. */
  readonly lanes?: number | undefined
  /** Engine batch size. Default 100. */
  readonly batchSize?: number | undefined
}

/**
 * An event of a spec: one of the projection's event types with its decoded data
 * (encoded with its schema before it is appended), in `stream` (default
 * `<first category>-1`).
 *
 * @since 0.1.0
 */
export type SpecEvent<Events extends Projection.EventSchemas> = {
  readonly [K in keyof Events & string]: {
    readonly type: K
    readonly data: Schema.Schema.Type<Events[K]>
    readonly stream?: string | undefined
    readonly id?: string | undefined
  }
}[keyof Events & string]

/**
 * An event appended exactly as given, unchecked: for malformed payloads and
 * types the projection does not declare. Make one with {@link raw}.
 *
 * @since 0.1.0
 */
export interface RawEvent {
  readonly _tag: "RawEvent"
  readonly type: string
  /** JSON data, or raw bytes (`Uint8Array`). */
  readonly data: unknown
  readonly stream?: string | undefined
  readonly id?: string | undefined
}

/** An event appended as given, unchecked (see {@link RawEvent}). @since 0.1.0 */
export const raw = (event: Omit<RawEvent, "_tag">): RawEvent => ({ _tag: "RawEvent", ...event })

/**
 * A spec did not hold: the message says what differs, document by document and
 * field by field, and lists the spec's events.
 *
 * @since 0.1.0
 */
export class ProjectionSpecFailed extends Data.TaggedError("ProjectionSpecFailed")<{
  readonly projection: string
  readonly message: string
}> {}

/**
 * A spec under construction. `given` and `when` append events (in that order);
 * `then` and `thenDeadLettered` run it.
 *
 * Not a promise: awaiting a spec without `then(expected)` rejects with an
 * explanation rather than hanging or passing.
 *
 * @since 0.1.0
 */
export interface ProjectionSpec<Events extends Projection.EventSchemas, Doc> {
  /** Events that happened before: the state the spec starts from. */
  readonly given: (...events: ReadonlyArray<SpecEvent<Events> | RawEvent>) => ProjectionSpec<Events, Doc>
  /** The events under test, after the given ones. */
  readonly when: (...events: ReadonlyArray<SpecEvent<Events> | RawEvent>) => ProjectionSpec<Events, Doc>
  /**
   * Runs the spec: the projection's documents, by id, are exactly `expected`
   * (compared by the document schema's equivalence), and no event was poison.
   */
  readonly then: (expected: Readonly<Record<string, Doc>>) => Effect.Effect<void, ProjectionSpecFailed>
  /**
   * Runs the spec expecting the event at `eventIndex` (counting the given events,
   * then the when events, from 0) to be poison — dead-lettered, or parked in
   * persistent mode — with a reason that matches `reason`, and no other. With
   * `expected`, the documents are checked as by `then`.
   */
  readonly thenDeadLettered: (
    eventIndex: number,
    reason: RegExp | string,
    expected?: Readonly<Record<string, Doc>>
  ) => Effect.Effect<void, ProjectionSpecFailed>
}

type Input = SpecEvent<any> | RawEvent

const build = <Events extends Projection.EventSchemas, Doc>(
  projection: Projection.Projection<Events, Doc>,
  options: Options,
  given: ReadonlyArray<Input>,
  when: ReadonlyArray<Input>
): ProjectionSpec<Events, Doc> => {
  const spec: ProjectionSpec<Events, Doc> = {
    given: (...events) => build(projection, options, [...given, ...events], when),
    when: (...events) => build(projection, options, given, [...when, ...events]),
    then: ((expected: unknown, onRejected?: unknown) => {
      // `await spec` calls then(resolve, reject): a spec is not a promise.
      if (typeof expected === "function") {
        const reject = typeof onRejected === "function" ? onRejected : () => {}
        reject(new TypeError("A ProjectionSpec is not a promise: end it with .then(expectedDocuments) and run the Effect that returns"))
        return undefined
      }
      return verify(projection, options, given, when, expected as Record<string, Doc>, undefined)
    }) as ProjectionSpec<Events, Doc>["then"],
    thenDeadLettered: (eventIndex, reason, expected) =>
      verify(projection, options, given, when, expected, { index: eventIndex, reason })
  }
  return spec
}

/**
 * Starts a spec for a projection (exported as `for`: `ProjectionSpec.for(projection)`).
 *
 * @since 0.1.0
 */
const make = <Events extends Projection.EventSchemas, Doc>(
  projection: Projection.Projection<Events, Doc>,
  options: Options = {}
): ProjectionSpec<Events, Doc> => build(projection, options, [], [])

export { make as for }

const verify = Effect.fn("ProjectionSpec.run")(
  function*(
    projection: Projection.Projection<any, any>,
    options: Options,
    given: ReadonlyArray<Input>,
    when: ReadonlyArray<Input>,
    expected: Readonly<Record<string, unknown>> | undefined,
    poison: { readonly index: number; readonly reason: RegExp | string } | undefined
  ): Effect.fn.Return<void, ProjectionSpecFailed> {
    yield* Effect.annotateCurrentSpan("projection", projection.name)
    const mode = options.mode ?? "catch-up"
    const events = [...given, ...when]
    const setAside = mode === "catch-up" ? "dead-lettered" : "parked"
    const listing = [
      `events (${given.length} given, ${when.length} when):`,
      ...events.map((event, i) =>
        `  #${i} ${event.stream ?? defaultStream(projection)} ${event.type} ${show(event.data)}${i < given.length ? "" : "  (when)"}`
      )
    ].join("\n")
    const failure = (headline: string, details: ReadonlyArray<string>) =>
      new ProjectionSpecFailed({
        projection: projection.name,
        message: [`ProjectionSpec ${projection.name} (${mode}): ${headline}`, ...details, listing].join("\n")
      })

    const appended: Array<Appended> = []
    for (const [i, event] of events.entries()) {
      const data = "_tag" in event && event._tag === "RawEvent"
        ? Either.right(event.data)
        : encodeData(projection, event.type, event.data)
      if (Either.isLeft(data)) return yield* failure(`event #${i} (${event.type}) does not match its schema`, [data.left])
      appended.push({ stream: event.stream ?? defaultStream(projection), type: event.type, data: data.right, id: event.id ?? `spec-${i}` })
    }
    if (poison !== undefined && (!Number.isInteger(poison.index) || poison.index < 0 || poison.index >= events.length)) {
      return yield* failure(`thenDeadLettered(${poison.index}): the spec has events #0 to #${events.length - 1}`, [])
    }

    const engineFailure = (what: string) => (error: { readonly message: string }) => failure(`${what}: ${error.message}`, [])
    const run = { mode, lanes: options.lanes, batchSize: options.batchSize } as const
    const outcome = yield* runEngine(projection, appended, run).pipe(Effect.mapError(engineFailure("the engine failed")))
    const indexOf = new Map(outcome.recorded.map((record) => [identity(record), Number(record.position) - 1]))

    // Poison: exactly the expected event, with a matching reason; none for `then`.
    const lines: Array<string> = []
    for (const [id, reason] of outcome.poison) {
      const index = indexOf.get(id)!
      if (poison !== undefined && index === poison.index) {
        const matches = typeof poison.reason === "string" ? reason.includes(poison.reason) : poison.reason.test(reason)
        if (!matches) lines.push(`event #${index} was ${setAside}, but its reason does not match ${String(poison.reason)}: ${reason}`)
      } else lines.push(`event #${index} (${events[index]!.type}) was ${setAside}: ${reason}`)
    }
    if (poison !== undefined && ![...outcome.poison.keys()].some((id) => indexOf.get(id) === poison.index)) {
      lines.push(`event #${poison.index} (${events[poison.index]!.type}) was expected to be ${setAside}, and was not`)
    }
    if (lines.length > 0) return yield* failure(poison === undefined ? `an event was ${setAside}` : `not the poison expected`, lines)

    if (expected !== undefined) {
      const mismatch = compareDocuments(projection, expected, outcome)
      if (mismatch !== undefined) return yield* failure(mismatch.headline, mismatch.details)
    }

    if (options.replay ?? true) {
      // A log of its own that delivers every event twice, then every event again from the start.
      const again = yield* runEngine(projection, appended, { ...run, faults: { seed: 1, duplicateRate: twiceRate(mode) }, replayFromStart: true })
        .pipe(Effect.mapError(engineFailure("the engine failed when every event was delivered twice")))
      const twice = expected !== undefined ? compareDocuments(projection, expected, again) : undefined
      const changes = [
        ...(twice === undefined ? changed("delivering every event twice", outcome, again) : [`  delivering every event twice: ${twice.headline}`, ...twice.details]),
        // Documents only: whether a replay sets a poison event aside again once its document moved on is the engine's policy.
        ...changed("then replaying every event from the start", again, { bodies: again.replayed!.bodies, poison: again.poison })
      ]
      if (changes.length > 0) return yield* failure("redelivery changed the read model (it must be a no-op)", changes)
    }
  }
)

const defaultStream = (projection: Projection.Projection<any, any>) => `${projection.categories[0]}-1`

/** What differs between the expected documents and the engine's, or nothing. */
const compareDocuments = (
  projection: Projection.Projection<any, any>,
  expected: Readonly<Record<string, unknown>>,
  outcome: Outcome
): { readonly headline: string; readonly details: ReadonlyArray<string> } | undefined => {
  const encode = Schema.encodeEither(projection.document)
  const details: Array<string> = []
  const expectedBodies = new Map<string, unknown>()
  for (const [id, doc] of Object.entries(expected)) {
    const encoded = encode(doc)
    if (Either.isLeft(encoded)) details.push(`expected document "${id}" does not match the document schema: ${encoded.left.message}`)
    else expectedBodies.set(id, encoded.right)
  }
  if (details.length > 0) return { headline: "the expected documents are not valid", details }
  const actual = decodeBodies(projection, outcome.bodies)
  if (Either.isLeft(actual)) return { headline: "a stored document does not decode", details: [actual.left] }
  const same = sameDocument(projection)
  const ids = [...new Set([...Object.keys(expected), ...actual.right.keys()])].sort()
  for (const id of ids) {
    if (!actual.right.has(id)) details.push(`  document "${id}": expected ${show(expectedBodies.get(id))}, missing`)
    else if (!(id in expected)) details.push(`  document "${id}": not expected, got ${show(outcome.bodies.get(id))}`)
    else if (!same(expected[id], actual.right.get(id))) {
      details.push(`  document "${id}":`, ...diff(expectedBodies.get(id), outcome.bodies.get(id)).map((line) => `    ${line}`))
    }
  }
  return details.length === 0 ? undefined : { headline: "the documents differ from the expected ones", details }
}

/** How `after` differs from `before` (documents and poison), as lines. */
const changed = (
  what: string,
  before: Pick<Outcome, "bodies" | "poison">,
  after: Pick<Outcome, "bodies" | "poison">
): Array<string> => {
  const lines: Array<string> = []
  for (const id of new Set([...before.bodies.keys(), ...after.bodies.keys()])) {
    const a = before.bodies.get(id)
    const b = after.bodies.get(id)
    if (show(a) !== show(b)) lines.push(`  ${what}, document "${id}":`, ...diff(a, b, ["before", "after"]).map((line) => `    ${line}`))
  }
  const poisonBefore = [...before.poison.keys()].sort().join(", ")
  const poisonAfter = [...after.poison.keys()].sort().join(", ")
  if (poisonBefore !== poisonAfter) lines.push(`  ${what}, poison events: [${poisonBefore}] became [${poisonAfter}]`)
  return lines
}
