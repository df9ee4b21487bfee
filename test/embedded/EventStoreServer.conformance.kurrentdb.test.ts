/**
 * The embedded EventStoreDB conformance suite (EventStoreServer.conformance.suite.ts)
 * through `@kurrent/kurrentdb-client`: server and client in this process use the
 * KurrentDB client's protocol code.
 */
import { vi } from "vitest"

vi.hoisted(() => {
  process.env.EVENTSTORE_CLIENT = "kurrentdb"
})

await import("./EventStoreServer.conformance.suite.js")
