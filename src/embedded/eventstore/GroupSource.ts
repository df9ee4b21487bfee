/**
 * Where a consumer group reads from: one stream (sequences are revisions) or
 * `$all` with an optional filter (sequences are log positions). Also how the
 * group's checkpoint and start point are written in the protocol's text forms.
 *
 * Internal to the embedded server.
 */
import type { EventRecord, Store } from "./Store.js"

/** A `$all` filter on stream names or event types, by regex and/or prefixes. */
export interface AllFilter {
  readonly on: "stream" | "type"
  readonly regex?: string | undefined
  readonly prefixes?: ReadonlyArray<string> | undefined
}

export type StartFrom = bigint | "start" | "end"

export interface GroupSource {
  /** `$all` or the stream name. */
  readonly eventSource: string
  /** The first sequence to read for a group starting from `startFrom`. */
  readonly start: (startFrom: StartFrom) => bigint
  /** Up to `count` records from sequence `from` (inclusive), and the sequence to read next. */
  readonly read: (from: bigint, count: number) => { readonly records: ReadonlyArray<EventRecord>; readonly next: bigint }
  /** Whether newly appended records may concern the group. */
  readonly touches: (records: ReadonlyArray<EventRecord>) => boolean
  readonly sequenceOf: (record: EventRecord) => bigint
  /** Checkpoints and positions as the protocol shows them. */
  readonly format: (sequence: bigint) => string
  readonly parse: (text: string) => bigint | undefined
  readonly formatStart: (startFrom: StartFrom) => string
}

export const streamSource = (store: Store, stream: string): GroupSource => ({
  eventSource: stream,
  start: (startFrom) => startFrom === "start" ? 0n : startFrom === "end" ? store.nextRevision(stream) : startFrom,
  read: (from, count) => {
    let records = store.readStream(stream, from, false, count) ?? []
    if (records.length === 0) {
      // the stream may have been truncated past the read position
      const first = store.firstRevision(stream)
      if (first > from && store.nextRevision(stream) > first) records = store.readStream(stream, first, false, count) ?? []
    }
    return { records, next: records.length > 0 ? records[records.length - 1]!.revision + 1n : from }
  },
  touches: (records) => records.some((r) => r.streamId === stream),
  sequenceOf: (r) => r.revision,
  format: (sequence) => sequence.toString(10),
  parse: (text) => (/^\d+$/.test(text) ? BigInt(text) : undefined),
  formatStart: (startFrom) => startFrom === "start" ? "0" : startFrom === "end" ? "-1" : startFrom.toString(10)
})

/** A predicate from a filter. */
export const matcher = (filter: AllFilter | undefined): ((r: EventRecord) => boolean) => {
  if (!filter) return () => true
  const re = filter.regex ? new RegExp(filter.regex) : undefined
  const prefixes = filter.prefixes ?? []
  return (r) => {
    const value = filter.on === "type" ? r.type : r.streamId
    if (re && !re.test(value)) return false
    if (prefixes.length > 0 && !prefixes.some((p) => value.startsWith(p))) return false
    return true
  }
}

const positionText = (p: bigint) => `C:${p}/P:${p}`

/** How far one read may scan `$all` looking for matching records. */
const SCAN = 4096

export const allSource = (store: Store, filter: AllFilter | undefined): GroupSource => {
  const matches = matcher(filter)
  return {
    eventSource: "$all",
    start: (startFrom) => startFrom === "start" ? 1n : startFrom === "end" ? store.lastPosition + 1n : startFrom,
    read: (from, count) => {
      const log = store.log
      const records: Array<EventRecord> = []
      let i = Math.max(0, Number(from) - 1)
      const limit = Math.min(log.length, i + SCAN)
      for (; i < limit && records.length < count; i++) {
        if (matches(log[i]!)) records.push(log[i]!)
      }
      // positions are log index + 1: the next one to read is i + 1
      return { records, next: BigInt(i + 1) }
    },
    touches: (records) => records.some(matches),
    sequenceOf: (r) => r.position,
    format: positionText,
    parse: (text) => {
      const m = /^C:(\d+)\/P:(\d+)$/.exec(text) ?? /^(\d+)$/.exec(text)
      return m ? BigInt(m[1]!) : undefined
    },
    formatStart: (startFrom) =>
      startFrom === "start" ? "C:0/P:0" : startFrom === "end" ? "C:-1/P:-1" : positionText(startFrom)
  }
}
