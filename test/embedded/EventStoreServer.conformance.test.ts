/** The embedded EventStoreDB conformance suite (EventStoreServer.conformance.suite.ts) through `@eventstore/db-client`. */
import "./EventStoreServer.conformance.suite.js"
