/**
 * An embedded, in-memory EventStoreDB-protocol server for development and
 * tests: the unmodified `@eventstore/db-client` and `@kurrent/kurrentdb-client`
 * work against it with `esdb://` or `kurrentdb://127.0.0.1:<port>?tls=false`.
 * It serves streams (append and `BatchAppend`, read, catch-up subscriptions,
 * delete, tombstone), `$ce-<category>` links, KurrentDB 25.1's `$idx-ce-` and
 * `$idx-et-` secondary indexes, and persistent subscriptions (to streams and
 * `$all`); optionally it journals to a data directory, and then hands out only
 * what is in the journal. Where it differs from a real server, the real server
 * is right (see docs/embedded-eventstore.md).
 *
 * @since 0.1.0
 */
import { Context, Data, Effect, Layer } from "effect"
import { start } from "./eventstore/Server.js"

/** @since 0.1.0 */
export interface Options {
  /** Port to listen on; `0` (the default) picks a free one. */
  readonly port?: number | undefined
  /** Interface to bind, `127.0.0.1` by default. */
  readonly host?: string | undefined
  /** Directory for the append-only journal; in memory only when absent. */
  readonly dataDir?: string | undefined
  /** Largest append in bytes, refused beyond as a real server's `MaxAppendSize` (1 MiB by default). */
  readonly maxAppendSize?: number | undefined
  /**
   * Whether `BatchAppend` is implemented and advertised, as on real servers
   * since 21.10 (the default); `false` serves a server without it, whose
   * clients append over `Streams/Append`.
   */
  readonly batchAppend?: boolean | undefined
  /**
   * Whether it is a KurrentDB 25.1 with the `$idx-ce-` / `$idx-et-` secondary
   * indexes (the default, reported as version 25.1.0), or an older server
   * without them (reported as 24.10.0; `$idx-` filters are plain prefixes).
   */
  readonly secondaryIndexes?: boolean | undefined
}

/**
 * A running embedded server.
 *
 * @since 0.1.0
 */
export interface EventStoreServer {
  /** The bound port. */
  readonly port: number
  /** `esdb://<host>:<port>?tls=false`, ready for `EventStoreDBClient.connectionString`. */
  readonly connectionString: string
  /** `kurrentdb://<host>:<port>?tls=false`, ready for `KurrentDBClient.connectionString`. */
  readonly kurrentConnectionString: string
}

/**
 * The server could not start (port taken, unreadable data directory).
 *
 * @since 0.1.0
 */
export class EventStoreServerError extends Data.TaggedError("EventStoreServerError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/**
 * The running embedded server, as a service.
 *
 * @since 0.1.0
 */
export class EventStoreServerTag extends Context.Tag("effect-reconciler/embedded/EventStoreServer")<
  EventStoreServerTag,
  EventStoreServer
>() {}

/**
 * Starts the server; it listens until the scope closes, then ends its open
 * calls with `UNAVAILABLE` (as clients of a stopping real server see it),
 * checkpoints its consumer groups, closes the journal and releases the port
 * (no handles left open).
 *
 * @since 0.1.0
 */
export const make = Effect.fn("EventStoreServer.make")(function*(options: Options = {}) {
  const running = yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: () => start(options),
      catch: (cause) => new EventStoreServerError({ message: `Cannot start the embedded EventStoreDB server: ${String(cause)}`, cause })
    }),
    (r) => Effect.promise(() => r.close())
  )
  yield* Effect.annotateCurrentSpan("port", running.port)
  return {
    port: running.port,
    connectionString: `esdb://${running.host}:${running.port}?tls=false`,
    kurrentConnectionString: `kurrentdb://${running.host}:${running.port}?tls=false`
  } satisfies EventStoreServer
})

/**
 * The server as a scoped layer: acquire = listen, release = shut down.
 *
 * @since 0.1.0
 */
export const layer = (options: Options = {}): Layer.Layer<EventStoreServerTag, EventStoreServerError> =>
  Layer.scoped(EventStoreServerTag, make(options))
