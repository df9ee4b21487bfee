/**
 * effect-reconciler: MongoDB read models kept reconciled with EventStoreDB events.
 *
 * @since 0.1.0
 */
export * as App from "./App.js"
export * as EventSource from "./EventSource.js"
export * as EventStoreDB from "./EventStoreDB.js"
export * as EventStoreServer from "./embedded/EventStoreServer.js"
export * as InMemory from "./InMemory.js"
export * as Logging from "./Logging.js"
export * as Monitor from "./Monitor.js"
export * as MongoReadModelStore from "./MongoReadModelStore.js"
export * as MongoServer from "./embedded/MongoServer.js"
export * as Projection from "./Projection.js"
export * as ReadModelStore from "./ReadModelStore.js"
export * as Reconciler from "./Reconciler.js"
export * as Telemetry from "./Telemetry.js"
