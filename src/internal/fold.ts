/**
 * Folding a batch's events into one document: skip what the document's markers
 * say is applied, evolve the rest in order, and produce one guarded write.
 */
import { Either, ParseResult, Schema } from "effect"
import type { Event, Projection } from "../Projection.js"
import type { DocumentMeta, DocumentWrite, StoredDocument } from "../ReadModelStore.js"
import { emptyMeta } from "../ReadModelStore.js"

export type Mode = "catch-up" | "persistent"

/** Whether the document already reflects the event (a redelivery). */
export const isApplied = (meta: DocumentMeta, event: Event, mode: Mode): boolean => {
  if (mode === "catch-up") return meta.position !== undefined && event.position <= meta.position
  const revision = meta.streams[event.streamId]
  return revision !== undefined && event.revision <= revision
}

const advance = (meta: DocumentMeta, event: Event, mode: Mode, deleted: boolean): DocumentMeta =>
  mode === "catch-up"
    ? { version: meta.version, position: event.position, streams: meta.streams, deleted }
    : { version: meta.version, position: meta.position, streams: { ...meta.streams, [event.streamId]: event.revision }, deleted }

export interface FoldResult<P> {
  readonly write: DocumentWrite | undefined
  readonly applied: ReadonlyArray<P>
  readonly duplicates: ReadonlyArray<P>
  readonly poisoned: ReadonlyArray<{ readonly part: P; readonly reason: string }>
}

export interface DocumentCodec {
  readonly decode: (body: unknown) => Either.Either<unknown, ParseResult.ParseError>
  readonly encode: (doc: unknown) => Either.Either<Record<string, unknown>, ParseResult.ParseError>
}

export const documentCodec = (projection: Projection<any, any>): DocumentCodec => ({
  decode: Schema.decodeUnknownEither(projection.document),
  encode: Schema.encodeEither(projection.document) as DocumentCodec["encode"]
})

/**
 * Folds `parts` (in delivery order) into the stored document `id`.
 * A throwing `evolve` or a result its Schema cannot encode poisons that event only;
 * a stored document that no longer decodes poisons every event for it.
 */
export const foldDocument = <P extends { readonly event: Event }>(
  projection: Projection<any, any>,
  codec: DocumentCodec,
  mode: Mode,
  id: string,
  stored: StoredDocument | undefined,
  parts: ReadonlyArray<P>
): FoldResult<P> => {
  // Encode once at the end; only when that fails, fold again encoding each step
  // so that the one bad result is poisoned and the events before it still apply.
  const fast = fold(projection, codec, mode, id, stored, parts, false)
  return fast ?? fold(projection, codec, mode, id, stored, parts, true)!
}

const fold = <P extends { readonly event: Event }>(
  projection: Projection<any, any>,
  codec: DocumentCodec,
  mode: Mode,
  id: string,
  stored: StoredDocument | undefined,
  parts: ReadonlyArray<P>,
  encodeEachStep: boolean
): FoldResult<P> | undefined => {
  const applied: Array<P> = []
  const duplicates: Array<P> = []
  const poisoned: Array<{ part: P; reason: string }> = []
  let meta = stored?.meta ?? emptyMeta
  let state: unknown = undefined
  if (stored?.body !== undefined && !meta.deleted) {
    const decoded = codec.decode(stored.body)
    if (Either.isLeft(decoded)) {
      const reason = `stored document ${projection.collection}/${id} does not match its schema: ${decoded.left.message}`
      return { write: undefined, applied, duplicates, poisoned: parts.map((part) => ({ part, reason })) }
    }
    state = decoded.right
  }
  let encoded: Record<string, unknown> | undefined = undefined
  for (const part of parts) {
    if (isApplied(meta, part.event, mode)) {
      duplicates.push(part)
      continue
    }
    let next: unknown
    try {
      next = projection.evolve(state, part.event as never)
    } catch (error) {
      poisoned.push({ part, reason: `evolve threw on ${part.event.type}: ${describe(error)}` })
      continue
    }
    if (encodeEachStep && next !== undefined) {
      const result = codec.encode(next)
      if (Either.isLeft(result)) {
        poisoned.push({ part, reason: `evolve returned a document its schema rejects on ${part.event.type}: ${result.left.message}` })
        continue
      }
      encoded = result.right
    }
    state = next
    meta = advance(meta, part.event, mode, next === undefined)
    applied.push(part)
  }
  if (applied.length === 0) return { write: undefined, applied, duplicates, poisoned }
  if (!encodeEachStep && state !== undefined) {
    const result = codec.encode(state)
    if (Either.isLeft(result)) return undefined
    encoded = result.right
  }
  const expectedVersion = stored?.meta.version ?? 0
  return {
    write: {
      id,
      expectedVersion,
      body: state === undefined ? undefined : encoded,
      meta: { ...meta, version: expectedVersion + 1 }
    },
    applied,
    duplicates,
    poisoned
  }
}

export const describe = (error: unknown): string =>
  error instanceof Error ? `${error.name}: ${error.message}` : String(error)
