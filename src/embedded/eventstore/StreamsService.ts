/**
 * `event_store.client.streams.Streams`: append, read (streams and `$all`,
 * forwards and backwards, filtered), catch-up subscriptions, delete and
 * tombstone — over the {@link Store}.
 *
 * Internal to the embedded server.
 */
import { randomUUID } from "node:crypto"
import * as grpc from "@grpc/grpc-js"
import type { EventRecord, ProposedEvent, Store } from "./Store.js"
import { StreamDeleted, WrongExpectedVersion } from "./Store.js"
import { shared, streams } from "./proto.js"
import {
  fillReadEvent,
  readExpected,
  readStreamName,
  readUuid,
  streamDeletedError,
  statusError,
  type UuidForm,
  wrongExpectedVersionError
} from "./wire.js"

type ReadReq = InstanceType<typeof streams.ReadReq>
type ReadResp = InstanceType<typeof streams.ReadResp>
type FilterOptions = InstanceType<typeof streams.ReadReq.Options.FilterOptions>

const BATCH = 256

/** Writes with backpressure: resolves once the call can take more, or is gone. */
const write = (call: grpc.ServerWritableStream<ReadReq, ReadResp>, message: ReadResp): Promise<void> | undefined => {
  if (call.write(message)) return undefined
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

const eventResp = (store: Store, record: EventRecord, resolveLinks: boolean, form: UuidForm): ReadResp => {
  const resolved = store.resolve(record, resolveLinks)
  store.stats.eventsRead++
  const resp = new streams.ReadResp()
  resp.setEvent(fillReadEvent(new streams.ReadResp.ReadEvent(), resolved, streams.ReadResp.ReadEvent.RecordedEvent, form))
  return resp
}

/** Tells a catch-up subscriber it has read everything there is (live events follow). */
const caughtUpMessage = () => {
  const resp = new streams.ReadResp()
  resp.setCaughtUp(new streams.ReadResp.CaughtUp())
  return resp
}

/** Tells a new catch-up subscriber it is subscribed. */
const confirm = (call: grpc.ServerWritableStream<ReadReq, ReadResp>) => {
  const confirmation = new streams.ReadResp()
  const c = new streams.ReadResp.SubscriptionConfirmation()
  c.setSubscriptionId(randomUUID())
  confirmation.setConfirmation(c)
  call.write(confirmation)
}

const fail = (call: grpc.ServerWritableStream<ReadReq, ReadResp>, error: unknown) => {
  if (error instanceof StreamDeleted) call.emit("error", streamDeletedError(error.streamId))
  else call.emit("error", statusError(grpc.status.INTERNAL, undefined, String(error)))
}

/** A predicate from a `$all` filter (stream name or event type; regex or prefixes). */
const makeFilter = (filter: FilterOptions | undefined): ((r: EventRecord) => boolean) => {
  if (!filter) return () => true
  const onType = filter.hasEventType()
  const expr = onType ? filter.getEventType() : filter.getStreamIdentifier()
  if (!expr) return () => true
  const regex = expr.getRegex()
  const prefixes = expr.getPrefixList()
  const re = regex ? new RegExp(regex) : undefined
  return (r) => {
    const value = onType ? r.type : r.streamId
    if (re && !re.test(value)) return false
    if (prefixes.length > 0 && !prefixes.some((p) => value.startsWith(p))) return false
    return true
  }
}

/** Wakes a waiting subscription when records are appended. */
const waiter = (store: Store, call: grpc.ServerWritableStream<ReadReq, ReadResp>) => {
  let wake: (() => void) | undefined
  const fire = () => {
    const w = wake
    wake = undefined
    w?.()
  }
  const unlisten = store.onAppend(fire)
  call.on("cancelled", fire)
  return {
    wait: () =>
      new Promise<void>((resolve) => {
        wake = resolve
      }),
    close: () => {
      unlisten()
      call.off("cancelled", fire)
    }
  }
}

export const makeStreamsService = (store: Store): grpc.UntypedServiceImplementation => ({
  append(
    call: grpc.ServerReadableStream<InstanceType<typeof streams.AppendReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof streams.AppendResp>>
  ) {
    let streamId = ""
    let expected = readExpected({ hasRevision: () => false, getRevision: () => "", hasNoStream: () => false })
    const events: Array<ProposedEvent> = []
    let missing: string | undefined
    call.on("data", (req: InstanceType<typeof streams.AppendReq>) => {
      if (req.hasOptions()) {
        const o = req.getOptions()!
        streamId = readStreamName(o.getStreamIdentifier())
        expected = readExpected(o)
      } else if (req.hasProposedMessage()) {
        const m = req.getProposedMessage()!
        const map = m.getMetadataMap()
        const type = map.get("type")
        const contentType = map.get("content-type")
        if (type === undefined || contentType === undefined) missing = "type,content-type"
        events.push({
          id: readUuid(m.getId()) ?? randomUUID(),
          type: type ?? "",
          contentType: contentType ?? "application/octet-stream",
          data: m.getData_asU8(),
          metadata: m.getCustomMetadata_asU8()
        })
      }
    })
    call.on("error", () => {})
    call.on("end", () => {
      if (missing !== undefined) {
        return callback(
          statusError(grpc.status.INVALID_ARGUMENT, "missing-required-metadata-property", `Required metadata properties are missing: ${missing}`, {
            "required-metadata-properties": missing
          })
        )
      }
      const resp = new streams.AppendResp()
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
          const w = new streams.AppendResp.WrongExpectedVersion()
          if (error.current === undefined) w.setCurrentNoStream(new shared.Empty())
          else w.setCurrentRevision(error.current.toString(10))
          switch (error.expected._tag) {
            case "Exact":
              w.setExpectedRevision(error.expected.revision.toString(10))
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
          resp.setWrongExpectedVersion(w)
          callback(null, resp)
        } else if (error instanceof StreamDeleted) {
          callback(streamDeletedError(error.streamId))
        } else {
          callback(statusError(grpc.status.INTERNAL, undefined, String(error)))
        }
      }
    })
  },

  read(call: grpc.ServerWritableStream<ReadReq, ReadResp>) {
    void read(store, call).catch((error) => fail(call, error))
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

  batchAppend(call: grpc.ServerDuplexStream<unknown, unknown>) {
    call.emit("error", statusError(grpc.status.UNIMPLEMENTED, undefined, "BatchAppend is not supported"))
  }
})

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

const read = async (store: Store, call: grpc.ServerWritableStream<ReadReq, ReadResp>): Promise<void> => {
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
    const w = waiter(store, call)
    let caughtUp = false
    try {
      while (!call.cancelled) {
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
          if (call.cancelled) return
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
  const matches = makeFilter(filter)
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
  const w = waiter(store, call)
  let caughtUp = false
  try {
    while (!call.cancelled) {
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
        if (call.cancelled) return
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
