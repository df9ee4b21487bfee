/**
 * Folding a batch's events into one document: skip what the document's markers
 * say is applied, evolve the rest in order, and produce one guarded write.
 */
import { Either, ParseResult, Schema } from "effect"
import type { Event, Projection } from "../Projection.js"
import type { DocumentMeta, DocumentWrite, StoredDocument } from "../ReadModelStore.js"
import { emptyMeta } from "../ReadModelStore.js"

export type Mode = "catch-up" | "persistent"

/** A document as the engine holds it: decoded, with its bookkeeping. */
export interface Current {
  readonly state: unknown
  readonly meta: DocumentMeta
}

export interface DocumentCodec {
  readonly decode: (body: unknown) => Either.Either<unknown, ParseResult.ParseError>
  readonly encode: (doc: unknown) => Either.Either<Record<string, unknown>, ParseResult.ParseError>
}

export const documentCodec = (projection: Projection<any, any>): DocumentCodec => ({
  decode: Schema.decodeUnknownEither(projection.document),
  encode: Schema.encodeEither(projection.document) as DocumentCodec["encode"]
})

/** A stored document, decoded; or why it cannot be. */
export const decodeStored = (
  projection: Projection<any, any>,
  codec: DocumentCodec,
  stored: StoredDocument | undefined
): Either.Either<Current | undefined, string> => {
  if (stored === undefined) return Either.right(undefined)
  if (stored.body === undefined || stored.meta.deleted) return Either.right({ state: undefined, meta: stored.meta })
  const decoded = codec.decode(stored.body)
  return Either.isLeft(decoded)
    ? Either.left(`stored document ${projection.collection}/${stored.id} does not match its schema: ${decoded.left.message}`)
    : Either.right({ state: decoded.right, meta: stored.meta })
}

export interface FoldResult<P> {
  readonly write: DocumentWrite | undefined
  /** The document after the write, for the engine's cache. */
  readonly next: Current | undefined
  readonly applied: number
  readonly duplicates: number
  readonly poisoned: ReadonlyArray<{ readonly part: P; readonly reason: string }>
}

/**
 * Folds `parts` (in delivery order) into the document `id`.
 * A throwing `evolve` or a result its Schema cannot encode poisons that event only.
 */
export const foldDocument = <P extends { readonly event: Event }>(
  projection: Projection<any, any>,
  codec: DocumentCodec,
  mode: Mode,
  id: string,
  current: Current | undefined,
  parts: ReadonlyArray<P>
): FoldResult<P> =>
  // Encode once at the end; only when that fails, fold again encoding each step
  // so that the one bad result is poisoned and the events before it still apply.
  fold(projection, codec, mode, id, current, parts, false) ?? fold(projection, codec, mode, id, current, parts, true)!

const fold = <P extends { readonly event: Event }>(
  projection: Projection<any, any>,
  codec: DocumentCodec,
  mode: Mode,
  id: string,
  current: Current | undefined,
  parts: ReadonlyArray<P>,
  encodeEachStep: boolean
): FoldResult<P> | undefined => {
  let applied = 0
  let duplicates = 0
  const poisoned: Array<{ part: P; reason: string }> = []
  const before = current?.meta ?? emptyMeta
  // The markers advance in locals; the new meta is built once, at the end.
  let position = before.position
  let streams: Record<string, bigint> | undefined = undefined
  let deleted = before.deleted
  let state: unknown = current?.state
  let encoded: Record<string, unknown> | undefined = undefined
  for (const part of parts) {
    const event = part.event
    if (mode === "catch-up") {
      if (position !== undefined && event.position <= position) {
        duplicates++
        continue
      }
    } else {
      const revision = (streams ?? before.streams)[event.streamId]
      if (revision !== undefined && event.revision <= revision) {
        duplicates++
        continue
      }
    }
    let next: unknown
    try {
      next = projection.evolve(state, event as never)
    } catch (error) {
      poisoned.push({ part, reason: `evolve threw on ${event.type}: ${describe(error)}` })
      continue
    }
    if (encodeEachStep && next !== undefined) {
      const result = codec.encode(next)
      if (Either.isLeft(result)) {
        poisoned.push({ part, reason: `evolve returned a document its schema rejects on ${event.type}: ${result.left.message}` })
        continue
      }
      encoded = result.right
    }
    state = next
    deleted = next === undefined
    if (mode === "catch-up") position = event.position
    else (streams ??= { ...before.streams })[event.streamId] = event.revision
    applied++
  }
  if (applied === 0) return { write: undefined, next: current, applied, duplicates, poisoned }
  if (!encodeEachStep && state !== undefined) {
    const result = codec.encode(state)
    if (Either.isLeft(result)) return undefined
    encoded = result.right
  }
  const meta: DocumentMeta = { version: before.version + 1, position, streams: streams ?? before.streams, deleted }
  return {
    write: { id, expectedVersion: before.version, body: state === undefined ? undefined : encoded, meta },
    next: { state, meta },
    applied,
    duplicates,
    poisoned
  }
}

export const describe = (error: unknown): string =>
  error instanceof Error ? `${error.name}: ${error.message}` : String(error)
