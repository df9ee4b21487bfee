/**
 * The embedded event store's storage: streams with revisions, one global log
 * (`$all`) with strictly growing positions, `$ce-<category>` links, soft
 * deletes and tombstones. Synchronous and in memory. Every change goes to the
 * journal (when configured) before anything else sees it: one append's records
 * are one journal commit, written before the append is announced to listeners
 * (subscriptions) or visible to reads, so nothing is seen that a crash could take back.
 *
 * Internal to the embedded server.
 */
import { randomUUID } from "node:crypto"

/** One recorded event (or link) in a stream and in the global log. */
export interface EventRecord {
  readonly id: string
  readonly streamId: string
  readonly revision: bigint
  /** Position in the global log; commit and prepare positions are equal. */
  readonly position: bigint
  readonly type: string
  readonly contentType: string
  readonly data: Uint8Array
  readonly metadata: Uint8Array
  /** .NET ticks since the Unix epoch (ms × 10 000). */
  readonly created: bigint
}

/** A record as read: the event, the link that pointed at it, or both. */
export interface Resolved {
  /** Absent when a link could not be resolved (target deleted or missing). */
  readonly event?: EventRecord
  readonly link?: EventRecord
  /** The global position of the record as stored (the link's, when a link was read). */
  readonly position: bigint
}

/** What an append proposes. */
export interface ProposedEvent {
  readonly id: string
  readonly type: string
  readonly contentType: string
  readonly data: Uint8Array
  readonly metadata: Uint8Array
}

/** Expected revision of an append or delete. */
export type Expected =
  | { readonly _tag: "Any" }
  | { readonly _tag: "NoStream" }
  | { readonly _tag: "StreamExists" }
  | { readonly _tag: "Exact"; readonly revision: bigint }

/** A failed expectation. `current` is `undefined` when the stream does not exist. */
export class WrongExpectedVersion extends Error {
  readonly _tag = "WrongExpectedVersion"
  constructor(readonly streamId: string, readonly expected: Expected, readonly current: bigint | undefined) {
    super(`Wrong expected version on ${streamId}`)
  }
}

/** The stream was tombstoned (hard-deleted). */
export class StreamDeleted extends Error {
  readonly _tag = "StreamDeleted"
  constructor(readonly streamId: string) {
    super(`Stream ${streamId} is deleted`)
  }
}

interface StreamState {
  readonly records: Array<EventRecord>
  /** Records below this revision are hidden and the stream counts as deleted below it (soft delete). */
  truncateBefore: bigint
  tombstoned: boolean
  /** From the stream's metadata (`$$<stream>`): `$tb` and `$maxCount`, applied to reads. */
  metaTruncateBefore: bigint
  maxCount: number | undefined
}

const newState = (): StreamState => ({
  records: [],
  truncateBefore: 0n,
  tombstoned: false,
  metaTruncateBefore: 0n,
  maxCount: undefined
})

/** The first revision reads show: after deletes, `$tb` and `$maxCount`. */
const visibleFrom = (s: StreamState): number => {
  let first = Number(s.truncateBefore > s.metaTruncateBefore ? s.truncateBefore : s.metaTruncateBefore)
  if (s.maxCount !== undefined) first = Math.max(first, s.records.length - s.maxCount)
  return first
}

/**
 * A journal receives every state change in order (durability). Each call
 * returns once the change is written: the store calls it synchronously,
 * before the change is announced or readable.
 */
export interface Journal {
  /** The records of one append (events and their links), atomically. */
  readonly commit: (records: ReadonlyArray<EventRecord>) => void
  readonly streamDeleted: (streamId: string, tombstone: boolean) => void
}

export const LINK_TYPE = "$>"
const TICKS_PER_MS = 10_000n

/**
 * Category of a stream by the `$by_category` system projection's rule: the text
 * before the first `-`; none for system streams (`$…`) and ids without a `-`
 * past the first character.
 */
export const categoryOf = (streamId: string): string | undefined => {
  if (streamId.startsWith("$")) return undefined
  const dash = streamId.indexOf("-")
  return dash <= 0 ? undefined : streamId.slice(0, dash)
}

/** The `$ce-<category>` stream the category projection links a stream's events into. */
export const categoryLinkStream = (streamId: string): string | undefined => {
  const category = categoryOf(streamId)
  return category === undefined ? undefined : `$ce-${category}`
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

export class Store {
  private readonly streams = new Map<string, StreamState>()
  /** The global log; `log[i].position === BigInt(i + 1)`. */
  readonly log: Array<EventRecord> = []
  private readonly listeners = new Set<(records: ReadonlyArray<EventRecord>) => void>()
  journal: Journal | undefined = undefined
  /** Observations for tests and benchmarks: events handed to read and subscription calls; appends by protocol path. */
  readonly stats = { eventsRead: 0, appends: 0, batchAppends: 0 }

  /** Position of the newest record in the log, 0 when empty. */
  get lastPosition(): bigint {
    return BigInt(this.log.length)
  }

  onAppend(listener: (records: ReadonlyArray<EventRecord>) => void): () => void {
    this.listeners.add(listener)
    return () => {
      this.listeners.delete(listener)
    }
  }

  /** Revision of the stream's last record, `undefined` if it has none visible or was deleted. */
  currentRevision(streamId: string): bigint | undefined {
    const s = this.streams.get(streamId)
    if (!s || s.records.length === 0) return undefined
    const last = BigInt(s.records.length - 1)
    return last < s.truncateBefore ? undefined : last
  }

  isTombstoned(streamId: string): boolean {
    return this.streams.get(streamId)?.tombstoned ?? false
  }

  /** Whether the stream has visible records. */
  exists(streamId: string): boolean {
    return this.currentRevision(streamId) !== undefined
  }

  private check(streamId: string, expected: Expected): void {
    const s = this.streams.get(streamId)
    if (s?.tombstoned) throw new StreamDeleted(streamId)
    const current = this.currentRevision(streamId)
    switch (expected._tag) {
      case "Any":
        return
      case "NoStream":
        if (current !== undefined) throw new WrongExpectedVersion(streamId, expected, current)
        return
      case "StreamExists":
        if (current === undefined) throw new WrongExpectedVersion(streamId, expected, current)
        return
      case "Exact":
        if (current !== expected.revision) throw new WrongExpectedVersion(streamId, expected, current)
        return
    }
  }

  /**
   * Appends events atomically after checking the expectation; writes the
   * category links; announces the new records. Returns the stream's new
   * current revision and the position of the last appended record.
   */
  append(
    streamId: string,
    expected: Expected,
    events: ReadonlyArray<ProposedEvent>
  ): { readonly revision: bigint | undefined; readonly position: bigint | undefined } {
    const repeated = this.idempotent(streamId, expected, events)
    if (repeated) return repeated
    this.check(streamId, expected)
    if (events.length === 0) {
      return { revision: this.currentRevision(streamId), position: undefined }
    }
    const written: Array<EventRecord> = []
    const created = BigInt(Date.now()) * TICKS_PER_MS
    for (const e of events) {
      written.push(this.insert(streamId, e.id, e.type, e.contentType, e.data, e.metadata, created))
    }
    const linkStream = categoryLinkStream(streamId)
    if (linkStream !== undefined) {
      for (const r of [...written]) {
        written.push(this.insert(
          linkStream,
          randomUUID(),
          LINK_TYPE,
          "application/octet-stream",
          encoder.encode(`${r.revision}@${r.streamId}`),
          encoder.encode(JSON.stringify({ $o: r.streamId, $causedBy: r.id })),
          created
        ))
      }
    }
    this.commit(written)
    this.announce(written)
    const last = written[events.length - 1]!
    return { revision: last.revision, position: last.position }
  }

  /**
   * An append of events that are already there, right after the expected
   * revision (or last in the stream, for `any` / `stream exists`), succeeds
   * without writing them again.
   */
  private idempotent(
    streamId: string,
    expected: Expected,
    events: ReadonlyArray<ProposedEvent>
  ): { readonly revision: bigint; readonly position: bigint } | undefined {
    const s = this.streams.get(streamId)
    if (!s || s.tombstoned || events.length === 0) return undefined
    const size = s.records.length
    const start = expected._tag === "Exact"
      ? Number(expected.revision) + 1
      : expected._tag === "NoStream"
      ? Number(s.truncateBefore)
      : size - events.length
    if (start < 0 || start + events.length > size) return undefined
    for (let i = 0; i < events.length; i++) {
      if (s.records[start + i]!.id !== events[i]!.id) return undefined
    }
    const last = s.records[start + events.length - 1]!
    return { revision: last.revision, position: last.position }
  }

  /** Applies `$tb` and `$maxCount` of a `$metadata` event to its stream. */
  private applyMetadata(streamId: string, record: EventRecord): void {
    if (record.type !== "$metadata") return
    let meta: Record<string, unknown>
    try {
      meta = JSON.parse(decoder.decode(record.data)) as Record<string, unknown>
    } catch {
      return
    }
    let s = this.streams.get(streamId)
    if (!s) {
      s = newState()
      this.streams.set(streamId, s)
    }
    const tb = meta.$tb
    s.metaTruncateBefore = typeof tb === "number" && tb >= 0 ? BigInt(tb) : 0n
    const maxCount = meta.$maxCount
    s.maxCount = typeof maxCount === "number" && maxCount >= 0 ? maxCount : undefined
  }

  /** Appends a link (`<revision>@<stream>` data) to `streamId`, with no expectation besides tombstones. */
  appendLinkData(streamId: string, data: Uint8Array, metadata: Uint8Array): EventRecord {
    if (this.isTombstoned(streamId)) throw new StreamDeleted(streamId)
    const r = this.insert(
      streamId,
      randomUUID(),
      LINK_TYPE,
      "application/octet-stream",
      data,
      metadata,
      BigInt(Date.now()) * TICKS_PER_MS
    )
    this.commit([r])
    this.announce([r])
    return r
  }

  /** Inserts a record as given, unjournaled and unannounced (journal replay; appends journal and announce). */
  insert(
    streamId: string,
    id: string,
    type: string,
    contentType: string,
    data: Uint8Array,
    metadata: Uint8Array,
    created: bigint
  ): EventRecord {
    let s = this.streams.get(streamId)
    if (!s) {
      s = newState()
      this.streams.set(streamId, s)
    }
    const record: EventRecord = {
      id,
      streamId,
      revision: BigInt(s.records.length),
      position: BigInt(this.log.length + 1),
      type,
      contentType,
      data,
      metadata,
      created
    }
    s.records.push(record)
    this.log.push(record)
    if (streamId.startsWith("$$")) this.applyMetadata(streamId.slice(2), record)
    return record
  }

  /** Journals freshly inserted records; if the journal fails they are taken back, so memory never holds more than the journal. */
  private commit(written: ReadonlyArray<EventRecord>): void {
    if (!this.journal) return
    try {
      this.journal.commit(written)
    } catch (error) {
      for (let i = written.length - 1; i >= 0; i--) {
        const r = written[i]!
        this.streams.get(r.streamId)!.records.pop()
        this.log.pop()
        if (r.streamId.startsWith("$$")) this.reapplyMetadata(r.streamId)
      }
      throw error
    }
  }

  /** Re-applies the newest `$metadata` left in a metadata stream (after a rollback). */
  private reapplyMetadata(metaStream: string): void {
    const target = this.streams.get(metaStream.slice(2))
    if (target) {
      target.metaTruncateBefore = 0n
      target.maxCount = undefined
    }
    const records = this.streams.get(metaStream)?.records ?? []
    const last = records[records.length - 1]
    if (last) this.applyMetadata(metaStream.slice(2), last)
  }

  private announce(records: ReadonlyArray<EventRecord>): void {
    for (const l of [...this.listeners]) l(records)
  }

  /**
   * Soft-deletes (hides every record so far; the stream can be appended to again,
   * revisions continue) or tombstones (forever deleted) a stream. As a real
   * server (21.10+) answers: soft-deleting a stream that never existed (no
   * records, deleted or not, and no metadata) is a wrong expected version
   * whatever the expectation; tombstoning one succeeds and deletes it for good.
   */
  delete(streamId: string, expected: Expected, tombstone: boolean): bigint {
    if (!tombstone && !this.everExisted(streamId) && !this.isTombstoned(streamId)) {
      throw new WrongExpectedVersion(streamId, expected, undefined)
    }
    this.check(streamId, expected)
    this.journal?.streamDeleted(streamId, tombstone)
    this.applyDelete(streamId, tombstone)
    return this.lastPosition
  }

  /** Whether a stream has had records (even deleted ones) or metadata. */
  private everExisted(streamId: string): boolean {
    return (this.streams.get(streamId)?.records.length ?? 0) > 0 ||
      (this.streams.get(`$$${streamId}`)?.records.length ?? 0) > 0
  }

  applyDelete(streamId: string, tombstone: boolean): void {
    let s = this.streams.get(streamId)
    if (!s) {
      s = newState()
      this.streams.set(streamId, s)
    }
    s.truncateBefore = BigInt(s.records.length)
    if (tombstone) s.tombstoned = true
  }

  /** Hides the records of a stream below `before`, as the real server does: a `$tb` in its metadata stream. */
  truncate(streamId: string, before: bigint): void {
    const s = this.streams.get(streamId)
    const meta: Record<string, unknown> = { $tb: Number(before) }
    if (s?.maxCount !== undefined) meta.$maxCount = s.maxCount
    this.append(`$$${streamId}`, { _tag: "Any" }, [{
      id: randomUUID(),
      type: "$metadata",
      contentType: "application/json",
      data: encoder.encode(JSON.stringify(meta)),
      metadata: new Uint8Array()
    }])
  }

  /** The visible record of a stream at a revision. */
  get(streamId: string, revision: bigint): EventRecord | undefined {
    const s = this.streams.get(streamId)
    if (!s || s.tombstoned || revision < BigInt(visibleFrom(s)) || revision >= BigInt(s.records.length)) return undefined
    return s.records[Number(revision)]
  }

  /** Resolves a record (following a link when asked). */
  resolve(record: EventRecord, resolveLinks: boolean): Resolved {
    if (!resolveLinks || record.type !== LINK_TYPE) return { event: record, position: record.position }
    const target = parseLink(record.data)
    const event = target && this.get(target.streamId, target.revision)
    return event ? { event, link: record, position: record.position } : { link: record, position: record.position }
  }

  /**
   * Visible records of a stream from a revision (inclusive), forwards or
   * backwards, at most `count`. `undefined` when the stream does not exist.
   */
  readStream(
    streamId: string,
    from: bigint | "start" | "end",
    backwards: boolean,
    count: number
  ): Array<EventRecord> | undefined {
    const s = this.streams.get(streamId)
    if (!s) return undefined
    if (s.tombstoned) throw new StreamDeleted(streamId)
    const size = s.records.length
    if (size <= Number(s.truncateBefore)) return undefined
    const first = visibleFrom(s)
    const out: Array<EventRecord> = []
    if (!backwards) {
      let i = from === "start" ? first : from === "end" ? size : Math.max(first, Number(from))
      for (; i < size && out.length < count; i++) out.push(s.records[i]!)
    } else {
      let i = from === "end" ? size - 1 : from === "start" ? first - 1 : Math.min(size - 1, Number(from))
      for (; i >= first && out.length < count; i--) out.push(s.records[i]!)
    }
    return out
  }

  /** Size of a stream including hidden records (the next revision). */
  nextRevision(streamId: string): bigint {
    return BigInt(this.streams.get(streamId)?.records.length ?? 0)
  }

  /** First visible revision of a stream. */
  firstRevision(streamId: string): bigint {
    const s = this.streams.get(streamId)
    return s ? BigInt(visibleFrom(s)) : 0n
  }

  /** Names of all streams (for listings). */
  streamNames(): Array<string> {
    return [...this.streams.keys()]
  }
}

/** Parses a link's data, `<revision>@<stream>`. */
export const parseLink = (data: Uint8Array): { streamId: string; revision: bigint } | undefined => {
  const text = decoder.decode(data)
  const at = text.indexOf("@")
  if (at <= 0) return undefined
  const rev = text.slice(0, at)
  if (!/^\d+$/.test(rev)) return undefined
  return { streamId: text.slice(at + 1), revision: BigInt(rev) }
}
