/**
 * The protocol: service definitions and messages generated inside the official
 * client packages. The generated code registers its classes on one global
 * protobuf namespace, and the two packages' definitions differ (KurrentDB
 * renamed fields), so a process must use one package's code throughout: the
 * server takes the package the process's clients use (see `load`).
 *
 * Internal to the embedded server.
 */
import type * as Any from "google-protobuf/google/protobuf/any_pb.js"
import { createRequire } from "node:module"
import type streamsGrpcT from "@eventstore/db-client/generated/streams_grpc_pb.js"
import type streamsT from "@eventstore/db-client/generated/streams_pb.js"
import type persistentGrpcT from "@eventstore/db-client/generated/persistent_grpc_pb.js"
import type persistentT from "@eventstore/db-client/generated/persistent_pb.js"
import type featuresGrpcT from "@eventstore/db-client/generated/serverfeatures_grpc_pb.js"
import type featuresT from "@eventstore/db-client/generated/serverfeatures_pb.js"
import type sharedT from "@eventstore/db-client/generated/shared_pb.js"
import type statusT from "@eventstore/db-client/generated/status_pb.js"

type Package = "@eventstore/db-client" | "@kurrent/kurrentdb-client"

/**
 * The package to serve with: `EVENTSTORE_CLIENT` when set, else the one whose
 * code is already registered in this process (KurrentDB's `BatchAppendReq`
 * options carry a field the 6.x ones lack), else the 6.x client's.
 */
const choosePackage = (): Package => {
  if (process.env.EVENTSTORE_CLIENT === "kurrentdb") return "@kurrent/kurrentdb-client"
  if (process.env.EVENTSTORE_CLIENT === "esdb") return "@eventstore/db-client"
  const options = (globalThis as { proto?: any }).proto?.event_store?.client?.streams?.BatchAppendReq?.Options?.prototype
  return options !== undefined && typeof options.getDeadline21100 === "function" ? "@kurrent/kurrentdb-client" : "@eventstore/db-client"
}

// Both packages generate the same messages and services (typed here by the 6.x client's declarations).
// Bound on first use (`load`), so that importing the server loads no client package.
export let protocolPackage: Package
export let streamsGrpc: typeof streamsGrpcT
export let streams: typeof streamsT
export let persistentGrpc: typeof persistentGrpcT
export let persistent: typeof persistentT
export let featuresGrpc: typeof featuresGrpcT
export let features: typeof featuresT
export let shared: typeof sharedT
export let status: typeof statusT
/** `google.protobuf.Any`, from the copy of google-protobuf the generated code uses. */
export let any: typeof Any

let loaded = false

/** Loads the chosen package's generated code (once per process); the server calls it before it serves. */
export const load = (): void => {
  if (loaded) return
  const pkg = choosePackage()
  const fromPackage = createRequire(createRequire(import.meta.url).resolve(pkg))
  const file = (name: string, grpc: boolean): unknown => {
    const suffix = grpc ? "_grpc_pb.js" : "_pb.js"
    return pkg === "@kurrent/kurrentdb-client"
      ? fromPackage(`../generated/kurrentdb/protocols/v1/${name === "persistent" ? "persistentsubscriptions" : name}${suffix}`)
      : fromPackage(`../generated/${name}${suffix}`)
  }
  streamsGrpc = file("streams", true) as typeof streamsGrpcT
  streams = file("streams", false) as typeof streamsT
  persistentGrpc = file("persistent", true) as typeof persistentGrpcT
  persistent = file("persistent", false) as typeof persistentT
  featuresGrpc = file("serverfeatures", true) as typeof featuresGrpcT
  features = file("serverfeatures", false) as typeof featuresT
  shared = file("shared", false) as typeof sharedT
  status = file("status", false) as typeof statusT
  any = fromPackage("google-protobuf/google/protobuf/any_pb.js") as typeof Any
  protocolPackage = pkg
  loaded = true
}
