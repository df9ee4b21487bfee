/**
 * `event_store.client.streams.Streams`: append (unary and `BatchAppend`),
 * read (streams and `$all`, forwards and backwards, filtered, and the
 * `$idx-ce-` / `$idx-et-` secondary indexes of KurrentDB 25.1), catch-up
 * subscriptions, delete and tombstone — over the {@link Store}.
 *
 * Internal to the embedded server.
 */
import { randomUUID } from "node:crypto"
import * as grpc from "@grpc/grpc-js"
import type { EventRecord, Expected, ProposedEvent, Store } from "./Store.js"
import { categoryOf, StreamDeleted, WrongExpectedVersion } from "./Store.js"
import type { OpenCalls } from "./OpenCalls.js"
import { readEventResp } from "./encode.js"
import { any, shared, status, streams, streamsGrpc } from "./proto.js"
import {
  readExpected,
  readingBuffers,
  readStreamName,
  readUuid,
  streamDeletedError,
  streamIdentifier,
  statusError,
  type UuidForm,
  wrongExpectedVersionError
} from "./wire.js"

type ReadReq = InstanceType<typeof streams.ReadReq>
type ReadResp = InstanceType<typeof streams.ReadResp>
type FilterOptions = InstanceType<typeof streams.ReadReq.Options.FilterOptions>

const BATCH = 256

/** What a read call sends: protocol messages, or events already serialized by {@link readEventResp}. */
type ReadOut = ReadResp | Buffer
type ReadCall = grpc.ServerWritableStream<ReadReq, ReadOut>

/**
 * Messages a read call may have queued before it waits for the client. The
 * call's own buffer holds 16 (its `write` turns false past that): waiting for
 * 'drain' there ends each turn after a few events, so the client pulls about
 * two events at a time; a deeper queue keeps the connection busy while still
 * bounding what a slow reader makes the server hold.
 */
const QUEUED = 256

/** Writes with backpressure: resolves once the call can take more, or is gone; `undefined` when it can at once. */
const write = (call: ReadCall, message: ReadOut): Promise<void> | undefined => {
  call.write(message)
  if (call.writableLength < QUEUED) return undefined
  return new Promise<void>((resolve) => {
    const done = () => {
      call.off("drain", done)
      call.off("cancelled", done)
      call.off("close", done)
      resolve()
    }
    call.on("drain", done)
    call.on("cancelled", done)
    call.on("close", done)
  })
}

/**
 * The service definition served: `Read` also sends pre-serialized messages
 * (buffers), everything else as generated.
 */
export const streamsDefinition = (): grpc.ServiceDefinition =>
  readingBuffers(streamsGrpc.StreamsService as unknown as grpc.ServiceDefinition)

const eventResp = (store: Store, record: EventRecord, resolveLinks: boolean, form: UuidForm): Buffer => {
  store.stats.eventsRead++
  return readEventResp(store.resolve(record, resolveLinks), form)
}

/** Tells a catch-up subscriber it has read everything there is (live events follow). */
const caughtUpMessage = () => {
  const resp = new streams.ReadResp()
  resp.setCaughtUp(new streams.ReadResp.CaughtUp())
  return resp
}

/** Tells a new catch-up subscriber it is subscribed. */
const confirm = (call: ReadCall) => {
  const confirmation = new streams.ReadResp()
  const c = new streams.ReadResp.SubscriptionConfirmation()
  c.setSubscriptionId(randomUUID())
  confirmation.setConfirmation(c)
  call.write(confirmation)
}

/** Options of the streams service. */
export interface StreamsOptions {
  /** Largest append in bytes (data, metadata and type of its events), as the real server's `MaxAppendSize`. */
  readonly maxAppendSize: number
  /** Open streaming calls, ended with `UNAVAILABLE` on shutdown. */
  readonly calls: OpenCalls
  /** Whether `$idx-ce-` / `$idx-et-` filters read the secondary indexes (KurrentDB 25.1+) or are plain prefixes. */
  readonly secondaryIndexes: boolean
}

/** What one proposed event counts towards the append size limit. */
const sizeOf = (e: ProposedEvent): number => e.data.byteLength + e.metadata.byteLength + Buffer.byteLength(e.type, "utf8")

const maxAppendSizeError = (maxAppendSize: number) =>
  statusError(grpc.status.INVALID_ARGUMENT, "maximum-append-size-exceeded", `Maximum Append Size of ${maxAppendSize} Exceeded.`, {
    "maximum-append-size": String(maxAppendSize)
  })

/** A proposed event from the protocol; `undefined` when its required metadata (type, content type) is missing. */
const proposed = (m: {
  getId(): InstanceType<typeof shared.UUID> | undefined
  getMetadataMap(): { get(key: string): string | undefined }
  getData_asU8(): Uint8Array
  getCustomMetadata_asU8(): Uint8Array
}): ProposedEvent | undefined => {
  const map = m.getMetadataMap()
  const type = map.get("type")
  const contentType = map.get("content-type")
  if (type === undefined || contentType === undefined) return undefined
  return {
    id: readUuid(m.getId()) ?? randomUUID(),
    type,
    contentType,
    data: m.getData_asU8(),
    metadata: m.getCustomMetadata_asU8()
  }
}

const missingMetadataError = () =>
  statusError(grpc.status.INVALID_ARGUMENT, "missing-required-metadata-property", "Required metadata properties are missing: type,content-type", {
    "required-metadata-properties": "type,content-type"
  })

const fail = (call: ReadCall, error: unknown) => {
  if (error instanceof StreamDeleted) call.emit("error", streamDeletedError(error.streamId))
  else call.emit("error", statusError(grpc.status.INTERNAL, undefined, String(error)))
}

/**
 * KurrentDB 25.1's secondary indexes: a stream-name filter whose only prefix is
 * `$idx-ce-<category>` or `$idx-et-<type>` selects the events (never links or
 * system events) of that category or type, positioned as in `$all`.
 */
const indexFilter = (prefix: string): ((r: EventRecord) => boolean) | undefined => {
  if (prefix.startsWith("$idx-ce-")) {
    const category = prefix.slice("$idx-ce-".length)
    return (r) => categoryOf(r.streamId) === category && !r.type.startsWith("$")
  }
  if (prefix.startsWith("$idx-et-")) {
    const type = prefix.slice("$idx-et-".length)
    return (r) => r.type === type && !r.streamId.startsWith("$")
  }
  return undefined
}

/** A predicate from a `$all` filter (stream name or event type; regex or prefixes; a secondary index). */
const makeFilter = (filter: FilterOptions | undefined, secondaryIndexes: boolean): ((r: EventRecord) => boolean) => {
  if (!filter) return () => true
  const onType = filter.hasEventType()
  const expr = onType ? filter.getEventType() : filter.getStreamIdentifier()
  if (!expr) return () => true
  const regex = expr.getRegex()
  const prefixes = expr.getPrefixList()
  if (secondaryIndexes && !onType && !regex && prefixes.length === 1) {
    const index = indexFilter(prefixes[0]!)
    if (index) return index
  }
  const re = regex ? new RegExp(regex) : undefined
  return (r) => {
    const value = onType ? r.type : r.streamId
    if (re && !re.test(value)) return false
    if (prefixes.length > 0 && !prefixes.some((p) => value.startsWith(p))) return false
    return true
  }
}

/**
 * Wakes a waiting subscription when records are appended; ends it with the
 * given status on server shutdown (`stopped` turns true).
 */
const waiter = (store: Store, call: ReadCall, calls: OpenCalls) => {
  let wake: (() => void) | undefined
  let stopped = false
  const fire = () => {
    const w = wake
    wake = undefined
    w?.()
  }
  const unlisten = store.onAppend(fire)
  call.on("cancelled", fire)
  const untrack = calls.track((st) => {
    stopped = true
    call.emit("error", st)
    fire()
  })
  return {
    wait: () =>
      new Promise<void>((resolve) => {
        wake = resolve
      }),
    get stopped() {
      return stopped || call.cancelled
    },
    close: () => {
      unlisten()
      untrack()
      call.off("cancelled", fire)
    }
  }
}

/** The parts both wrong-expected-version messages share (`Append`'s and `BatchAppend`'s; their revision fields are named apart). */
interface WrongExpectedVersionMessage {
  setCurrentNoStream(value: InstanceType<typeof shared.Empty>): unknown
  setExpectedAny(value: InstanceType<typeof shared.Empty>): unknown
  setExpectedNoStream(value: InstanceType<typeof shared.Empty>): unknown
  setExpectedStreamExists(value: InstanceType<typeof shared.Empty>): unknown
}

/** Fills a wrong-expected-version message: the stream's current revision (or none) and what the append expected. */
const fillWrongExpectedVersion = <M extends WrongExpectedVersionMessage>(
  w: M,
  error: WrongExpectedVersion,
  revision: { readonly current: (w: M, revision: string) => unknown; readonly expected: (w: M, revision: string) => unknown }
): M => {
  if (error.current === undefined) w.setCurrentNoStream(new shared.Empty())
  else revision.current(w, error.current.toString(10))
  switch (error.expected._tag) {
    case "Exact":
      revision.expected(w, error.expected.revision.toString(10))
      break
    case "Any":
      w.setExpectedAny(new shared.Empty())
      break
    case "NoStream":
      w.setExpectedNoStream(new shared.Empty())
      break
    case "StreamExists":
      w.setExpectedStreamExists(new shared.Empty())
      break
  }
  return w
}

export const makeStreamsService = (store: Store, options: StreamsOptions): grpc.UntypedServiceImplementation => ({
  append(
    call: grpc.ServerReadableStream<InstanceType<typeof streams.AppendReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof streams.AppendResp>>
  ) {
    let streamId = ""
    let expected = readExpected({ hasRevision: () => false, getRevision: () => "", hasNoStream: () => false })
    const events: Array<ProposedEvent> = []
    let size = 0
    let failed: ReturnType<typeof statusError> | undefined
    call.on("data", (req: InstanceType<typeof streams.AppendReq>) => {
      if (failed) return
      if (req.hasOptions()) {
        const o = req.getOptions()!
        streamId = readStreamName(o.getStreamIdentifier())
        expected = readExpected(o)
      } else if (req.hasProposedMessage()) {
        const event = proposed(req.getProposedMessage()!)
        if (!event) failed = missingMetadataError()
        else if ((size += sizeOf(event)) > options.maxAppendSize) failed = maxAppendSizeError(options.maxAppendSize)
        else events.push(event)
        // a real server answers as soon as the append is refused, without reading the rest
        if (failed) callback(failed)
      }
    })
    call.on("error", () => {})
    call.on("end", () => {
      if (failed) return
      const resp = new streams.AppendResp()
      store.stats.appends++
      try {
        const result = store.append(streamId, expected, events)
        const success = new streams.AppendResp.Success()
        if (result.revision === undefined) success.setNoStream(new shared.Empty())
        else success.setCurrentRevision(result.revision.toString(10))
        if (result.position === undefined) success.setNoPosition(new shared.Empty())
        else {
          const p = new streams.AppendResp.Position()
          p.setCommitPosition(result.position.toString(10))
          p.setPreparePosition(result.position.toString(10))
          success.setPosition(p)
        }
        resp.setSuccess(success)
        callback(null, resp)
      } catch (error) {
        if (error instanceof WrongExpectedVersion) {
          resp.setWrongExpectedVersion(fillWrongExpectedVersion(new streams.AppendResp.WrongExpectedVersion(), error, {
            current: (w, revision) => w.setCurrentRevision(revision),
            expected: (w, revision) => w.setExpectedRevision(revision)
          }))
          callback(null, resp)
        } else if (error instanceof StreamDeleted) {
          callback(streamDeletedError(error.streamId))
        } else {
          callback(statusError(grpc.status.INTERNAL, undefined, String(error)))
        }
      }
    })
  },

  read(call: ReadCall) {
    void read(store, options, call).catch((error) => fail(call, error))
  },

  delete(
    call: grpc.ServerUnaryCall<InstanceType<typeof streams.DeleteReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof streams.DeleteResp>>
  ) {
    removeStream(store, call.request.getOptions()!, false, streams.DeleteResp, streams.DeleteResp.Position, callback)
  },

  tombstone(
    call: grpc.ServerUnaryCall<InstanceType<typeof streams.TombstoneReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof streams.TombstoneResp>>
  ) {
    removeStream(store, call.request.getOptions()!, true, streams.TombstoneResp, streams.TombstoneResp.Position, callback)
  },

  batchAppend(call: grpc.ServerDuplexStream<BatchAppendReq, BatchAppendResp>) {
    batchAppend(store, options, call)
  }
})

type BatchAppendReq = InstanceType<typeof streams.BatchAppendReq>
type BatchAppendResp = InstanceType<typeof streams.BatchAppendResp>

/** Reads a `BatchAppend` expectation (`stream_position | no_stream | any | stream_exists`). */
const batchExpected = (o: InstanceType<typeof streams.BatchAppendReq.Options>): Expected =>
  o.hasStreamPosition()
    ? { _tag: "Exact", revision: BigInt(o.getStreamPosition()) }
    : o.hasNoStream()
    ? { _tag: "NoStream" }
    : o.hasStreamExists()
    ? { _tag: "StreamExists" }
    : { _tag: "Any" }

/** A `google.rpc.Status` with the typed detail the client unpacks into its error classes. */
const rpcStatus = (code: grpc.status, message: string, typeName: string, detail: { serializeBinary(): Uint8Array }) => {
  const st = new status.Status()
  st.setCode(code as number)
  st.setMessage(message)
  const details = new any.Any()
  details.pack(detail.serializeBinary(), typeName)
  st.setDetails(details)
  return st
}

const batchError = (error: unknown, streamId: string) => {
  if (error instanceof WrongExpectedVersion) {
    const w = fillWrongExpectedVersion(new shared.WrongExpectedVersion(), error, {
      current: (w, revision) => w.setCurrentStreamRevision(revision),
      expected: (w, revision) => w.setExpectedStreamPosition(revision)
    })
    return rpcStatus(grpc.status.FAILED_PRECONDITION, `Wrong expected version on ${streamId}`, "event_store.client.WrongExpectedVersion", w)
  }
  if (error instanceof StreamDeleted) {
    const d = new shared.StreamDeleted()
    d.setStreamIdentifier(streamIdentifier(streamId))
    return rpcStatus(grpc.status.FAILED_PRECONDITION, `Event stream '${streamId}' is deleted.`, "event_store.client.StreamDeleted", d)
  }
  return rpcStatus(grpc.status.INTERNAL, String(error), "event_store.client.Unknown", new shared.Unknown())
}

/**
 * `Streams/BatchAppend`: one long-lived call carrying many appends, each a
 * series of requests with one correlation id (the first with the options, the
 * last marked final), each answered by one response with that id: success
 * with the new revision and position, or a status with a typed detail
 * (wrong expected version, deleted stream, maximum append size, bad request).
 */
const batchAppend = (store: Store, options: StreamsOptions, call: grpc.ServerDuplexStream<BatchAppendReq, BatchAppendResp>) => {
  interface Pending {
    streamId: string
    expected: Expected
    options: InstanceType<typeof streams.BatchAppendReq.Options> | undefined
    readonly events: Array<ProposedEvent>
    size: number
    /** Set once answered with an error: the remaining requests of this append are dropped. */
    refused: boolean
  }
  const pending = new Map<string, Pending>()
  let ended = false
  const untrack = options.calls.track((st) => {
    if (ended) return
    ended = true
    call.emit("error", st)
  })
  const answer = (correlation: InstanceType<typeof shared.UUID>, p: Pending, fill: (resp: BatchAppendResp) => void) => {
    if (ended) return
    const resp = new streams.BatchAppendResp()
    resp.setCorrelationId(correlation)
    resp.setStreamIdentifier(streamIdentifier(p.streamId))
    const o = p.options
    if (o?.hasStreamPosition()) resp.setStreamPosition(o.getStreamPosition())
    else if (o?.hasNoStream()) resp.setNoStream(new shared.Empty())
    else if (o?.hasStreamExists()) resp.setStreamExists(new shared.Empty())
    else resp.setAny(new shared.Empty())
    fill(resp)
    call.write(resp)
  }
  call.on("data", (req: BatchAppendReq) => {
    const correlation = req.getCorrelationId()
    const key = readUuid(correlation)
    if (!correlation || key === undefined) return
    let p = pending.get(key)
    if (!p) {
      p = { streamId: "", expected: { _tag: "Any" }, options: undefined, events: [], size: 0, refused: false }
      pending.set(key, p)
    }
    if (req.hasOptions()) {
      const o = req.getOptions()!
      p.options = o
      p.streamId = readStreamName(o.getStreamIdentifier())
      p.expected = batchExpected(o)
    }
    if (!p.refused) {
      for (const m of req.getProposedMessagesList()) {
        const event = proposed(m)
        if (!event) {
          p.refused = true
          const bad = new shared.BadRequest()
          bad.setMessage("Required metadata properties are missing: type,content-type")
          answer(correlation, p, (resp) =>
            resp.setError(rpcStatus(grpc.status.INVALID_ARGUMENT, bad.getMessage(), "event_store.client.BadRequest", bad)))
          break
        }
        p.size += sizeOf(event)
        if (p.size > options.maxAppendSize) {
          p.refused = true
          const max = new shared.MaximumAppendSizeExceeded()
          max.setMaxappendsize(options.maxAppendSize)
          answer(correlation, p, (resp) =>
            resp.setError(rpcStatus(grpc.status.INVALID_ARGUMENT, `Maximum Append Size of ${options.maxAppendSize} Exceeded.`, "event_store.client.MaximumAppendSizeExceeded", max)))
          break
        }
        p.events.push(event)
      }
    }
    if (!req.getIsFinal()) return
    pending.delete(key)
    if (p.refused) return
    const target = p
    store.stats.batchAppends++
    try {
      const result = store.append(target.streamId, target.expected, target.events)
      answer(correlation, target, (resp) => {
        const success = new streams.BatchAppendResp.Success()
        if (result.revision === undefined) success.setNoStream(new shared.Empty())
        else success.setCurrentRevision(result.revision.toString(10))
        if (result.position === undefined) success.setNoPosition(new shared.Empty())
        else {
          const position = new shared.AllStreamPosition()
          position.setCommitPosition(result.position.toString(10))
          position.setPreparePosition(result.position.toString(10))
          success.setPosition(position)
        }
        resp.setSuccess(success)
      })
    } catch (error) {
      answer(correlation, target, (resp) => resp.setError(batchError(error, target.streamId)))
    }
  })
  const finish = () => {
    untrack()
    pending.clear()
  }
  call.on("end", () => {
    finish()
    if (!ended) {
      ended = true
      call.end()
    }
  })
  call.on("cancelled", () => {
    ended = true
    finish()
  })
  call.on("error", finish)
}

const deleteError = (error: unknown) =>
  error instanceof WrongExpectedVersion
    ? wrongExpectedVersionError(error.streamId, error.expected, error.current)
    : error instanceof StreamDeleted
    ? streamDeletedError(error.streamId)
    : statusError(grpc.status.INTERNAL, undefined, String(error))

/** Deletes (soft) or tombstones a stream and answers with the position of the deletion. */
const removeStream = <
  Resp extends { setPosition(p: Position): void },
  Position extends { setCommitPosition(v: string): void; setPreparePosition(v: string): void }
>(
  store: Store,
  options: Parameters<typeof readExpected>[0] & { getStreamIdentifier(): Parameters<typeof readStreamName>[0] },
  tombstone: boolean,
  Response: new() => Resp,
  PositionOf: new() => Position,
  callback: grpc.sendUnaryData<Resp>
) => {
  try {
    const position = store.delete(readStreamName(options.getStreamIdentifier()), readExpected(options), tombstone)
    const resp = new Response()
    const p = new PositionOf()
    p.setCommitPosition(position.toString(10))
    p.setPreparePosition(position.toString(10))
    resp.setPosition(p)
    callback(null, resp)
  } catch (error) {
    callback(deleteError(error))
  }
}

const read = async (store: Store, { calls, secondaryIndexes }: StreamsOptions, call: ReadCall): Promise<void> => {
  const options = call.request.getOptions()!
  const form: UuidForm = options.getUuidOption()?.hasStructured() ? "structured" : "string"
  const resolveLinks = options.getResolveLinks()
  const backwards = options.getReadDirection() === streams.ReadReq.Options.ReadDirection.BACKWARDS
  const subscribe = options.hasSubscription()
  const countText = options.hasCount() ? options.getCount() : "0"
  const count = subscribe ? Infinity : Math.min(Number(BigInt(countText)), Number.MAX_SAFE_INTEGER)

  if (options.hasStream()) {
    const so = options.getStream()!
    const streamId = readStreamName(so.getStreamIdentifier())
    if (!subscribe) {
      const from = so.hasRevision() ? BigInt(so.getRevision()) : so.hasEnd() ? "end" as const : "start" as const
      const records = store.readStream(streamId, from, backwards, count)
      if (records === undefined) {
        const resp = new streams.ReadResp()
        const nf = new streams.ReadResp.StreamNotFound()
        const id = new shared.StreamIdentifier()
        id.setStreamName(Buffer.from(streamId, "utf8"))
        nf.setStreamIdentifier(id)
        resp.setStreamNotFound(nf)
        call.write(resp)
        call.end()
        return
      }
      for (const r of records) {
        if (call.cancelled) return
        await write(call, eventResp(store, r, resolveLinks, form))
      }
      call.end()
      return
    }
    // catch-up subscription to a stream: after the given revision (exclusive)
    let next = so.hasRevision()
      ? BigInt(so.getRevision()) + 1n
      : so.hasEnd()
      ? store.nextRevision(streamId)
      : 0n
    confirm(call)
    const w = waiter(store, call, calls)
    let caughtUp = false
    try {
      while (!w.stopped) {
        if (store.isTombstoned(streamId)) throw new StreamDeleted(streamId)
        const first = store.firstRevision(streamId)
        if (next < first) next = first
        const batch = store.exists(streamId) ? store.readStream(streamId, next, false, BATCH) ?? [] : []
        if (batch.length === 0) {
          if (!caughtUp) {
            caughtUp = true
            await write(call, caughtUpMessage())
            continue
          }
          await w.wait()
          continue
        }
        for (const r of batch) {
          if (w.stopped) return
          next = r.revision + 1n
          await write(call, eventResp(store, r, resolveLinks, form))
        }
      }
    } finally {
      w.close()
    }
    return
  }

  // $all
  const ao = options.getAll()!
  const filter = options.hasFilter() ? options.getFilter() : undefined
  const matches = makeFilter(filter, secondaryIndexes)
  const log = store.log
  if (!subscribe) {
    let sent = 0
    if (!backwards) {
      let i = ao.hasPosition() ? Number(BigInt(ao.getPosition()!.getCommitPosition())) - 1 : ao.hasEnd() ? log.length : 0
      for (i = Math.max(0, i); i < log.length && sent < count; i++) {
        if (call.cancelled) return
        const r = log[i]!
        if (!matches(r)) continue
        sent++
        await write(call, eventResp(store, r, resolveLinks, form))
      }
    } else {
      let i = ao.hasPosition() ? Number(BigInt(ao.getPosition()!.getCommitPosition())) - 2 : ao.hasStart() ? -1 : log.length - 1
      for (i = Math.min(i, log.length - 1); i >= 0 && sent < count; i--) {
        if (call.cancelled) return
        const r = log[i]!
        if (!matches(r)) continue
        sent++
        await write(call, eventResp(store, r, resolveLinks, form))
      }
    }
    call.end()
    return
  }
  // catch-up subscription to $all: after the given position (exclusive)
  let index = ao.hasPosition() ? Number(BigInt(ao.getPosition()!.getCommitPosition())) : ao.hasEnd() ? log.length : 0
  const window = filter ? (filter.hasMax() ? filter.getMax() : 32) * Math.max(1, filter.getCheckpointintervalmultiplier()) : 0
  let scanned = 0
  confirm(call)
  const w = waiter(store, call, calls)
  let caughtUp = false
  try {
    while (!w.stopped) {
      if (index >= log.length) {
        if (!caughtUp) {
          caughtUp = true
          await write(call, caughtUpMessage())
          continue
        }
        await w.wait()
        continue
      }
      const end = Math.min(log.length, index + BATCH)
      for (; index < end; index++) {
        if (w.stopped) return
        const r = log[index]!
        if (matches(r)) await write(call, eventResp(store, r, resolveLinks, form))
        if (window > 0 && ++scanned >= window) {
          scanned = 0
          const resp = new streams.ReadResp()
          const cp = new streams.ReadResp.Checkpoint()
          cp.setCommitPosition(r.position.toString(10))
          cp.setPreparePosition(r.position.toString(10))
          resp.setCheckpoint(cp)
          await write(call, resp)
        }
      }
    }
  } finally {
    w.close()
  }
}
