/**
 * An embedded, in-memory MongoDB server speaking the wire protocol, for
 * development and tests. It presents itself as a single-node replica set, so the
 * official driver allows sessions and transactions with
 * `mongodb://127.0.0.1:PORT/?directConnection=true`.
 *
 * Query, update and aggregation semantics come from mingo; `_id` lookups use an
 * index; unique indexes are enforced; transactions have snapshot isolation and
 * roll back on abort. See docs/embedded-mongo.md for the known differences from a
 * real MongoDB.
 *
 * @since 0.1.0
 */
import { Context, Data, Effect, Layer } from "effect"
import { DEFAULT_TRANSACTION_LIFETIME_SECONDS, Engine } from "./mongo/Commands.js"
import * as Journal from "./mongo/Journal.js"
import { WireServer } from "./mongo/Server.js"

/** @since 0.1.0 */
export interface Options {
  /** Port on 127.0.0.1; `0` (the default) picks a free one. */
  readonly port?: number | undefined
  readonly host?: string | undefined
  /** Keep the data in this directory (journal replayed on start). In memory only when absent. */
  readonly dataDir?: string | undefined
  /** Flush the journal to disk on every commit (only with `dataDir`). */
  readonly fsync?: boolean | undefined
  /** The replica set name announced in hello (default `rs0`). */
  readonly replicaSet?: string | undefined
  /**
   * Transactions open longer are aborted, releasing what they hold (MongoDB's
   * `transactionLifetimeLimitSeconds`, default 60): how long a crashed client's
   * transaction keeps its documents locked.
   */
  readonly transactionLifetimeLimitSeconds?: number | undefined
}

/** A running embedded server: the bound port and a connection string for the driver. @since 0.1.0 */
export interface RunningServer {
  readonly port: number
  readonly uri: string
}

/** The server could not start (port taken, unreadable data directory). @since 0.1.0 */
export class MongoServerError extends Data.TaggedError("MongoServerError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** The running embedded server, provided by {@link layer}. @since 0.1.0 */
export class MongoServer extends Context.Tag("effect-reconciler/embedded/MongoServer")<MongoServer, RunningServer>() {}

/**
 * Starts the server in the current scope; closing the scope closes every
 * connection, ends open transactions (uncommitted data is discarded) and the journal.
 *
 * @since 0.1.0
 */
export const make = Effect.fn("MongoServer.make")(function* (options: Options = {}) {
  const host = options.host ?? "127.0.0.1"
  const engine = new Engine({
    setName: options.replicaSet ?? "rs0",
    transactionLifetimeMs: (options.transactionLifetimeLimitSeconds ?? DEFAULT_TRANSACTION_LIFETIME_SECONDS) * 1000
  })
  const journal = yield* Effect.acquireRelease(
    Effect.try({
      try: () => (options.dataDir === undefined ? undefined : Journal.open(engine.storage, options.dataDir, { fsync: options.fsync === true })),
      catch: (cause) => new MongoServerError({ message: `cannot open data directory ${options.dataDir}`, cause })
    }),
    (journal) => Effect.sync(() => journal?.close())
  )
  void journal
  const server = new WireServer(engine)
  const port = yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: () => server.listen(options.port ?? 0, host),
      catch: (cause) => new MongoServerError({ message: `cannot listen on ${host}:${options.port ?? 0}`, cause })
    }),
    () => Effect.promise(() => server.close()).pipe(Effect.andThen(Effect.sync(() => engine.clear())))
  )
  engine.host = `${host}:${port}`
  return { port, uri: `mongodb://${host}:${port}/?directConnection=true` } satisfies RunningServer
})

/** The server as a layer: started when the layer is built, stopped when its scope closes. @since 0.1.0 */
export const layer = (options: Options = {}): Layer.Layer<MongoServer, MongoServerError> =>
  Layer.scoped(MongoServer, make(options))
