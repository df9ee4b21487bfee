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

/** What folding a batch did to one document. */
export interface DocumentFold {
  /** The guarded write, when the document changed. */
  readonly write: DocumentWrite | undefined
  /** The document after the write (or as it was), for the engine's cache. */
  readonly next: Current | undefined
  readonly applied: number
  readonly duplicates: number
}

/** What folding a batch produced. */
export interface BatchFold<P> {
  readonly writes: ReadonlyArray<DocumentWrite>
  readonly documents: ReadonlyMap<string, DocumentFold>
  readonly poisoned: ReadonlyArray<{ readonly part: P; readonly reason: string }>
  /** With `block`: parts not evolved because an earlier part of their document was poison. */
  readonly blocked: ReadonlyArray<P>
}

/** A document while its batch folds; it becomes the document's {@link DocumentFold}. */
interface Working extends DocumentFold {
  write: DocumentWrite | undefined
  next: Current | undefined
  state: unknown
  readonly before: DocumentMeta
  position: bigint | undefined
  streams: Record<string, bigint> | undefined
  deleted: boolean
  applied: number
  duplicates: number
  encoded: Record<string, unknown> | undefined
}

/**
 * Folds a lane's batch in delivery order. `current` holds every document the
 * parts touch, as stored (or cached) before the batch. The parts of one event are
 * adjacent; `evolve` sees, through `read`, the other documents of the event as
 * they stood before it.
 *
 * A throwing `evolve` or a result its Schema cannot encode poisons that event
 * only. Results are encoded once per document at the end; only when that fails
 * is the batch folded again encoding each step, so that the one bad result is
 * found and the events before it still apply.
 *
 * With `block` (quarantine), a document stops at its first poison event: its
 * later parts in the batch are returned as `blocked`, not evolved.
 */
export const foldBatch = <P extends { readonly event: Event; readonly key: string }>(
  projection: Projection<any, any>,
  codec: DocumentCodec,
  mode: Mode,
  current: Current_,
  parts: ReadonlyArray<P>,
  block = false,
  durable: Durable = noProgress
): BatchFold<P> =>
  fold(projection, codec, mode, current, parts, false, block, durable) ??
    fold(projection, codec, mode, current, parts, true, block, durable)!

/**
 * Persistent mode: the recorded progress of a source stream (every revision up
 * to it is applied), `undefined` when unknown. An event at or below it is a
 * duplicate whatever the document's markers say; a document keeps a marker
 * only for streams whose progress has not reached it (see {@link pruneMarkers}).
 */
export type Durable = (stream: string) => bigint | undefined

const noProgress: Durable = () => undefined

/**
 * The markers a document keeps: those its streams' recorded progress has not
 * reached. Sound because the engine learns a stream's progress from the store
 * after loading a document, so what a pruned marker said is known from the
 * progress by whoever folds onto that document next.
 */
export const pruneMarkers = (
  streams: Readonly<Record<string, bigint>>,
  durable: Durable
): Readonly<Record<string, bigint>> => {
  let pruned: Record<string, bigint> | undefined
  for (const stream in streams) {
    const progress = durable(stream)
    if (progress !== undefined && streams[stream]! <= progress) {
      pruned ??= { ...streams }
      delete pruned[stream]
    }
  }
  return pruned ?? streams
}

/** The documents as they stood before the batch, by id. */
type Current_ = (id: string) => Current | undefined

const fold = <P extends { readonly event: Event; readonly key: string }>(
  projection: Projection<any, any>,
  codec: DocumentCodec,
  mode: Mode,
  current: Current_,
  parts: ReadonlyArray<P>,
  encodeEachStep: boolean,
  block: boolean,
  durable: Durable
): BatchFold<P> | undefined => {
  const working = new Map<string, Working>()
  const poisoned: Array<{ part: P; reason: string }> = []
  const blocked: Array<P> = []
  const stopped = new Set<string>()
  const workingOf = (id: string): Working => {
    let doc = working.get(id)
    if (doc === undefined) {
      const stored = current(id)
      const before = stored?.meta ?? emptyMeta
      doc = {
        state: stored?.state,
        before,
        position: before.position,
        streams: undefined,
        deleted: before.deleted,
        applied: 0,
        duplicates: 0,
        encoded: undefined,
        write: undefined,
        next: stored
      }
      working.set(id, doc)
    }
    return doc
  }
  // States before the event being applied, for `read`.
  let snapshot: Map<string, unknown> | undefined
  // One context object for the whole fold: evolve may use it only during its call.
  const context = {
    key: "",
    read: (id: string): unknown => {
      if (snapshot?.has(id)) return snapshot.get(id)
      const doc = working.get(id)
      return doc !== undefined ? doc.state : current(id)?.state
    }
  }

  for (let i = 0; i < parts.length;) {
    const event = parts[i]!.event
    let end = i + 1
    while (end < parts.length && parts[end]!.event === event) end++
    snapshot = undefined
    if (end - i > 1) {
      snapshot = new Map()
      for (let j = i; j < end; j++) snapshot.set(parts[j]!.key, workingOf(parts[j]!.key).state)
    }
    for (let j = i; j < end; j++) {
      const part = parts[j]!
      const doc = workingOf(part.key)
      if (stopped.has(part.key)) {
        blocked.push(part)
        continue
      }
      if (mode === "catch-up") {
        if (doc.position !== undefined && event.position <= doc.position) {
          doc.duplicates++
          continue
        }
      } else {
        const revision = (doc.streams ?? doc.before.streams)[event.streamId]
        const progress = durable(event.streamId)
        if ((revision !== undefined && event.revision <= revision) || (progress !== undefined && event.revision <= progress)) {
          doc.duplicates++
          continue
        }
      }
      let next: unknown
      try {
        context.key = part.key
        next = projection.evolve(snapshot === undefined ? doc.state : snapshot.get(part.key), event as never, context)
      } catch (error) {
        poisoned.push({ part, reason: `evolve threw on ${event.type}: ${describe(error)}` })
        if (block) stopped.add(part.key)
        continue
      }
      if (encodeEachStep && next !== undefined) {
        const result = codec.encode(next)
        if (Either.isLeft(result)) {
          poisoned.push({ part, reason: `evolve returned a document its schema rejects on ${event.type}: ${result.left.message}` })
          if (block) stopped.add(part.key)
          continue
        }
        doc.encoded = result.right
      }
      doc.state = next
      doc.deleted = next === undefined
      if (mode === "catch-up") doc.position = event.position
      else (doc.streams ??= { ...doc.before.streams })[event.streamId] = event.revision
      doc.applied++
    }
    i = end
  }

  const writes: Array<DocumentWrite> = []
  for (const [id, doc] of working) {
    if (doc.applied === 0) continue
    if (!encodeEachStep && doc.state !== undefined) {
      const result = codec.encode(doc.state)
      if (Either.isLeft(result)) return undefined
      doc.encoded = result.right
    }
    const meta: DocumentMeta = {
      version: doc.before.version + 1,
      position: doc.position,
      streams: mode === "catch-up" ? doc.before.streams : pruneMarkers(doc.streams ?? doc.before.streams, durable),
      deleted: doc.deleted
    }
    doc.write = { id, expectedVersion: doc.before.version, body: doc.state === undefined ? undefined : doc.encoded, meta }
    doc.next = { state: doc.state, meta }
    writes.push(doc.write)
  }
  return { writes, documents: working, poisoned, blocked }
}

export const describe = (error: unknown): string =>
  error instanceof Error ? `${error.name}: ${error.message}` : String(error)
