/**
 * The EventStoreDB event source suite (EventStoreDB.suite.ts) through
 * `@kurrent/kurrentdb-client`: this process (server, source and the tests' own
 * client) uses the KurrentDB client's protocol code throughout.
 */
import { vi } from "vitest"

vi.hoisted(() => {
  process.env.EVENTSTORE_CLIENT = "kurrentdb"
})

await import("./EventStoreDB.suite.js")
