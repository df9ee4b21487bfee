/** The EventStoreDB event source suite (EventStoreDB.suite.ts) through `@eventstore/db-client`. */
import "./EventStoreDB.suite.js"
