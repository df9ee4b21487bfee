/**
 * The protocol: service definitions and messages generated inside the official
 * client packages. The generated code registers its classes on one global
 * protobuf namespace, and the two packages' definitions differ (KurrentDB
 * renamed fields), so a process must use one package's code throughout: the
 * server takes the package the process's clients use — `@kurrent/kurrentdb-client`
 * when `EVENTSTORE_CLIENT=kurrentdb`, else `@eventstore/db-client` — read once,
 * when this module loads.
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

/** Which client package's generated code this process uses. */
export const protocolPackage: "@eventstore/db-client" | "@kurrent/kurrentdb-client" =
  process.env.EVENTSTORE_CLIENT === "kurrentdb" ? "@kurrent/kurrentdb-client" : "@eventstore/db-client"

const here = createRequire(import.meta.url)
/** Requires from inside the chosen client package (its generated code and its copy of google-protobuf). */
const fromPackage = createRequire(here.resolve(protocolPackage))
const generated = (name: string): unknown =>
  protocolPackage === "@kurrent/kurrentdb-client"
    ? fromPackage(`../generated/kurrentdb/protocols/v1/${name === "persistent" ? "persistentsubscriptions" : name}_pb.js`)
    : fromPackage(`../generated/${name}_pb.js`)
const generatedGrpc = (name: string): unknown =>
  protocolPackage === "@kurrent/kurrentdb-client"
    ? fromPackage(`../generated/kurrentdb/protocols/v1/${name === "persistent" ? "persistentsubscriptions" : name}_grpc_pb.js`)
    : fromPackage(`../generated/${name}_grpc_pb.js`)

// Both packages generate the same messages and services (typed here by the 6.x client's declarations).
const streamsGrpc = generatedGrpc("streams") as typeof streamsGrpcT
const streams = generated("streams") as typeof streamsT
const persistentGrpc = generatedGrpc("persistent") as typeof persistentGrpcT
const persistent = generated("persistent") as typeof persistentT
const featuresGrpc = generatedGrpc("serverfeatures") as typeof featuresGrpcT
const features = generated("serverfeatures") as typeof featuresT
const shared = generated("shared") as typeof sharedT
const status = generated("status") as typeof statusT
/** `google.protobuf.Any`, from the copy of google-protobuf the generated code uses. */
const any = fromPackage("google-protobuf/google/protobuf/any_pb.js") as typeof Any

export { any, features, featuresGrpc, persistent, persistentGrpc, shared, status, streams, streamsGrpc }
