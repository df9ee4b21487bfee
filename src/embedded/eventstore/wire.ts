/**
 * Conversions between store records and protocol messages, and the error
 * statuses the client maps to its typed errors.
 *
 * Internal to the embedded server.
 */
import * as grpc from "@grpc/grpc-js"
import type { EventRecord, Expected, Resolved } from "./Store.js"
import { shared } from "./proto.js"

/** A protocol message class holding a recorded event (streams and persistent variants). */
interface RecordedEventMessage {
  setId(value: InstanceType<typeof shared.UUID>): unknown
  setStreamIdentifier(value: InstanceType<typeof shared.StreamIdentifier>): unknown
  setStreamRevision(value: string): unknown
  setPreparePosition(value: string): unknown
  setCommitPosition(value: string): unknown
  getMetadataMap(): { set(key: string, value: string): unknown }
  setCustomMetadata(value: Uint8Array): unknown
  setData(value: Uint8Array): unknown
}

/** Whether the caller asked for structured UUIDs (two signed 64-bit halves). */
export type UuidForm = "string" | "structured"

export const uuid = (id: string, form: UuidForm): InstanceType<typeof shared.UUID> => {
  const u = new shared.UUID()
  if (form === "string") {
    u.setString(id)
    return u
  }
  const hex = id.replace(/-/g, "")
  const s = new shared.UUID.Structured()
  s.setMostSignificantBits(BigInt.asIntN(64, BigInt(`0x${hex.slice(0, 16)}`)).toString(10))
  s.setLeastSignificantBits(BigInt.asIntN(64, BigInt(`0x${hex.slice(16, 32)}`)).toString(10))
  u.setStructured(s)
  return u
}

/** Reads a UUID in either form as its canonical string. */
export const readUuid = (u: InstanceType<typeof shared.UUID> | undefined): string | undefined => {
  if (!u) return undefined
  if (u.hasStructured()) {
    const s = u.getStructured()!
    const hi = BigInt.asUintN(64, BigInt(s.getMostSignificantBits())).toString(16).padStart(16, "0")
    const lo = BigInt.asUintN(64, BigInt(s.getLeastSignificantBits())).toString(16).padStart(16, "0")
    const h = hi + lo
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
  }
  return u.getString()
}

export const streamIdentifier = (streamId: string): InstanceType<typeof shared.StreamIdentifier> => {
  const id = new shared.StreamIdentifier()
  id.setStreamName(Buffer.from(streamId, "utf8"))
  return id
}

export const readStreamName = (id: InstanceType<typeof shared.StreamIdentifier> | undefined): string =>
  id ? Buffer.from(id.getStreamName_asU8()).toString("utf8") : ""

/** Fills a protocol recorded-event message from a record. */
export const fillRecorded = <M extends RecordedEventMessage>(message: M, record: EventRecord, form: UuidForm): M => {
  message.setId(uuid(record.id, form))
  message.setStreamIdentifier(streamIdentifier(record.streamId))
  message.setStreamRevision(record.revision.toString(10))
  message.setPreparePosition(record.position.toString(10))
  message.setCommitPosition(record.position.toString(10))
  const map = message.getMetadataMap()
  map.set("type", record.type)
  map.set("content-type", record.contentType)
  map.set("created", record.created.toString(10))
  message.setCustomMetadata(record.metadata)
  message.setData(record.data)
  return message
}

/** A `ReadEvent`-like message (streams and persistent variants). */
interface ReadEventMessage<R> {
  setEvent(value?: R): unknown
  setLink(value?: R): unknown
  setCommitPosition(value: string): unknown
}

export const fillReadEvent = <R extends RecordedEventMessage, M extends ReadEventMessage<R>>(
  message: M,
  resolved: Resolved,
  Recorded: new() => R,
  form: UuidForm
): M => {
  if (resolved.event) message.setEvent(fillRecorded(new Recorded(), resolved.event, form))
  if (resolved.link) message.setLink(fillRecorded(new Recorded(), resolved.link, form))
  message.setCommitPosition(resolved.position.toString(10))
  return message
}

/** A gRPC error carrying the `exception` trailer the client maps to a typed error. */
export const statusError = (
  code: grpc.status,
  exception: string | undefined,
  details: string,
  extra: Record<string, string> = {}
): Partial<grpc.StatusObject> & { code: grpc.status; details: string; metadata: grpc.Metadata } => {
  const metadata = new grpc.Metadata()
  if (exception !== undefined) metadata.set("exception", exception)
  for (const [k, v] of Object.entries(extra)) metadata.set(k, v)
  return { code, details, metadata }
}

export const expectedToString = (e: Expected): string =>
  e._tag === "Exact" ? e.revision.toString(10) : e._tag === "NoStream" ? "-1" : e._tag === "Any" ? "-2" : "-4"

export const wrongExpectedVersionError = (streamId: string, expected: Expected, current: bigint | undefined) =>
  statusError(grpc.status.FAILED_PRECONDITION, "wrong-expected-version", `Wrong expected version on ${streamId}`, {
    "stream-name": streamId,
    "expected-version": expectedToString(expected),
    ...(current === undefined ? {} : { "actual-version": current.toString(10) })
  })

export const streamDeletedError = (streamId: string) =>
  statusError(grpc.status.FAILED_PRECONDITION, "stream-deleted", `Event stream '${streamId}' is deleted.`, {
    "stream-name": streamId
  })

/** Reads an expectation from a message with the usual `revision | noStream | any | streamExists` oneof. */
export const readExpected = (o: {
  hasRevision(): boolean
  getRevision(): string
  hasNoStream(): boolean
  hasStreamExists?(): boolean
}): Expected => {
  if (o.hasRevision()) return { _tag: "Exact", revision: BigInt(o.getRevision()) }
  if (o.hasNoStream()) return { _tag: "NoStream" }
  if (o.hasStreamExists?.()) return { _tag: "StreamExists" }
  return { _tag: "Any" }
}

/**
 * A generated service definition whose `Read` also sends messages already
 * serialized by `encode.ts` (buffers) as they are; everything else as generated.
 */
export const readingBuffers = (definition: grpc.ServiceDefinition): grpc.ServiceDefinition => {
  const read = definition.read!
  const serialize = read.responseSerialize
  return {
    ...definition,
    read: { ...read, responseSerialize: (value: unknown) => (Buffer.isBuffer(value) ? value : serialize(value)) }
  }
}
