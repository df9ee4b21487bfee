/**
 * effect-reconciler/embedded: the in-memory EventStoreDB (gRPC) and MongoDB
 * (wire protocol) servers, for development, tests and demos — never for
 * production. The official clients talk to them unchanged. A separate entry
 * point so that applications importing the library never load them.
 *
 * @since 0.1.0
 */
export * as EventStoreServer from "./embedded/EventStoreServer.js"
export * as MongoServer from "./embedded/MongoServer.js"
