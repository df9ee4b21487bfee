/**
 * The official EventStoreDB client package this test process uses, for the
 * tests' own appends and checks: `@kurrent/kurrentdb-client` when
 * `EVENTSTORE_CLIENT=kurrentdb`, else `@eventstore/db-client`. One package per
 * process, because their generated protobuf code shares one global namespace
 * (the embedded server follows the same variable). The two have the same API
 * for what the tests use; they are typed here as the 6.x client.
 */
import type * as Esdb from "@eventstore/db-client"

export const clientKind: "esdb" | "kurrentdb" = process.env.EVENTSTORE_CLIENT === "kurrentdb" ? "kurrentdb" : "esdb"

/** The package's exports (the KurrentDB client seen through the 6.x client's types). */
const pkg: typeof Esdb = clientKind === "kurrentdb"
  ? (await import("@kurrent/kurrentdb-client")) as unknown as typeof Esdb
  : await import("@eventstore/db-client")

/** `EventStoreDBClient` or `KurrentDBClient`. */
export const Client: typeof Esdb.EventStoreDBClient = clientKind === "kurrentdb"
  ? (pkg as unknown as { KurrentDBClient: typeof Esdb.EventStoreDBClient }).KurrentDBClient
  : pkg.EventStoreDBClient

export const { binaryEvent, jsonEvent, persistentSubscriptionToStreamSettingsFromDefaults } = pkg

/** The whole package, for suites that use more of it (error classes, constants, filters). */
export const clientPackage: typeof Esdb = pkg

/**
 * An append / delete expectation in the package's own option: `expectedRevision`
 * (6.x) or `streamState` (KurrentDB).
 */
export const expecting = <R extends bigint | "any" | "no_stream" | "stream_exists">(revision: R): { expectedRevision: R } =>
  (clientKind === "kurrentdb" ? { streamState: revision } : { expectedRevision: revision }) as { expectedRevision: R }
