/**
 * `event_store.client.persistent_subscriptions.PersistentSubscriptions` over
 * {@link PersistentSubscriptions}: create / update / delete / read (ack, nack)
 * / getInfo / list / replayParked / restartSubsystem, for stream and `$all` groups.
 *
 * Internal to the embedded server.
 */
import * as grpc from "@grpc/grpc-js"
import {
  type ConsumerStrategy,
  type Group,
  GroupExists,
  GroupNotFound,
  type GroupSettings,
  MaxSubscribersReached,
  type PersistentSubscriptions
} from "./PersistentSubscriptions.js"
import { persistent, persistentGrpc, shared } from "./proto.js"
import type { AllFilter } from "./GroupSource.js"
import type { OpenCalls } from "./OpenCalls.js"
import { readEventResp } from "./encode.js"
import { readingBuffers, readStreamName, readUuid, statusError, type UuidForm } from "./wire.js"

type SettingsMessage = InstanceType<typeof persistent.CreateReq.Settings> | InstanceType<typeof persistent.UpdateReq.Settings>
type StreamOptionsMessage = InstanceType<typeof persistent.CreateReq.StreamOptions> | InstanceType<typeof persistent.UpdateReq.StreamOptions>

const U64_MAX = "18446744073709551615"

const strategyOf = (s: SettingsMessage): ConsumerStrategy => {
  const named = "getConsumerStrategy" in s ? s.getConsumerStrategy() : ""
  if (named === "Pinned" || named === "RoundRobin" || named === "DispatchToSingle") return named
  switch (s.getNamedConsumerStrategy()) {
    case persistent.CreateReq.ConsumerStrategy.DISPATCHTOSINGLE:
      return "DispatchToSingle"
    case persistent.CreateReq.ConsumerStrategy.PINNED:
      return "Pinned"
    default:
      return "RoundRobin"
  }
}

const settingsOf = (s: SettingsMessage, stream: StreamOptionsMessage | undefined): GroupSettings => {
  let startFrom: GroupSettings["startFrom"]
  if (stream && stream.hasStart()) startFrom = "start"
  else if (stream && stream.hasEnd()) startFrom = "end"
  else if (stream && stream.hasRevision()) startFrom = BigInt(stream.getRevision())
  else {
    const rev = s.getRevision()
    startFrom = rev === U64_MAX || rev === "-1" ? "end" : rev === "" || rev === "0" ? "start" : BigInt(rev)
  }
  return {
    resolveLinkTos: s.getResolveLinks(),
    startFrom,
    extraStatistics: s.getExtraStatistics(),
    messageTimeoutMs: s.hasMessageTimeoutMs()
      ? s.getMessageTimeoutMs()
      : s.hasMessageTimeoutTicks()
      ? Number(BigInt(s.getMessageTimeoutTicks()) / 10_000n)
      : 30_000,
    maxRetryCount: s.getMaxRetryCount(),
    checkpointAfterMs: s.hasCheckpointAfterMs()
      ? s.getCheckpointAfterMs()
      : s.hasCheckpointAfterTicks()
      ? Number(BigInt(s.getCheckpointAfterTicks()) / 10_000n)
      : 2_000,
    minCheckpointCount: s.getMinCheckpointCount(),
    maxCheckpointCount: s.getMaxCheckpointCount(),
    maxSubscriberCount: s.getMaxSubscriberCount(),
    liveBufferSize: s.getLiveBufferSize(),
    readBatchSize: s.getReadBatchSize(),
    historyBufferSize: s.getHistoryBufferSize(),
    strategy: strategyOf(s)
  }
}

const groupError = (error: unknown, stream: string, group: string) => {
  const meta = { "stream-name": stream, "group-name": group }
  if (error instanceof GroupExists) {
    return statusError(grpc.status.ALREADY_EXISTS, "persistent-subscription-exists", error.message, meta)
  }
  if (error instanceof GroupNotFound) {
    return statusError(grpc.status.NOT_FOUND, "persistent-subscription-does-not-exist", error.message, meta)
  }
  if (error instanceof MaxSubscribersReached) {
    return statusError(grpc.status.FAILED_PRECONDITION, "maximum-subscribers-reached", error.message, meta)
  }
  return statusError(grpc.status.INTERNAL, undefined, String(error))
}

const ALL = "$all"

type AllOptionsMessage = InstanceType<typeof persistent.CreateReq.AllOptions> | InstanceType<typeof persistent.UpdateReq.AllOptions>

/** Start point of a `$all` group (an inclusive position, the start or the end). */
const allStartFrom = (a: AllOptionsMessage): GroupSettings["startFrom"] =>
  a.hasPosition() ? BigInt(a.getPosition()!.getCommitPosition()) : a.hasEnd() ? "end" : "start"

const allFilterOf = (a: InstanceType<typeof persistent.CreateReq.AllOptions>): AllFilter | undefined => {
  if (!a.hasFilter()) return undefined
  const f = a.getFilter()!
  const on = f.hasEventType() ? "type" : "stream"
  const expr = on === "type" ? f.getEventType() : f.getStreamIdentifier()
  if (!expr) return undefined
  return { on, regex: expr.getRegex() || undefined, prefixes: expr.getPrefixList() }
}

const infoOf = (g: Group): InstanceType<typeof persistent.SubscriptionInfo> => {
  const i = new persistent.SubscriptionInfo()
  const s = g.settings
  i.setEventSource(g.stream)
  i.setGroupName(g.name)
  i.setStatus("Live")
  i.setConnectionsList(g.connections.map((c) => {
    const ci = new persistent.SubscriptionInfo.ConnectionInfo()
    ci.setFrom(c.sink.from)
    ci.setUsername("")
    ci.setAverageItemsPerSecond(0)
    ci.setTotalItems(String(c.totalItems))
    ci.setCountSinceLastMeasurement("0")
    ci.setAvailableSlots(c.available)
    ci.setInFlightMessages(c.inFlight)
    ci.setConnectionName(c.sink.connectionName)
    return ci
  }))
  i.setAveragePerSecond(0)
  i.setTotalItems(String(g.totalItems))
  i.setCountSinceLastMeasurement("0")
  i.setLastCheckpointedEventPosition(g.format(g.lastCheckpointed))
  i.setLastKnownEventPosition(g.format(g.lastKnown))
  i.setResolveLinkTos(s.resolveLinkTos)
  i.setStartFrom(g.startFromText)
  i.setMessageTimeoutMilliseconds(s.messageTimeoutMs)
  i.setExtraStatistics(s.extraStatistics)
  i.setMaxRetryCount(s.maxRetryCount)
  i.setLiveBufferSize(s.liveBufferSize)
  i.setBufferSize(s.historyBufferSize)
  i.setReadBatchSize(s.readBatchSize)
  i.setCheckPointAfterMilliseconds(s.checkpointAfterMs)
  i.setMinCheckPointCount(s.minCheckpointCount)
  i.setMaxCheckPointCount(s.maxCheckpointCount)
  const stats = g.stats
  i.setReadBufferCount(stats.readBuffer)
  i.setLiveBufferCount("0")
  i.setRetryBufferCount(stats.retryBuffer)
  i.setTotalInFlightMessages(stats.inFlight)
  i.setOutstandingMessagesCount(stats.inFlight)
  i.setNamedConsumerStrategy(s.strategy)
  i.setMaxSubscriberCount(s.maxSubscriberCount)
  i.setParkedMessageCount(String(g.parkedCount))
  return i
}

type ReadReq = InstanceType<typeof persistent.ReadReq>
type ReadResp = InstanceType<typeof persistent.ReadResp>

/** Answers a unary call about one group, mapping the group's errors to the statuses the client expects. */
const answer = <Resp>(stream: string, group: string, callback: grpc.sendUnaryData<Resp>, respond: () => Resp) => {
  try {
    callback(null, respond())
  } catch (error) {
    callback(groupError(error, stream, group))
  }
}

/** The target of a create or update: `$all` or a stream, and the stream options if any. */
const targetOf = <All, StreamOptions extends { getStreamIdentifier(): Parameters<typeof readStreamName>[0] }>(o: {
  hasAll(): boolean
  getAll(): All | undefined
  hasStream(): boolean
  getStream(): StreamOptions | undefined
  getStreamIdentifier(): Parameters<typeof readStreamName>[0]
}) => {
  const all = o.hasAll() ? o.getAll()! : undefined
  const so = o.hasStream() ? o.getStream() : undefined
  return { all, so, stream: all ? ALL : readStreamName(so ? so.getStreamIdentifier() : o.getStreamIdentifier()) }
}

/**
 * The service definition served: `Read` also sends events already serialized
 * by {@link readEventResp} (buffers), everything else as generated.
 */
export const persistentDefinition = (): grpc.ServiceDefinition =>
  readingBuffers(persistentGrpc.PersistentSubscriptionsService as unknown as grpc.ServiceDefinition)

export const makePersistentService = (groups: PersistentSubscriptions, calls: OpenCalls): grpc.UntypedServiceImplementation => ({
  create(
    call: grpc.ServerUnaryCall<InstanceType<typeof persistent.CreateReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof persistent.CreateResp>>
  ) {
    const o = call.request.getOptions()!
    const { all, so, stream } = targetOf(o)
    answer(stream, o.getGroupName(), callback, () => {
      const base = settingsOf(o.getSettings()!, so)
      groups.create(stream, o.getGroupName(), all ? { ...base, startFrom: allStartFrom(all), filter: allFilterOf(all) } : base)
      return new persistent.CreateResp()
    })
  },

  update(
    call: grpc.ServerUnaryCall<InstanceType<typeof persistent.UpdateReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof persistent.UpdateResp>>
  ) {
    const o = call.request.getOptions()!
    const { all, so, stream } = targetOf(o)
    answer(stream, o.getGroupName(), callback, () => {
      const base = settingsOf(o.getSettings()!, so)
      // an update keeps a $all group's filter (the protocol cannot change it)
      const settings = all ? { ...base, startFrom: allStartFrom(all), filter: groups.get(stream, o.getGroupName()).settings.filter } : base
      groups.update(stream, o.getGroupName(), settings)
      return new persistent.UpdateResp()
    })
  },

  delete(
    call: grpc.ServerUnaryCall<InstanceType<typeof persistent.DeleteReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof persistent.DeleteResp>>
  ) {
    const o = call.request.getOptions()!
    const stream = o.hasAll() ? ALL : readStreamName(o.getStreamIdentifier())
    answer(stream, o.getGroupName(), callback, () => {
      groups.delete(stream, o.getGroupName())
      return new persistent.DeleteResp()
    })
  },

  getInfo(
    call: grpc.ServerUnaryCall<InstanceType<typeof persistent.GetInfoReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof persistent.GetInfoResp>>
  ) {
    const o = call.request.getOptions()!
    const stream = o.hasAll() ? ALL : readStreamName(o.getStreamIdentifier())
    answer(stream, o.getGroupName(), callback, () => {
      const resp = new persistent.GetInfoResp()
      resp.setSubscriptionInfo(infoOf(groups.get(stream, o.getGroupName())))
      return resp
    })
  },

  list(
    call: grpc.ServerUnaryCall<InstanceType<typeof persistent.ListReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof persistent.ListResp>>
  ) {
    const o = call.request.getOptions()!
    let list: Array<Group>
    if (o.hasListForStream()) {
      const so = o.getListForStream()!
      {
        const stream = so.hasAll() ? ALL : readStreamName(so.getStream())
        list = groups.list(stream)
        if (list.length === 0) {
          return callback(
            statusError(grpc.status.NOT_FOUND, "persistent-subscription-does-not-exist", `No groups on ${stream}`, {
              "stream-name": stream
            })
          )
        }
      }
    } else list = groups.list()
    const resp = new persistent.ListResp()
    resp.setSubscriptionsList(list.map(infoOf))
    callback(null, resp)
  },

  replayParked(
    call: grpc.ServerUnaryCall<InstanceType<typeof persistent.ReplayParkedReq>, unknown>,
    callback: grpc.sendUnaryData<InstanceType<typeof persistent.ReplayParkedResp>>
  ) {
    const o = call.request.getOptions()!
    const stream = o.hasAll() ? ALL : readStreamName(o.getStreamIdentifier())
    answer(stream, o.getGroupName(), callback, () => {
      groups.get(stream, o.getGroupName()).replayParked(o.hasStopAt() ? Number(o.getStopAt()) : undefined)
      return new persistent.ReplayParkedResp()
    })
  },

  restartSubsystem(_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) {
    groups.restart()
    callback(null, new shared.Empty())
  },

  read(call: grpc.ServerDuplexStream<ReadReq, ReadResp | Buffer>) {
    let group: Group | undefined
    let subscriberId: string | undefined
    let form: UuidForm = "string"
    let ended = false
    const end = () => {
      untrack()
      if (ended) return
      ended = true
      if (group && subscriberId) group.disconnect(subscriberId)
    }
    // on shutdown the subscriber sees the connection go away (UNAVAILABLE), as with a real server
    const untrack = calls.track((st) => {
      if (ended) return
      call.emit("error", st)
      end()
    })
    call.on("data", (req: ReadReq) => {
      if (req.hasOptions()) {
        if (group) return
        const o = req.getOptions()!
        const stream = o.hasAll() ? ALL : readStreamName(o.getStreamIdentifier())
        const name = o.getGroupName()
        form = o.getUuidOption()?.hasStructured() ? "structured" : "string"
        try {
          const g = groups.get(stream, name)
          const connectionName = call.metadata.get("connection-name")[0]?.toString() ?? ""
          const confirmation = new persistent.ReadResp()
          const c = new persistent.ReadResp.SubscriptionConfirmation()
          c.setSubscriptionId(`${stream}::${name}`)
          confirmation.setSubscriptionConfirmation(c)
          call.write(confirmation)
          group = g
          subscriberId = g.connect(o.getBufferSize(), {
            connectionName,
            from: call.getPeer(),
            send: (m) => {
              if (ended) return
              call.write(readEventResp(m.resolved, form, m.retryCount))
            },
            close: (dropped) => {
              if (ended) return
              ended = true
              if (dropped === undefined) call.end()
              else {
                call.emit(
                  "error",
                  statusError(grpc.status.CANCELLED, "persistent-subscription-dropped", dropped, {
                    "stream-name": stream,
                    "group-name": name
                  })
                )
              }
            }
          })
        } catch (error) {
          ended = true
          call.emit("error", groupError(error, stream, name))
        }
        return
      }
      if (!group) return
      if (req.hasAck()) {
        group.ack(req.getAck()!.getIdsList().flatMap((u) => readUuid(u) ?? []))
      } else if (req.hasNack()) {
        const n = req.getNack()!
        const A = persistent.ReadReq.Nack.Action
        const action = n.getAction() === A.PARK
          ? "park"
          : n.getAction() === A.RETRY
          ? "retry"
          : n.getAction() === A.SKIP
          ? "skip"
          : n.getAction() === A.STOP
          ? "stop"
          : "unknown"
        if (subscriberId) group.nack(subscriberId, n.getIdsList().flatMap((u) => readUuid(u) ?? []), action, n.getReason())
      }
    })
    call.on("end", () => {
      end()
      call.end()
    })
    call.on("cancelled", end)
    call.on("error", end)
    call.on("close", end)
  }
})
