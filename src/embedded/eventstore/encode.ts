/**
 * Hand-written protobuf encoding of the one message a read, a catch-up
 * subscription or a persistent subscription sends per event
 * (`ReadResp { event: ReadEvent }`), straight
 * from a store record into one buffer: no protobuf objects are built and
 * copied per event (the generated classes cost most of the read path's CPU).
 * Field numbers follow `streams.proto` (the same in both client packages);
 * the conformance suites decode these bytes with both clients.
 *
 * Internal to the embedded server.
 */
import type { EventRecord, Resolved } from "./Store.js"
import { uuid, type UuidForm } from "./wire.js"

const LEN = 2
const VARINT = 0

const tag = (field: number, wire: number): number => (field << 3) | wire

/** Bytes of a varint holding a non-negative integer below 2^53. */
const varintSize = (n: number): number => {
  let size = 1
  while (n >= 128) {
    n = Math.floor(n / 128)
    size++
  }
  return size
}

const writeVarint = (buf: Buffer, at: number, n: number): number => {
  while (n >= 128) {
    buf[at++] = (n % 128) | 128
    n = Math.floor(n / 128)
  }
  buf[at++] = n
  return at
}

/** A length-delimited field's size: tag, length, payload. */
const lenField = (field: number, payload: number): number => varintSize(tag(field, LEN)) + varintSize(payload) + payload

/** A uint64 field's size; proto3 leaves zero out. */
const u64Field = (field: number, n: number): number => (n === 0 ? 0 : varintSize(tag(field, VARINT)) + varintSize(n))

const putLen = (buf: Buffer, at: number, field: number, payload: number): number =>
  writeVarint(buf, writeVarint(buf, at, tag(field, LEN)), payload)

const putU64 = (buf: Buffer, at: number, field: number, n: number): number =>
  n === 0 ? at : writeVarint(buf, writeVarint(buf, at, tag(field, VARINT)), n)

const putBytes = (buf: Buffer, at: number, field: number, bytes: Uint8Array): number => {
  if (bytes.byteLength === 0) return at
  at = putLen(buf, at, field, bytes.byteLength)
  buf.set(bytes, at)
  return at + bytes.byteLength
}

const putString = (buf: Buffer, at: number, field: number, text: string, size: number): number => {
  at = putLen(buf, at, field, size)
  return at + buf.write(text, at, size, "utf8")
}

/** The serialized `UUID` of a record id: the string form encoded here, the structured one (rare) through the protocol classes. */
const uuidBytes = (id: string, form: UuidForm): Uint8Array | string =>
  form === "string" ? id : uuid(id, "structured").serializeBinary()

/** Sizes of a `RecordedEvent`'s parts, computed once and used to write it. */
interface Plan {
  readonly record: EventRecord
  readonly id: Uint8Array | string
  readonly idSize: number
  readonly uuidSize: number
  readonly streamSize: number
  readonly type: number
  readonly contentType: number
  readonly created: string
  readonly entries: readonly [number, number, number]
  readonly size: number
}

/** `StreamIdentifier { stream_name = 3 }`: proto3 leaves an empty name out. */
const streamField = (size: number) => (size === 0 ? 0 : lenField(3, size))

const entrySize = (key: number, value: number) => lenField(1, key) + lenField(2, value)

const plan = (record: EventRecord, form: UuidForm): Plan => {
  const id = uuidBytes(record.id, form)
  const idSize = typeof id === "string" ? Buffer.byteLength(id, "utf8") : id.byteLength
  // UUID { structured = 1 | string = 2 }: the structured bytes are the whole UUID message already
  const uuidSize = typeof id === "string" ? lenField(2, idSize) : idSize
  const streamSize = Buffer.byteLength(record.streamId, "utf8")
  const type = Buffer.byteLength(record.type, "utf8")
  const contentType = Buffer.byteLength(record.contentType, "utf8")
  const created = record.created.toString(10)
  const entries = [entrySize(4, type), entrySize(12, contentType), entrySize(7, created.length)] as const
  const size = lenField(1, uuidSize) +
    lenField(2, streamField(streamSize)) +
    u64Field(3, Number(record.revision)) +
    u64Field(4, Number(record.position)) +
    u64Field(5, Number(record.position)) +
    lenField(6, entries[0]) + lenField(6, entries[1]) + lenField(6, entries[2]) +
    (record.metadata.byteLength === 0 ? 0 : lenField(7, record.metadata.byteLength)) +
    (record.data.byteLength === 0 ? 0 : lenField(8, record.data.byteLength))
  return { record, id, idSize, uuidSize, streamSize, type, contentType, created, entries, size }
}

const putEntry = (buf: Buffer, at: number, size: number, key: string, keySize: number, value: string, valueSize: number) => {
  at = putLen(buf, at, 6, size)
  at = putString(buf, at, 1, key, keySize)
  return putString(buf, at, 2, value, valueSize)
}

/** Writes a `RecordedEvent` (fields 1–8 of `streams.proto`) at `at`. */
const putRecorded = (buf: Buffer, at: number, p: Plan): number => {
  const r = p.record
  at = putLen(buf, at, 1, p.uuidSize)
  if (typeof p.id === "string") at = putString(buf, at, 2, p.id, p.idSize)
  else {
    buf.set(p.id, at)
    at += p.idSize
  }
  at = putLen(buf, at, 2, streamField(p.streamSize))
  if (p.streamSize > 0) at = putString(buf, at, 3, r.streamId, p.streamSize)
  at = putU64(buf, at, 3, Number(r.revision))
  at = putU64(buf, at, 4, Number(r.position))
  at = putU64(buf, at, 5, Number(r.position))
  // map entries in key order, as the generated classes write them
  at = putEntry(buf, at, p.entries[1], "content-type", 12, r.contentType, p.contentType)
  at = putEntry(buf, at, p.entries[2], "created", 7, p.created, p.created.length)
  at = putEntry(buf, at, p.entries[0], "type", 4, r.type, p.type)
  at = putBytes(buf, at, 7, r.metadata)
  return putBytes(buf, at, 8, r.data)
}

/**
 * The serialized `ReadResp { event: ReadEvent { event?, link?, commit_position } }`
 * of a resolved record: the same bytes the generated classes would produce
 * (fields in number order, proto3 zeros left out), in one allocation.
 *
 * With `retryCount`, the persistent subscriptions' `ReadResp` (persistent.proto):
 * the same layout (its `event` is field 1, its `RecordedEvent` has the same
 * fields) plus `retry_count = 5`, in a oneof, so written even when zero.
 */
export const readEventResp = (resolved: Resolved, form: UuidForm, retryCount?: number): Buffer => {
  const event = resolved.event && plan(resolved.event, form)
  const link = resolved.link && plan(resolved.link, form)
  const position = Number(resolved.position)
  // commit_position is in a oneof: written even when zero
  const readEvent = (event ? lenField(1, event.size) : 0) + (link ? lenField(2, link.size) : 0) +
    varintSize(tag(3, VARINT)) + varintSize(position) +
    (retryCount === undefined ? 0 : varintSize(tag(5, VARINT)) + varintSize(retryCount))
  const buf = Buffer.allocUnsafe(lenField(1, readEvent))
  let at = putLen(buf, 0, 1, readEvent)
  if (event) at = putRecorded(buf, putLen(buf, at, 1, event.size), event)
  if (link) at = putRecorded(buf, putLen(buf, at, 2, link.size), link)
  at = writeVarint(buf, writeVarint(buf, at, tag(3, VARINT)), position)
  if (retryCount !== undefined) at = writeVarint(buf, writeVarint(buf, at, tag(5, VARINT)), retryCount)
  return at === buf.length ? buf : buf.subarray(0, at)
}
