/**
 * Defining projections: which events a read model understands, which documents
 * an event touches, and how a document evolves with each event.
 *
 * @since 0.1.0
 */
import { Effect, Either, ParseResult, Schema } from "effect"

/**
 * A decoded event as a projection sees it: `type` discriminates `data`.
 * `metadata` is decoded by the projection's metadata schema when it has one;
 * otherwise it is the parsed JSON, `undefined` when empty, or the raw bytes
 * when they are not JSON. The event's identity is its position: `streamId` and
 * `revision` (event ids are not unique across streams).
 *
 * @since 0.1.0
 */
export interface Event<Type extends string = string, Data = unknown, Metadata = unknown> {
  readonly type: Type
  readonly data: Data
  readonly metadata: Metadata
  readonly id: string
  readonly streamId: string
  readonly revision: bigint
  readonly position: bigint
  readonly created: Date
}

/** A schema for events' metadata (correlation and causation ids, tenant, user…). @since 0.1.0 */
export type MetadataSchema = Schema.Schema<any, any, never>

/**
 * The event schemas of a projection, by event type. Only these types are decoded;
 * every other type is skipped and counted.
 *
 * @since 0.1.0
 */
export type EventSchemas = { readonly [type: string]: Schema.Schema<any, any, never> }

/**
 * The union of decoded events of a projection's schemas.
 *
 * @since 0.1.0
 */
export type EventOf<Events extends EventSchemas, Metadata = unknown> = {
  readonly [K in keyof Events & string]: Event<K, Schema.Schema.Type<Events[K]>, Metadata>
}[keyof Events & string]

/** The encoded form of a document: a plain object, as the store keeps it. @since 0.1.0 */
export type EncodedDocument = { readonly [field: string]: unknown }

/**
 * A projection: a pure fold of events into documents of one collection.
 *
 * `evolve` must be pure and total for every event it declares: the engine may
 * call it again for the same document after a conflict, and treats a throw as a
 * poison event (dead-lettered or parked with the reason). Returning `undefined`
 * deletes the document.
 *
 * An event may touch several documents (`key` returns several ids): `evolve` is
 * called once for each, and `context.key` tells which. Joins: when they share a
 * `partition`, `evolve` can `context.read` the others as they stood before the
 * event. `read` of a document the event does not touch gives its latest state in
 * the lane, and is only meaningful within one partition.
 *
 * @since 0.1.0
 */
export interface Projection<Events extends EventSchemas = EventSchemas, Doc = any, Metadata = unknown> {
  readonly _tag: "Projection"
  readonly name: string
  /** Bump when `evolve` changes meaning: the checkpoint is kept per name and version. */
  readonly version: number
  /** The categories (`<category>-<id>` streams) the projection reads. */
  readonly categories: ReadonlyArray<string>
  readonly collection: string
  readonly document: Schema.Schema<Doc, any, never>
  readonly events: Events
  /** Decodes events' metadata; when absent `evolve` sees it raw (see {@link Event}). */
  readonly metadata: Schema.Schema<Metadata, any, never> | undefined
  /** The id(s) of the document(s) an event touches. */
  readonly key: (event: EventOf<Events, Metadata>) => string | ReadonlyArray<string>
  /**
   * The lane a document's events go to (default: the document's id). Documents
   * whose events share a partition are applied in order by one lane, so that
   * `read` sees them as they stood before each event.
   */
  readonly partition: ((event: EventOf<Events, Metadata>, key: string) => string) | undefined
  readonly evolve: (
    document: Doc | undefined,
    event: EventOf<Events, Metadata>,
    context: EvolveContext<Doc>
  ) => Doc | undefined
}

/**
 * What `evolve` knows besides the document and the event: which of the event's
 * documents it is evolving, and the others as they stood before the event.
 * Valid only during the call.
 *
 * @since 0.1.0
 */
export interface EvolveContext<Doc> {
  /** The id of the document being evolved (one of the event's keys). */
  readonly key: string
  /** Another document of this projection as it stood before the event (see `partition`). */
  readonly read: (key: string) => Doc | undefined
}

/**
 * An effectful handler: the escape hatch for side effects (e-mails, calls to
 * other systems). Semantics are **at-least-once**: after a crash or a redelivery
 * the handler may see the same event again, so it must be idempotent. Events of
 * one key are handled in order.
 *
 * @since 0.1.0
 */
export interface Handler<Events extends EventSchemas = EventSchemas, E = unknown, Metadata = unknown> {
  readonly _tag: "Handler"
  readonly name: string
  readonly version: number
  readonly categories: ReadonlyArray<string>
  readonly events: Events
  readonly metadata: Schema.Schema<Metadata, any, never> | undefined
  /** Events with the same key are handled in order; defaults to the source stream. */
  readonly key: (event: EventOf<Events, Metadata>) => string
  readonly handle: (event: EventOf<Events, Metadata>) => Effect.Effect<void, E>
}

/**
 * Defines a projection. Types flow from `events` and `document` into `key` and
 * `evolve`: no annotations or casts are needed in user code.
 *
 * @example
 * ```ts
 * const balances = Projection.make({
 *   name: "balances",
 *   categories: ["account"],
 *   collection: "balances",
 *   document: Schema.Struct({ balance: Schema.Number }),
 *   events: { Deposited: Schema.Struct({ account: Schema.String, amount: Schema.Number }) },
 *   key: (event) => event.data.account,
 *   evolve: (doc, event) => ({ balance: (doc?.balance ?? 0) + event.data.amount })
 * })
 * ```
 *
 * @since 0.1.0
 */
export const make = <
  const Events extends EventSchemas,
  // The document type comes from `document` alone (not from evolve's results),
  // so literal fields in evolve's results are checked against it, not widened.
  DocumentSchema extends Schema.Schema<any, any, never>,
  Metadata extends MetadataSchema = Schema.Schema<unknown>
>(options: {
  readonly name: string
  readonly version?: number
  readonly categories: ReadonlyArray<string>
  readonly collection?: string
  readonly document: DocumentSchema
  readonly events: Events
  /** Decodes each event's metadata; an event whose metadata it rejects is poison. */
  readonly metadata?: Metadata | undefined
  readonly key: (event: EventOf<Events, Schema.Schema.Type<Metadata>>) => string | ReadonlyArray<string>
  readonly partition?: ((event: EventOf<Events, Schema.Schema.Type<Metadata>>, key: string) => string) | undefined
  readonly evolve: (
    document: Schema.Schema.Type<DocumentSchema> | undefined,
    event: EventOf<Events, Schema.Schema.Type<Metadata>>,
    context: EvolveContext<Schema.Schema.Type<DocumentSchema>>
  ) => Schema.Schema.Type<DocumentSchema> | undefined
}): Projection<Events, Schema.Schema.Type<DocumentSchema>, Schema.Schema.Type<Metadata>> => ({
  _tag: "Projection",
  name: validName(options.name),
  version: options.version ?? 1,
  categories: validCategories(options.categories),
  collection: options.collection ?? options.name,
  document: options.document,
  events: options.events,
  metadata: options.metadata,
  key: options.key,
  partition: options.partition,
  evolve: options.evolve
})

/**
 * Defines an effectful, at-least-once handler (see {@link Handler}).
 *
 * @since 0.1.0
 */
export const handler = <const Events extends EventSchemas, E, Metadata extends MetadataSchema = Schema.Schema<unknown>>(options: {
  readonly name: string
  readonly version?: number
  readonly categories: ReadonlyArray<string>
  readonly events: Events
  readonly metadata?: Metadata | undefined
  readonly key?: (event: EventOf<Events, Schema.Schema.Type<Metadata>>) => string
  readonly handle: (event: EventOf<Events, Schema.Schema.Type<Metadata>>) => Effect.Effect<void, E>
}): Handler<Events, E, Schema.Schema.Type<Metadata>> => ({
  _tag: "Handler",
  name: validName(options.name),
  version: options.version ?? 1,
  categories: validCategories(options.categories),
  events: options.events,
  metadata: options.metadata,
  key: options.key ?? ((event) => event.streamId),
  handle: options.handle
})

/** Anything the engine can run. @since 0.1.0 */
export type Runnable = Projection<any, any, any> | Handler<any, any, any>

/** The checkpoint id of a projection or handler: its name and version. @since 0.1.0 */
export const checkpointId = (runnable: Runnable): string => `${runnable.name}@${runnable.version}`

/**
 * Builds the decoder of a projection's events from raw bytes: JSON-parses the
 * data and decodes it with the schema of its type, and the metadata with the
 * metadata schema when one is given (raw otherwise, see {@link Event}). The
 * decoder returns the event, `undefined` for a type the projection does not
 * declare, or the reason a declared event is invalid (a string). No wrapper
 * objects: it runs per event.
 *
 * @since 0.1.0
 */
export const decoder = (events: EventSchemas, metadata?: MetadataSchema | undefined) => {
  const decoders = new Map<string, (input: unknown) => Either.Either<unknown, ParseResult.ParseError>>()
  for (const type of Object.keys(events)) {
    decoders.set(type, Schema.decodeUnknownEither(events[type]!))
  }
  const decodeMetadata = metadata === undefined ? undefined : Schema.decodeUnknownEither(metadata)
  const text = new TextDecoder("utf-8", { fatal: true })
  return (raw: {
    readonly type: string
    readonly data: Uint8Array
    readonly metadata?: Uint8Array | undefined
    readonly id: string
    readonly streamId: string
    readonly revision: bigint
    readonly position: bigint
    readonly created: Date
  }): Event | string | undefined => {
    const decode = decoders.get(raw.type)
    if (decode === undefined) return undefined
    let json: unknown
    try {
      json = JSON.parse(text.decode(raw.data))
    } catch (error) {
      return `data is not JSON: ${String(error)}`
    }
    const decoded = decode(json)
    if (Either.isLeft(decoded)) return `data does not match the schema of ${raw.type}: ${decoded.left.message}`
    let meta: unknown = rawMetadata(raw.metadata, text)
    if (decodeMetadata !== undefined) {
      const result = decodeMetadata(meta)
      if (Either.isLeft(result)) return `metadata does not match the metadata schema: ${result.left.message}`
      meta = result.right
    }
    return {
      type: raw.type,
      data: decoded.right,
      metadata: meta,
      id: raw.id,
      streamId: raw.streamId,
      revision: raw.revision,
      position: raw.position,
      created: raw.created
    }
  }
}

/** The decoder of a projection's or handler's events, with its metadata schema. @since 0.1.0 */
export const decoderOf = (runnable: Runnable) => decoder(runnable.events, runnable.metadata)

/** Metadata without a schema: parsed JSON, `undefined` when empty, else the bytes. */
const rawMetadata = (bytes: Uint8Array | undefined, text: { decode: (bytes: Uint8Array) => string }): unknown => {
  if (bytes === undefined || bytes.length === 0) return undefined
  try {
    return JSON.parse(text.decode(bytes))
  } catch {
    return bytes
  }
}

const validName = (name: string): string => {
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw new TypeError(`Projection name must match [A-Za-z0-9_.-]+, got ${JSON.stringify(name)}`)
  }
  return name
}

const validCategories = (categories: ReadonlyArray<string>): ReadonlyArray<string> => {
  if (categories.length === 0) throw new TypeError("A projection needs at least one category")
  for (const category of categories) {
    if (category.length === 0 || category.includes("-")) {
      throw new TypeError(`A category is the part of a stream id before the first '-', got ${JSON.stringify(category)}`)
    }
  }
  return categories
}
