/**
 * `event_store.client.server_features.ServerFeatures`: the methods and
 * features the embedded server supports, and a server version, so that the
 * client's capability checks pass (and it never falls back to HTTP).
 *
 * Internal to the embedded server.
 */
import type * as grpc from "@grpc/grpc-js"
import { features } from "./proto.js"

/**
 * The server version the embedded server reports: the KurrentDB release whose
 * features it offers (BatchAppend, persistent subscriptions to `$all`, the
 * `$idx-ce-` / `$idx-et-` secondary indexes of 25.1).
 */
export const SERVER_VERSION = "25.1.0"

/** The version reported by a server without secondary indexes (the last release before them). */
export const SERVER_VERSION_WITHOUT_INDEXES = "24.10.0"

const STREAMS = "event_store.client.streams.Streams"
const PERSISTENT = "event_store.client.persistent_subscriptions.PersistentSubscriptions"

const supported: ReadonlyArray<readonly [string, string, ReadonlyArray<string>]> = [
  [STREAMS, "batchappend", []],
  [STREAMS, "read", []],
  [STREAMS, "append", []],
  [STREAMS, "delete", []],
  [STREAMS, "tombstone", []],
  [PERSISTENT, "create", ["stream", "all"]],
  [PERSISTENT, "update", ["stream", "all"]],
  [PERSISTENT, "delete", ["stream", "all"]],
  [PERSISTENT, "read", ["stream", "all"]],
  [PERSISTENT, "getinfo", ["stream", "all"]],
  [PERSISTENT, "list", ["stream", "all"]],
  [PERSISTENT, "replayparked", ["stream", "all"]],
  [PERSISTENT, "restartsubsystem", []],
  ["event_store.client.server_features.ServerFeatures", "getsupportedmethods", []]
]

export const makeServerFeaturesService = (options: {
  readonly batchAppend: boolean
  readonly secondaryIndexes: boolean
}): grpc.UntypedServiceImplementation => ({
  getSupportedMethods(_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) {
    const resp = new features.SupportedMethods()
    resp.setEventStoreServerVersion(options.secondaryIndexes ? SERVER_VERSION : SERVER_VERSION_WITHOUT_INDEXES)
    const offered = supported.filter(([service, method]) => options.batchAppend || !(service === STREAMS && method === "batchappend"))
    resp.setMethodsList(offered.map(([service, method, fs]) => {
      const m = new features.SupportedMethod()
      m.setServiceName(service)
      m.setMethodName(method)
      m.setFeaturesList([...fs])
      return m
    }))
    callback(null, resp)
  }
})
