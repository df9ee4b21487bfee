/**
 * Composing the service: where the events and the read models live (from
 * `Config`, with the embedded servers standing in when asked), the EventSource
 * and ReadModelStore layers over them, and the projections running until the
 * process is told to stop.
 *
 * ```
 * Endpoints (connection strings, or embedded servers started in its scope)
 *   └─ EventSource (EventStoreDB client) + ReadModelStore (MongoClient)
 *        └─ Reconciler.runAll(projections, settings)
 * ```
 *
 * Layer scopes close in reverse: the engine drains first, then the clients
 * close, then the embedded servers (if any) stop.
 *
 * Every setting comes from the environment (see {@link settings} and
 * {@link endpointsConfig}); connection strings are `Config.redacted` and are
 * never logged.
 *
 * @since 0.1.0
 */
import * as path from "node:path"
import { Config, ConfigError, Console, Context, Data, Duration, Effect, Fiber, Layer, Option, Redacted, Schedule, Stream } from "effect"
import type * as EventStoreServer from "./embedded/EventStoreServer.js"
import type * as MongoServer from "./embedded/MongoServer.js"
import * as EmbeddedProcess from "./internal/embeddedProcess.js"
import { EventSource as EventSourceTag } from "./EventSource.js"
import type { EventSource, EventSourceError, GroupStatus } from "./EventSource.js"
import * as EventStoreDB from "./EventStoreDB.js"
import type * as HttpEndpointModule from "./HttpEndpoint.js"
import * as Monitor from "./Monitor.js"
import * as Telemetry from "./Telemetry.js"
import * as MongoReadModelStore from "./MongoReadModelStore.js"
import { checkpointId, decoder } from "./Projection.js"
import type { Projection, Runnable } from "./Projection.js"
import { ReadModelStore as ReadModelStoreTag } from "./ReadModelStore.js"
import type { ReadModelStore, StoreError } from "./ReadModelStore.js"
import * as ReadModels from "./ReadModels.js"
import * as Verify from "./Verify.js"
import * as Reconciler from "./Reconciler.js"
import * as ConnectionString from "./internal/connectionString.js"

// ---- endpoints ----------------------------------------------------------------

/**
 * Where the service finds EventStoreDB and MongoDB. `embedded` says that the
 * server is the in-process stand-in, started by {@link endpointsLayer}.
 *
 * @since 0.1.0
 */
export class Endpoints extends Context.Tag("effect-reconciler/App/Endpoints")<Endpoints, {
  readonly eventStore: { readonly connectionString: Redacted.Redacted<string>; readonly embedded: boolean }
  readonly mongo: { readonly uri: Redacted.Redacted<string>; readonly database: string; readonly embedded: boolean }
}>() {}

/**
 * The endpoint settings:
 * `EVENTSTORE_CONNECTION_STRING`, `MONGODB_URI` (both redacted, optional when
 * `RECONCILER_EMBEDDED` is true), `MONGODB_DATABASE` (default `read_models`),
 * `RECONCILER_EMBEDDED` (default false), `RECONCILER_DATA_DIR` (journal of the
 * embedded servers; in memory when absent). A connection string that is set is
 * parsed with its client's parser: a malformed one is `InvalidData` naming the
 * variable (never quoting the value).
 *
 * @since 0.1.0
 */
export const endpointsConfig = Config.all({
  // Parsed (not connected) here, so that a malformed one fails before anything starts.
  eventStore: Config.option(ConnectionString.checked("EVENTSTORE_CONNECTION_STRING", ConnectionString.eventStoreProblem)),
  mongo: Config.option(ConnectionString.checked("MONGODB_URI", ConnectionString.mongoProblem)),
  database: Config.string("MONGODB_DATABASE").pipe(Config.withDefault("read_models")),
  embedded: Config.boolean("RECONCILER_EMBEDDED").pipe(Config.withDefault(false)),
  dataDir: Config.option(Config.string("RECONCILER_DATA_DIR"))
})

/** An embedded server could not start (or its child process could not). @since 0.1.0 */
export type EmbeddedServerError =
  | EventStoreServer.EventStoreServerError
  | MongoServer.MongoServerError
  | EmbeddedProcess.EmbeddedProcessError

/**
 * The endpoints from {@link endpointsConfig}. A connection string that is set is
 * always used; one that is missing is replaced by an embedded server started in
 * this layer's scope when embedded servers are allowed (`RECONCILER_EMBEDDED`,
 * or `embedded: true` here), and is a configuration error otherwise. The
 * embedded servers run in a child process (off the engine's thread) that stops
 * with this layer's scope, or with this process.
 *
 * @since 0.1.0
 */
export const endpointsLayer = (
  options: { readonly embedded?: boolean | undefined } = {}
): Layer.Layer<Endpoints, ConfigError.ConfigError | EmbeddedServerError> =>
  Layer.scoped(
    Endpoints,
    Effect.gen(function*() {
      const config = yield* endpointsConfig
      const embedded = options.embedded ?? config.embedded
      const dataDir = (name: string) => Option.getOrUndefined(Option.map(config.dataDir, (dir) => path.join(dir, name)))
      const missing = (name: string) =>
        ConfigError.MissingData([name], `Expected ${name} to be set (or RECONCILER_EMBEDDED=true to run the embedded servers)`)
      const wanted = {
        eventStore: Option.isNone(config.eventStore) && embedded,
        mongo: Option.isNone(config.mongo) && embedded
      }
      // The embedded servers run in a child process, off the engine's thread.
      const servers = wanted.eventStore || wanted.mongo
        ? yield* EmbeddedProcess.make({
          eventStore: wanted.eventStore ? { dataDir: dataDir("eventstore") } : undefined,
          mongo: wanted.mongo ? { dataDir: dataDir("mongo") } : undefined
        })
        : undefined
      const eventStore = Option.isSome(config.eventStore)
        ? { connectionString: config.eventStore.value, embedded: false }
        : servers?.eventStore !== undefined
        ? { connectionString: Redacted.make(servers.eventStore), embedded: true }
        : yield* Effect.fail(missing("EVENTSTORE_CONNECTION_STRING"))
      const mongo = Option.isSome(config.mongo)
        ? { uri: config.mongo.value, database: config.database, embedded: false }
        : servers?.mongo !== undefined
        ? { uri: Redacted.make(servers.mongo), database: config.database, embedded: true }
        : yield* Effect.fail(missing("MONGODB_URI"))
      return { eventStore, mongo }
    })
  )

/**
 * The EventStoreDB event source and the MongoDB store over the {@link Endpoints}.
 *
 * @since 0.1.0
 */
export const portsLayer: Layer.Layer<EventSource | ReadModelStore, EventSourceError | StoreError, Endpoints> = Layer
  .unwrapEffect(
    Effect.map(Endpoints, (endpoints) =>
      Layer.merge(
        EventStoreDB.layer({ connectionString: endpoints.eventStore.connectionString }),
        MongoReadModelStore.layer({ uri: endpoints.mongo.uri, database: endpoints.mongo.database })
      ))
  )

/**
 * Everything a projection needs to run, from configuration: the endpoints and
 * the ports over them. Every setting ({@link endpointsConfig}, {@link settings})
 * is read and checked first: a bad one fails the layer before any server
 * starts or any client connects.
 *
 * @since 0.1.0
 */
export const layer = (
  options: { readonly embedded?: boolean | undefined } = {}
): Layer.Layer<
  EventSource | ReadModelStore | Endpoints,
  ConfigError.ConfigError | EmbeddedServerError | EventSourceError | StoreError
> =>
  Layer.unwrapEffect(
    Effect.as(checkConfig, portsLayer.pipe(Layer.provideMerge(endpointsLayer(options))))
  )

// ---- engine settings ---------------------------------------------------------

const positiveInt = (name: string, fallback: number) =>
  Config.integer(name).pipe(
    Config.validate({ message: "Expected a positive integer", validation: (n) => n >= 1 }),
    Config.withDefault(fallback)
  )

/**
 * The engine's settings (see {@link Reconciler.RunOptions}):
 * `RECONCILER_MODE` (`catch-up` | `persistent`, default `catch-up`),
 * `RECONCILER_LANES` (4), `RECONCILER_BATCH_SIZE` (500), `RECONCILER_LANE_BUFFER` (2 × batch size),
 * `RECONCILER_DRAIN_TIMEOUT` (10 seconds), `RECONCILER_COMMIT_INTERVAL` (1 second),
 * `RECONCILER_GROUP` (persistent mode: the consumer group; default per projection).
 *
 * @since 0.1.0
 */
export const settings: Config.Config<Reconciler.RunOptions> = Config.all({
  mode: Config.literal("catch-up", "persistent")("RECONCILER_MODE").pipe(Config.withDefault("catch-up" as const)),
  lanes: positiveInt("RECONCILER_LANES", 4),
  batchSize: positiveInt("RECONCILER_BATCH_SIZE", 500),
  // Unset: the engine's default (twice the batch size, also when --batch-size overrides it).
  laneBuffer: Config.option(
    Config.integer("RECONCILER_LANE_BUFFER").pipe(
      Config.validate({ message: "Expected a positive integer", validation: (n) => n >= 1 })
    )
  ).pipe(Config.map(Option.getOrUndefined)),
  drainTimeout: Config.duration("RECONCILER_DRAIN_TIMEOUT").pipe(Config.withDefault(Duration.seconds(10))),
  commitInterval: Config.duration("RECONCILER_COMMIT_INTERVAL").pipe(Config.withDefault(Duration.seconds(1))),
  group: Config.option(Config.string("RECONCILER_GROUP")).pipe(Config.map(Option.getOrUndefined))
})

/**
 * Reads and checks every setting of the service without starting or connecting
 * anything: fails with the `ConfigError` naming the first bad variable.
 *
 * @since 0.1.0
 */
export const checkConfig: Effect.Effect<void, ConfigError.ConfigError> = Effect.asVoid(
  Effect.all([endpointsConfig, settings])
)

/** A description of where the service runs, safe to log (no connection strings). @since 0.1.0 */
export const describeEndpoints = (endpoints: Endpoints["Type"]): string =>
  `EventStoreDB ${endpoints.eventStore.embedded ? "embedded" : "from EVENTSTORE_CONNECTION_STRING"}, ` +
  `MongoDB ${endpoints.mongo.embedded ? "embedded" : "from MONGODB_URI"} (database ${endpoints.mongo.database})`

/**
 * How the service is operated (see {@link operationSettings}).
 *
 * @since 0.1.0
 */
export interface OperationOptions {
  /** Serve `/metrics`, `/healthz`, `/readyz` and `/status` on this port (0 picks one); off when undefined. */
  readonly httpPort?: number | undefined
  /** The interface the endpoint listens on. Default `0.0.0.0`. */
  readonly httpHost?: string | undefined
  /** `/readyz` is ready while every projection is at most this many positions behind the head. Default 100. */
  readonly readyDistance?: number | undefined
  /** How often the heads are read and liveness judged. Default 1 s. */
  readonly livenessInterval?: Duration.DurationInput | undefined
  /** Behind the head and not moving this long is a stall (the engine's watchdog uses it too). Default 30 s. */
  readonly stallAfter?: Duration.DurationInput | undefined
}

/**
 * The operation settings: `RECONCILER_HTTP_PORT` (off when unset; 0 picks a
 * port), `RECONCILER_HTTP_HOST` (`0.0.0.0`), `RECONCILER_READY_DISTANCE` (100),
 * `RECONCILER_LIVENESS_INTERVAL` (1 second), `RECONCILER_STALL_AFTER` (30 seconds).
 *
 * @since 0.1.0
 */
export const operationSettings: Config.Config<OperationOptions> = Config.all({
  httpPort: Config.option(
    Config.integer("RECONCILER_HTTP_PORT").pipe(
      Config.validate({ message: "Expected a port (0-65535)", validation: (n) => n >= 0 && n <= 65535 })
    )
  ).pipe(Config.map(Option.getOrUndefined)),
  httpHost: Config.string("RECONCILER_HTTP_HOST").pipe(Config.withDefault("0.0.0.0")),
  readyDistance: Config.integer("RECONCILER_READY_DISTANCE").pipe(
    Config.validate({ message: "Expected a whole number of positions, at least 0", validation: (n) => n >= 0 }),
    Config.withDefault(100)
  ),
  livenessInterval: Config.duration("RECONCILER_LIVENESS_INTERVAL").pipe(Config.withDefault(Duration.seconds(1))),
  stallAfter: Config.duration("RECONCILER_STALL_AFTER").pipe(Config.withDefault(Duration.seconds(30)))
})

/**
 * Runs the projections and handlers with the {@link settings} and
 * {@link operationSettings} from configuration (`overrides` win), each with its
 * own subscription and checkpoint, until interrupted — then drains, commits and
 * nacks the rest.
 *
 * While they run, a {@link Monitor} judges each against the head of its
 * source and restarts a stalled one (it drains and resumes from its
 * checkpoint); dead-lettered and parked events are logged as warnings; and
 * with an HTTP port the endpoint of {@link HttpEndpoint} serves metrics,
 * health, readiness and status (its URL is logged and printed).
 *
 * @since 0.1.0
 */
export const run = Effect.fn("App.run")(function*(
  runnables: ReadonlyArray<Runnable>,
  overrides: Reconciler.RunOptions & OperationOptions = {}
) {
  const { httpHost, httpPort, livenessInterval, readyDistance, ...engine } = {
    ...(yield* settings),
    ...(yield* operationSettings),
    ...definedOnly(overrides)
  }
  const options: Reconciler.RunOptions = engine
  const endpoints = yield* Effect.serviceOption(Endpoints)
  yield* Effect.logInfo(
    `reconciling ${runnables.map((r) => r.name).join(", ")} (${options.mode}, ${options.lanes} lanes, batch ${options.batchSize})` +
      Option.match(endpoints, { onNone: () => "", onSome: (e) => `; ${describeEndpoints(e)}` })
  )
  // Each version writes its own collection; a version that would write another's is refused.
  const resolved = yield* ReadModels.resolve(runnables)
  const sampling = yield* Verify.sampleConfig
  // One consumer group for several projections is refused by the engine as it is.
  if (options.group !== undefined && resolved.length > 1) return yield* Reconciler.runAll(resolved, options)
  yield* Effect.scoped(Effect.gen(function*() {
    const monitor = yield* Monitor.make(resolved, {
      mode: options.mode ?? "catch-up",
      group: options.group,
      stallAfter: options.stallAfter,
      interval: livenessInterval,
      readyDistance
    })
    if (httpPort !== undefined) {
      // Loaded only when served (the HTTP server modules take a while to load).
      const HttpEndpoint: typeof HttpEndpointModule = yield* Effect.promise(() => import("./HttpEndpoint.js"))
      const metrics = yield* Layer.build(Telemetry.prometheusLayer()).pipe(Effect.map(Context.get(Telemetry.PrometheusMetrics)))
      const url = yield* HttpEndpoint.serve({ port: httpPort, host: httpHost }, monitor, metrics)
      yield* Effect.logInfo(`http endpoint listening on ${url}`)
      yield* Console.log(`http endpoint listening on ${url} (/metrics /healthz /readyz /status)`)
    }
    const projections = resolved.filter((r): r is Projection<any, any> => r._tag === "Projection")
    if (sampling.size > 0 && projections.length > 0) yield* Effect.forkScoped(Verify.sample(projections, sampling))
    // Run together as the engine groups them (projections over the same categories share one
    // subscription): a stall restarts the group's run. The engine logs dead letters and parks itself.
    yield* Effect.forEach(
      runTogether(resolved, options.mode ?? "catch-up"),
      (group) => monitor.supervise(group, (onProgress) => Reconciler.runAll(group, { ...options, onProgress })),
      { concurrency: "unbounded", discard: true }
    )
  })).pipe(
    Effect.onInterrupt(() => Effect.logInfo("stopped; checkpoints committed"))
  )
})

/** Catch-up runnables over the same categories (which the engine serves with one subscription); persistent ones alone. */
const runTogether = (runnables: ReadonlyArray<Runnable>, mode: "catch-up" | "persistent") => {
  if (mode !== "catch-up") return runnables.map((r) => [r])
  const byCategories = new Map<string, Array<Runnable>>()
  for (const runnable of runnables) {
    const key = JSON.stringify([...new Set(runnable.categories)].sort())
    byCategories.set(key, [...(byCategories.get(key) ?? []), runnable])
  }
  return [...byCategories.values()]
}

const definedOnly = <A extends object>(options: A): A =>
  Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as A

// ---- observing ----------------------------------------------------------------

/** How far a checkpoint is behind a head (0 when it has reached it), in positions of its subscription. */
export const behind = (checkpoint: bigint, head: bigint): bigint => (checkpoint >= head ? 0n : head - checkpoint)

/**
 * Where a catch-up projection stands: its committed checkpoint, the head of its
 * categories, how far behind it is (in positions of its subscription: `$ce`
 * link revisions for one category, commit positions for several), and how many
 * events it dead-lettered.
 *
 * @since 0.1.0
 */
export interface ProjectionStatus {
  readonly projection: string
  readonly checkpoint: Option.Option<bigint>
  readonly head: Option.Option<bigint>
  /** Catch-up: positions behind the head. Persistent: the group's events not acknowledged yet. */
  readonly lag: bigint
  readonly deadLetters: number
  /** Persistent mode: ranges of streams' events found gone and skipped by decision. */
  readonly gaps: number
  /** Persistent mode: the consumer group as the server reports it (none when it does not exist). */
  readonly group?: Option.Option<GroupStatus & { readonly name: string }>
}

/** Where the projections run: the mode and group of {@link settings} unless given. */
const modeOf = (options: { readonly mode?: Reconciler.RunOptions["mode"]; readonly group?: string | undefined }) =>
  Effect.map(settings, (s) => ({ mode: options.mode ?? s.mode ?? "catch-up", group: options.group ?? s.group }))

/** A persistent projection's consumer group, from the server (none when the source cannot tell). */
const groupOf = (source: EventSource["Type"], runnable: Runnable, group: string | undefined) =>
  source.groupStatus === undefined
    ? Effect.succeed(Option.none<GroupStatus & { readonly name: string }>())
    : Effect.map(
      source.groupStatus(runnable.categories, group ?? checkpointId(runnable)),
      Option.map((status) => ({ name: group ?? checkpointId(runnable), ...status }))
    )

/**
 * The {@link ProjectionStatus} of each projection or handler, in the mode
 * (and group) of {@link settings} unless given: persistent projections report
 * their group's unacknowledged events as their lag.
 *
 * @since 0.1.0
 */
export const status = Effect.fn("App.status")(function*(
  runnables: ReadonlyArray<Runnable>,
  options: { readonly mode?: Reconciler.RunOptions["mode"]; readonly group?: string | undefined } = {}
) {
  const source = yield* EventSourceTag
  const store = yield* ReadModelStoreTag
  const { group, mode } = yield* modeOf(options)
  return yield* Effect.forEach(runnables, (runnable) =>
    Effect.gen(function*() {
      const id = checkpointId(runnable)
      const checkpoint = yield* store.readCheckpoint(id)
      const head = yield* source.head(runnable.categories)
      const deadLetters = (yield* store.deadLetters(id)).length
      const gaps = (yield* store.gaps(id)).length
      if (mode === "persistent") {
        const status = yield* groupOf(source, runnable, group)
        const lag = Option.match(status, { onNone: () => Option.match(head, { onNone: () => 0n, onSome: (h) => h + 1n }), onSome: (g) => BigInt(g.pending) })
        return { projection: id, checkpoint, head, lag, deadLetters, gaps, group: status } satisfies ProjectionStatus
      }
      const lag = Option.match(head, {
        onNone: () => 0n,
        onSome: (h) => Option.match(checkpoint, { onNone: () => h + 1n, onSome: (c) => behind(c, h) })
      })
      return { projection: id, checkpoint, head, lag, deadLetters, gaps } satisfies ProjectionStatus
    }))
})

/**
 * Waits until every catch-up projection's committed checkpoint has reached the
 * head of its categories as it stands when called, polling every
 * `interval` (default 50 ms) at most `attempts` times (default: unbounded).
 * Fails with `"not caught up"` when the attempts run out.
 *
 * @since 0.1.0
 */
export const awaitCaughtUp = Effect.fn("App.awaitCaughtUp")(function*(
  runnables: ReadonlyArray<Runnable>,
  options: {
    readonly interval?: Duration.DurationInput
    readonly attempts?: number
    readonly mode?: Reconciler.RunOptions["mode"]
    readonly group?: string | undefined
  } = {}
) {
  const source = yield* EventSourceTag
  const store = yield* ReadModelStoreTag
  const { group, mode } = yield* modeOf(options)
  const retrying = {
    schedule: Schedule.spaced(options.interval ?? "50 millis"),
    while: (error: { readonly _tag: string }) => error._tag === "NotCaughtUp",
    ...(options.attempts !== undefined ? { times: options.attempts } : {})
  }
  for (const runnable of runnables) {
    const head = yield* source.head(runnable.categories)
    if (Option.isNone(head)) continue
    const id = checkpointId(runnable)
    if (mode === "persistent" && source.groupStatus !== undefined) {
      // A consumer group has no checkpoint of ours: caught up when the server holds nothing unacknowledged.
      yield* groupOf(source, runnable, group).pipe(
        Effect.filterOrFail(
          (status) => Option.isSome(status) && status.value.pending === 0,
          () => new NotCaughtUp({ projection: id, head: head.value })
        ),
        Effect.retry(retrying)
      )
      continue
    }
    yield* store.readCheckpoint(id).pipe(
      Effect.filterOrFail(
        (checkpoint) => Option.isSome(checkpoint) && behind(checkpoint.value, head.value) === 0n,
        () => new NotCaughtUp({ projection: id, head: head.value })
      ),
      Effect.retry(retrying)
    )
  }
})

/** A projection's checkpoint did not reach the head in time. @since 0.1.0 */
export class NotCaughtUp extends Data.TaggedError("NotCaughtUp")<{
  readonly projection: string
  readonly head: bigint
}> {
  override get message() {
    return `${this.projection} did not reach position ${this.head}`
  }
}

/**
 * Waits for {@link awaitCaughtUp} while `engine` runs: fails with the engine's
 * error if it stops first, so that a failing engine is never waited on forever.
 *
 * @since 0.1.0
 */
export const awaitCaughtUpWhile = <E>(
  engine: Fiber.Fiber<void, E>,
  runnables: ReadonlyArray<Runnable>,
  options: Parameters<typeof awaitCaughtUp>[1] = {}
) =>
  Effect.raceFirst(
    awaitCaughtUp(runnables, options),
    Fiber.join(engine).pipe(Effect.zipRight(Effect.dieMessage("the projections stopped before catching up")))
  )

/**
 * Runs the projections until they have caught up with the head of their
 * categories as it stands when called, then stops them (drained, checkpoints
 * committed). Fails with the engine's error if it fails first.
 *
 * @since 0.1.0
 */
export const runUntilCaughtUp = Effect.fn("App.runUntilCaughtUp")(function*(
  runnables: ReadonlyArray<Runnable>,
  overrides: Reconciler.RunOptions = {}
) {
  yield* Effect.scoped(Effect.gen(function*() {
    // In this scope: however this ends, the engine stops (drains) here, while
    // the clients it uses are still open.
    const engine = yield* Effect.forkScoped(run(runnables, overrides))
    yield* awaitCaughtUpWhile(engine, runnables, { mode: overrides.mode, group: overrides.group })
    yield* Fiber.interrupt(engine)
  }))
})

// ---- read your writes -----------------------------------------------------------

/**
 * An appended event as an append reports it: the stream, the event's revision
 * in it (`nextExpectedRevision` of the append), and its `$all` position when
 * the client gives it (`position` of the append).
 *
 * @since 0.1.0
 */
export interface Appended {
  readonly streamId: string
  readonly revision: bigint
  readonly position?: { readonly commit: bigint; readonly prepare: bigint } | undefined
}

/** How {@link awaitPosition} and {@link awaitDocument} wait. @since 0.1.0 */
export interface AwaitOptions {
  /** The mode the projection runs in. Default `catch-up`. */
  readonly mode?: Reconciler.RunOptions["mode"]
  /** Default 30 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
  /** How often the store is asked. Default 20 ms. */
  readonly interval?: Duration.DurationInput | undefined
}

/**
 * The projection did not apply the event within the timeout.
 *
 * @since 0.1.0
 */
export class AwaitTimeout extends Data.TaggedError("AwaitTimeout")<{
  readonly projection: string
  readonly awaited: string
  readonly timeout: Duration.Duration
}> {
  override get message() {
    return `${this.projection} did not apply ${this.awaited} within ${Duration.format(this.timeout)}`
  }
}

/** Events before the checkpoint searched for the appended one, by a source that cannot place an event itself. */
const LOOKBACK = 100n

/**
 * The delivery of an appended event in the projection's subscription, found
 * from a little before the checkpoint (or the head). When only a later event
 * of the same stream is found first, it is the answer: its position bounds the
 * appended one's from above. The fallback for sources without `positionOf`
 * and `readStream`.
 */
const subscriptionPosition = (runnable: Runnable, appended: Appended, mode: "catch-up" | "persistent") =>
  Effect.gen(function*() {
    const source = yield* EventSourceTag
    const store = yield* ReadModelStoreTag
    const from = mode === "catch-up" ? yield* store.readCheckpoint(checkpointId(runnable)) : yield* source.head(runnable.categories)
    const after = Option.flatMap(from, (p) => (p >= LOOKBACK ? Option.some(p - LOOKBACK) : Option.none()))
    const found = yield* source.subscribe({ mode: "catch-up", categories: runnable.categories, after }).pipe(
      Stream.filter((d) => d.streamId === appended.streamId && d.revision >= appended.revision),
      Stream.runHead
    )
    return yield* Option.match(found, {
      onNone: () => Effect.dieMessage(`the subscription of ${runnable.name} ended before ${appended.streamId}@${appended.revision}`),
      onSome: (d) => Effect.succeed(d)
    })
  })

/** The source cannot place the appended event in the subscription yet (asked again). */
class NotPlaced extends Data.TaggedError("NotPlaced")<{}> {}

/**
 * The position a catch-up checkpoint reaches once the projection has applied
 * the appended event: from the source's `positionOf` (exact: an `$all`
 * position for the index and several categories, a link revision found by
 * bisection for `$ce-`), asked again while the source cannot place it yet
 * (its category link not written); otherwise the append's `$all` position for
 * several categories, or a search of the subscription.
 */
const catchUpTarget = (runnable: Runnable, appended: Appended, options: AwaitOptions) =>
  Effect.gen(function*() {
    const source = yield* EventSourceTag
    if (source.positionOf !== undefined) {
      return yield* source.positionOf(runnable.categories, appended).pipe(
        Effect.flatMap(Option.match({ onNone: () => Effect.fail(new NotPlaced()), onSome: Effect.succeed })),
        Effect.retry({ schedule: Schedule.spaced(options.interval ?? "20 millis"), while: (e) => e._tag === "NotPlaced" }),
        Effect.catchTag("NotPlaced", () => Effect.dieMessage("unreachable: retried while not placed"))
      )
    }
    return runnable.categories.length > 1 && appended.position !== undefined
      ? EventStoreDB.allPosition(appended.position)
      : (yield* subscriptionPosition(runnable, appended, "catch-up")).position
  })

/** The appended event itself: read from its stream (one event), or searched for in the subscription. */
const appendedDelivery = (runnable: Runnable, appended: Appended) =>
  Effect.gen(function*() {
    const source = yield* EventSourceTag
    if (source.readStream !== undefined) {
      const [first] = yield* source.readStream(appended.streamId, appended.revision, 1)
      if (first !== undefined && first.revision === appended.revision) return first
    }
    return yield* subscriptionPosition(runnable, appended, "persistent")
  })

const waitFor = <E, R>(
  runnable: Runnable,
  awaited: string,
  options: AwaitOptions,
  body: Effect.Effect<void, E, R>
): Effect.Effect<void, E | AwaitTimeout, R> => {
  const timeout = Duration.decode(options.timeout ?? "30 seconds")
  return body.pipe(
    Effect.timeoutFail({ duration: timeout, onTimeout: () => new AwaitTimeout({ projection: runnable.name, awaited, timeout }) })
  )
}

/** Repeats `check` every `interval` until it holds. */
const until = <E, R>(check: Effect.Effect<boolean, E, R>, options: AwaitOptions) =>
  check.pipe(Effect.repeat({ schedule: Schedule.spaced(options.interval ?? "20 millis"), until: (held) => held }), Effect.asVoid)

/**
 * Waits until the projection has applied the appended event (and, in catch-up
 * mode, everything before it): its committed checkpoint reached the event's
 * position. In persistent mode, until every document the event touches has
 * applied it. Fails with {@link AwaitTimeout} after the timeout.
 *
 * @since 0.1.0
 */
export const awaitPosition = Effect.fn("App.awaitPosition")(function*(
  runnable: Runnable,
  appended: Appended,
  options: AwaitOptions = {}
) {
  const store = yield* ReadModelStoreTag
  const mode = options.mode ?? "catch-up"
  const awaited = `${appended.streamId}@${appended.revision}`
  yield* waitFor(runnable, awaited, options, Effect.gen(function*() {
    if (mode === "catch-up") {
      const target = yield* catchUpTarget(runnable, appended, options)
      const id = checkpointId(runnable)
      return yield* until(Effect.map(store.readCheckpoint(id), Option.exists((c) => c >= target)), options)
    }
    // Persistent: no single position; every document the event touches tells.
    if (runnable._tag !== "Projection") return yield* Effect.dieMessage("awaitPosition in persistent mode needs a projection")
    const delivery = yield* appendedDelivery(runnable, appended)
    const event = decoder(runnable.events)(delivery)
    if (event === undefined || typeof event === "string") return // not applied to any document, by design
    const key = runnable.key(event as never)
    const ids = typeof key === "string" ? [key] : [...key]
    const collection = yield* ReadModels.collectionOf(runnable)
    yield* until(
      Effect.map(store.load(collection, ids), (docs) =>
        ids.every((docId) => (docs.get(docId)?.meta.streams[appended.streamId] ?? -1n) >= appended.revision)),
      options
    )
  }))
})

/**
 * Waits until document `id` of the projection has applied the appended event
 * (or the projection has moved past it without touching the document),
 * without waiting for the rest of the projection. Fails with
 * {@link AwaitTimeout} after the timeout.
 *
 * @since 0.1.0
 */
export const awaitDocument = Effect.fn("App.awaitDocument")(function*(
  projection: Projection<any, any>,
  id: string,
  appended: Appended,
  options: AwaitOptions = {}
) {
  const store = yield* ReadModelStoreTag
  const mode = options.mode ?? "catch-up"
  yield* waitFor(projection, `${appended.streamId}@${appended.revision} on ${id}`, options, Effect.gen(function*() {
    const collection = yield* ReadModels.collectionOf(projection)
    if (mode === "persistent") {
      return yield* until(
        Effect.map(store.load(collection, [id]), (docs) => (docs.get(id)?.meta.streams[appended.streamId] ?? -1n) >= appended.revision),
        options
      )
    }
    const target = yield* catchUpTarget(projection, appended, options)
    const checkpoint = checkpointId(projection)
    yield* until(
      Effect.zipWith(
        store.load(collection, [id]),
        store.readCheckpoint(checkpoint),
        (docs, committed) =>
          (docs.get(id)?.meta.position ?? -1n) >= target || Option.exists(committed, (c) => c >= target)
      ),
      options
    )
  }))
})
