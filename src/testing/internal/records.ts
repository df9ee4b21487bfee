/**
 * Histories as the engine would record them: one recorded event per history
 * event, with per-stream revisions and log positions, and a decoder that gives
 * a fresh decoded event (new objects) every time it is asked.
 */
import { Either, ParseResult, Schema } from "effect"
import * as EventSource from "../../EventSource.js"
import type * as InMemory from "../../InMemory.js"
import * as Projection from "../../Projection.js"

/** An event to append: JSON data, or raw bytes for malformed payloads. */
export interface Appended {
  readonly stream: string
  readonly type: string
  /** The encoded data (JSON-able), or raw bytes. */
  readonly data: unknown
  readonly id: string
}

// A fixed clock for recorded events: histories replay the same, created times included.
const epoch = Date.UTC(2024, 0, 1)
const noMetadata = new Uint8Array(0)

/** The recorded events of `appended` as a fresh in-memory log numbers them. */
export const record = (appended: ReadonlyArray<Appended>): ReadonlyArray<InMemory.RecordedEvent> => {
  const revisions = new Map<string, bigint>()
  return appended.map((event, index) => {
    const revision = (revisions.get(event.stream) ?? -1n) + 1n
    revisions.set(event.stream, revision)
    const bytes = event.data instanceof Uint8Array
    return {
      id: event.id,
      type: event.type,
      streamId: event.stream,
      category: EventSource.categoryOf(event.stream),
      revision,
      position: BigInt(index + 1),
      data: bytes ? event.data as Uint8Array : new TextEncoder().encode(JSON.stringify(event.data)),
      metadata: noMetadata,
      isJson: !bytes,
      created: new Date(epoch + index * 1000)
    }
  })
}

/** A recorded event's identity across orders and runs: its stream and revision. */
export const identity = (event: { readonly streamId: string; readonly revision: bigint }): string =>
  `${event.streamId}@${event.revision}`

/**
 * Encodes the data of a history event with its event schema; `Left` with the
 * reason when the schema rejects it. Types the projection does not declare pass as they are.
 */
export const encodeData = (
  projection: Projection.Projection<any, any>,
  type: string,
  data: unknown
): Either.Either<unknown, string> => {
  const schema = projection.events[type]
  if (schema === undefined) return Either.right(data)
  return Schema.encodeUnknownEither(schema)(data).pipe(
    Either.mapLeft((error) => ParseResult.TreeFormatter.formatErrorSync(error))
  )
}

/** The projection's decoder: a fresh decoded event per call, `undefined` (skipped) or the reason it is poison. */
export const decoderOf = (projection: Projection.Projection<any, any>) => Projection.decoder(projection.events)
