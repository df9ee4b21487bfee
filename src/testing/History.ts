/**
 * Random histories of a projection's own events, derived from its event
 * schemas with Effect's `Arbitrary`: many streams, and hooks to make events
 * meet on documents (ids from a small pool) and stay realistic (amounts in a
 * range, fields that agree with each other). Shrinking works through every hook.
 *
 * @since 0.1.0
 */
import { Arbitrary, Either, FastCheck as fc, ParseResult, Schema } from "effect"
import type * as Projection from "../Projection.js"
import { show } from "./internal/show.js"

/**
 * One event of a history: its type, its decoded data (as `evolve` sees it, after
 * the round trip through JSON the store of events makes) and its stream.
 *
 * @since 0.1.0
 */
export type HistoryEvent<Events extends Projection.EventSchemas> = {
  readonly [K in keyof Events & string]: {
    readonly stream: string
    readonly type: K
    readonly data: Schema.Schema.Type<Events[K]>
  }
}[keyof Events & string]

/** A history: events in the order they were recorded. @since 0.1.0 */
export type History<Events extends Projection.EventSchemas = Projection.EventSchemas> = ReadonlyArray<HistoryEvent<Events>>

/** A history event before it is given a stream. @since 0.1.0 */
export type Draft<Events extends Projection.EventSchemas> = {
  readonly [K in keyof Events & string]: { readonly type: K; readonly data: Schema.Schema.Type<Events[K]> }
}[keyof Events & string]

/**
 * How histories are generated.
 *
 * @since 0.1.0
 */
export interface Options<Events extends Projection.EventSchemas> {
  /** Fewest events in a history. Default 1. */
  readonly minEvents?: number | undefined
  /** Most events in a history. Default 20. */
  readonly maxEvents?: number | undefined
  /** Streams per category events are spread over (`<category>-0`…). Default 3. Ignored with `stream`. */
  readonly streams?: number | undefined
  /** Derives an event's stream from the event (e.g. `account-${data.account}`), instead of a random one. */
  readonly stream?: ((event: Draft<Events>) => string) | undefined
  /**
   * Arbitraries for fields by name, in any event that has them; a dotted path
   * (`transaction.to`) reaches into nested objects. The way to draw ids from a
   * small pool so that events meet on documents (see {@link ids}).
   */
  readonly fields?: { readonly [path: string]: fc.Arbitrary<unknown> } | undefined
  /**
   * Per event type: the arbitrary of its data, given the one derived from its
   * schema (after `fields`). Map it to relate fields, or return another.
   */
  readonly events?: {
    readonly [K in keyof Events & string]?: (
      derived: fc.Arbitrary<Schema.Schema.Type<Events[K]>>
    ) => fc.Arbitrary<Schema.Schema.Type<Events[K]>>
  } | undefined
  /** Relative frequency of each event type (default 1 each); 0 leaves a type out. */
  readonly weights?: { readonly [K in keyof Events & string]?: number } | undefined
}

/**
 * A small pool of ids, `prefix1` … `prefixN`: events drawing from it meet on
 * the same documents. Shrinks towards `prefix1`.
 *
 * @since 0.1.0
 */
export const ids = (prefix: string, count: number): fc.Arbitrary<string> =>
  fc.integer({ min: 1, max: Math.max(1, count) }).map((n) => `${prefix}${n}`)

/**
 * Histories of the projection's declared events. Each event's data is generated
 * from its schema, valid by construction: a hook that yields data its schema
 * rejects fails generation with that reason; values JSON cannot carry (NaN,
 * infinities) are left out.
 *
 * @since 0.1.0
 */
export const arbitrary = <Events extends Projection.EventSchemas>(
  projection: Projection.Projection<Events, any>,
  // Options for a wider set of events (shared by several projections) fit too.
  options: Options<NoInfer<Events>> = {}
): fc.Arbitrary<History<Events>> => {
  const weights = (options.weights ?? {}) as Record<string, number | undefined>
  const types = Object.keys(projection.events).filter((type) => (weights[type] ?? 1) > 0)
  if (types.length === 0) throw new TypeError(`History.arbitrary: no event type of ${projection.name} left to generate`)
  const drafts = fc.oneof(
    ...types.map((type) => ({
      weight: weights[type] ?? 1,
      arbitrary: dataArbitrary(projection, type, options).map((data) => ({ type, data }))
    }))
  )
  const streamCount = Math.max(1, options.streams ?? 3)
  const derive = options.stream
  const event: fc.Arbitrary<HistoryEvent<Events>> = derive !== undefined
    ? drafts.map((draft) => ({ ...draft, stream: derive(draft as Draft<Events>) }) as HistoryEvent<Events>)
    : fc.tuple(drafts, fc.constantFrom(...projection.categories), fc.integer({ min: 0, max: streamCount - 1 })).map(
      ([draft, category, n]) => ({ ...draft, stream: `${category}-${n}` }) as HistoryEvent<Events>
    )
  return fc.array(event, { minLength: options.minEvents ?? 1, maxLength: Math.max(options.minEvents ?? 1, options.maxEvents ?? 20) })
}

const dataArbitrary = <Events extends Projection.EventSchemas>(
  projection: Projection.Projection<Events, any>,
  type: string,
  options: Options<Events>
): fc.Arbitrary<unknown> => {
  const schema = projection.events[type]!
  let data: fc.Arbitrary<unknown> = Arbitrary.make(schema)
  const fields = Object.entries(options.fields ?? {})
  if (fields.length > 0) {
    data = fc.tuple(data, fc.tuple(...fields.map(([, arbitrary]) => arbitrary))).map(([generated, values]) =>
      fields.reduce((acc, [path, _], i) => setPath(acc, path.split("."), values[i]), generated)
    )
  }
  const hook = (options.events as Record<string, ((a: fc.Arbitrary<unknown>) => fc.Arbitrary<unknown>) | undefined> | undefined)?.[type]
  if (hook !== undefined) data = hook(data)
  const valid = Schema.validateEither(Schema.typeSchema(schema))
  const encode = Schema.encodeEither(schema)
  const decode = Schema.decodeUnknownEither(schema)
  // Data travels as JSON: what evolve sees is the data after that round trip.
  return data
    .map((generated) => {
      const checked = valid(generated)
      if (Either.isLeft(checked)) {
        throw new TypeError(
          `History.arbitrary: a hook made ${type} data its schema rejects: ${show(generated)}\n` +
            ParseResult.TreeFormatter.formatErrorSync(checked.left)
        )
      }
      const encoded = encode(generated)
      if (Either.isLeft(encoded)) return undefined
      let json: unknown
      try {
        json = JSON.parse(JSON.stringify(encoded.right))
      } catch {
        return undefined
      }
      const decoded = decode(json)
      return Either.isRight(decoded) ? { value: decoded.right } : undefined
    })
    .filter((carried) => carried !== undefined)
    .map((carried) => carried!.value)
}

/** `value` with `path` set to `to`, where the path exists in it (a copy; the rest is shared). */
const setPath = (value: unknown, path: ReadonlyArray<string>, to: unknown): unknown => {
  if (path.length === 0) return to
  if (typeof value !== "object" || value === null || Array.isArray(value) || !(path[0]! in value)) return value
  const [head, ...rest] = path
  const record = value as Record<string, unknown>
  return { ...record, [head!]: setPath(record[head!], rest, to) }
}

/**
 * One line per event (`#0 account-1 Deposited {"account":"a1","amount":5}`), for
 * failure messages.
 *
 * @since 0.1.0
 */
export const format = (history: ReadonlyArray<{ readonly stream: string; readonly type: string; readonly data: unknown }>): string =>
  history.map((event, index) => `  #${index} ${event.stream} ${event.type} ${show(event.data)}`).join("\n")
