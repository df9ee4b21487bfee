/**
 * The protocol: service definitions and messages generated inside
 * `@eventstore/db-client`. Imported from the client package so that a server
 * and a client in one process share one copy of the global protobuf registry.
 *
 * Internal to the embedded server.
 */
import streamsGrpc from "@eventstore/db-client/generated/streams_grpc_pb.js"
import streams from "@eventstore/db-client/generated/streams_pb.js"
import persistentGrpc from "@eventstore/db-client/generated/persistent_grpc_pb.js"
import persistent from "@eventstore/db-client/generated/persistent_pb.js"
import featuresGrpc from "@eventstore/db-client/generated/serverfeatures_grpc_pb.js"
import features from "@eventstore/db-client/generated/serverfeatures_pb.js"
import shared from "@eventstore/db-client/generated/shared_pb.js"
import status from "@eventstore/db-client/generated/status_pb.js"
import { createRequire } from "node:module"

/**
 * `google.protobuf.Any`, from the copy of google-protobuf the client's
 * generated code uses (resolved from the client package, not ours).
 */
const clientRequire = createRequire(createRequire(import.meta.url).resolve("@eventstore/db-client"))
const any = clientRequire("google-protobuf/google/protobuf/any_pb.js") as typeof import("google-protobuf/google/protobuf/any_pb.js")

export { any, features, featuresGrpc, persistent, persistentGrpc, shared, status, streams, streamsGrpc }
