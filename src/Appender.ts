/**
 * Appending events, for applications, examples and tests that write the
 * events a projection reads: through the same client the event source uses,
 * chosen the same way (`kurrentdb://` → `@kurrent/kurrentdb-client`, else
 * `@eventstore/db-client`; or `client`), so an app never imports a client
 * package itself and runs with either connection string. Each package is
 * loaded only when chosen (the two cannot share a process).
 *
 * @since 0.1.0
 */
import { Context, Data, Effect, Layer, Redacted } from "effect"
import type { AppendResult, ClientKind, NewEvent, StoreClient } from "./internal/eventStoreClient.js"
import { ClientPackageConflict, esdb, kindOf, kurrentdb } from "./internal/eventStoreClient.js"

/** An event to append. @since 0.1.0 */
export type { NewEvent }

/**
 * An append failed, or the client could not be made (an invalid connection
 * string, never quoted: it may hold credentials).
 *
 * @since 0.1.0
 */
export class AppendError extends Data.TaggedError("AppendError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/**
 * What an append reports: the stream, the revision of its last event, and its
 * `$all` position when the server says — what `App.awaitPosition` and
 * `App.awaitDocument` take.
 *
 * @since 0.1.0
 */
export interface Appended {
  readonly streamId: string
  readonly revision: bigint
  readonly position?: { readonly commit: bigint; readonly prepare: bigint } | undefined
}

/**
 * Appends events to EventStoreDB / KurrentDB.
 *
 * @since 0.1.0
 */
export class Appender extends Context.Tag("effect-reconciler/Appender")<Appender, {
  /** Appends `events` to `stream` in one write (all or none), whatever the stream's state. */
  readonly append: (stream: string, events: ReadonlyArray<NewEvent>) => Effect.Effect<Appended, AppendError>
}>() {}

/** Options of {@link layer}. @since 0.1.0 */
export interface Options {
  readonly connectionString: Redacted.Redacted<string>
  /** Default: by the connection string's scheme, as the event source chooses. */
  readonly client?: ClientKind | undefined
}

const toAppended = (stream: string, result: AppendResult): Appended => ({
  streamId: stream,
  revision: result.nextExpectedRevision,
  position: result.position
})

/**
 * An {@link Appender} with a client of its own, disposed with the layer's scope.
 *
 * @since 0.1.0
 */
export const layer = (options: Options): Layer.Layer<Appender, AppendError> =>
  Layer.scoped(
    Appender,
    Effect.gen(function*() {
      const connectionString = Redacted.value(options.connectionString)
      const kind = options.client ?? kindOf(connectionString)
      const client: StoreClient = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: () => (kind === "kurrentdb" ? kurrentdb(connectionString) : esdb(connectionString)),
          catch: (cause) =>
            cause instanceof ClientPackageConflict
              ? new AppendError({ message: cause.message })
              : new AppendError({ message: "invalid EventStoreDB connection string" })
        }),
        (client) => Effect.promise(() => client.dispose().catch(() => undefined))
      )
      return Appender.of({
        append: (stream, events) =>
          Effect.tryPromise({
            try: () => client.appendToStream(stream, events),
            catch: (cause) =>
              new AppendError({ message: `appending ${events.length} event(s) to ${stream}: ${describe(cause)}`, cause })
          }).pipe(Effect.map((result) => toAppended(stream, result)), Effect.withSpan("Appender.append", { attributes: { stream } }))
      })
    })
  )

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))
