/**
 * effect-reconciler: MongoDB read models kept reconciled with EventStoreDB events.
 *
 * The embedded servers live in `effect-reconciler/embedded`, the projection
 * test kit in `effect-reconciler/testing`.
 *
 * @since 0.1.0
 */
export * as App from "./App.js"
export * as Appender from "./Appender.js"
export * as EventSource from "./EventSource.js"
export * as EventStoreDB from "./EventStoreDB.js"
export * as InMemory from "./InMemory.js"
export * as Logging from "./Logging.js"
export * as Monitor from "./Monitor.js"
export * as MongoReadModelStore from "./MongoReadModelStore.js"
export * as Projection from "./Projection.js"
export * as ReadModels from "./ReadModels.js"
export * as ReadModelStore from "./ReadModelStore.js"
export * as Rebuild from "./Rebuild.js"
export * as Reconciler from "./Reconciler.js"
export * as Telemetry from "./Telemetry.js"
export * as Verify from "./Verify.js"
