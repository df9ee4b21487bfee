#!/usr/bin/env node
/**
 * The `reconciler` command line, a plain node program (compiled to
 * `dist/bin/reconciler.js`, the package's bin).
 *
 * ```sh
 * reconciler run --module dist/projections.js [--mode catch-up|persistent] [--lanes N] [--batch-size N] [--http-port P]
 * reconciler status --module dist/projections.js [--url http://HOST:PORT]
 * reconciler dead-letters list  --module dist/projections.js [--projection NAME]
 * reconciler dead-letters show  --module dist/projections.js ID
 * reconciler dead-letters retry --module dist/projections.js [--projection NAME] [--all] [--by WHO] [ID...]
 * reconciler dead-letters skip  --module dist/projections.js [--projection NAME] [--all] [--by WHO] [--reason WHY] [ID...]
 * reconciler rebuild --module M --projection P [--cutover [--require-identical] [--cleanup]]
 * reconciler diff    --module M --projection P [--sample N]
 * reconciler cutover --module M --projection P [--require-identical] [--cleanup]
 * reconciler verify  --module M [--projection P] [--repair]
 * reconciler embedded --eventstore-port P --mongo-port Q [--data-dir D] [--transaction-lifetime-limit-seconds S]
 *                     [--host H] [--max-append-size BYTES] [--no-batch-append] [--no-secondary-indexes] [--fsync]
 * ```
 *
 * Endpoints and engine settings come from the environment (listed by `--help`);
 * flags override the engine settings. Every setting is checked before anything
 * starts or connects. Connection strings are never printed. `--help` on every
 * command; an unknown flag or a bad value or setting exits with code 2.
 *
 * Only the command line itself is loaded up front: the clients, the drivers and
 * the embedded servers are imported by the commands that use them.
 *
 * @since 0.1.0
 */
import { Args, Command, HelpDoc, Options, ValidationError } from "@effect/cli"
import * as Span from "@effect/cli/HelpDoc/Span"
import * as NodeContext from "@effect/platform-node/NodeContext"
// Single modules of effect, not its index: `--help` must not load all of effect.
import * as Arr from "effect/Array"
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as net from "node:net"
import * as path from "node:path"
import type * as AppModule from "../App.js"
import type { Runnable } from "../Projection.js"
import * as Signals from "../internal/signals.js"
import * as Usage from "../internal/usage.js"

/** The service (clients, drivers, embedded servers): loaded by the commands that connect. */
const loadApp = Effect.promise(() => import("../App.js"))
/** Loading modules of projections, the engine, the store's port: loaded by the commands that use them. */
const loadCli = Effect.promise(() => import("../internal/cli.js"))
/** The dead-letter lifecycle (list, show, retry, skip; quarantined documents). */
const loadDeadLetters = Effect.promise(() => import("../internal/deadLetters.js"))
/** Traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (nothing otherwise): loaded by `run`. */
const loadTelemetry = Effect.promise(() => import("../Telemetry.js"))
/** One logger for every command (RECONCILER_LOG_FORMAT, RECONCILER_LOG_LEVEL). */
const loggingLayer = Layer.unwrapEffect(Effect.map(Effect.promise(() => import("../Logging.js")), (Logging) => Logging.layerConfig()))

// ---- help --------------------------------------------------------------------------

/** A command's description, then the environment variables it reads, each with its default. */
const described = (text: string, ...groups: ReadonlyArray<ReadonlyArray<Usage.Variable>>) =>
  HelpDoc.blocks([
    HelpDoc.p(text),
    HelpDoc.h2("ENVIRONMENT"),
    HelpDoc.descriptionList(
      Arr.map(
        Arr.append(groups.flat(), Usage.noColor),
        (v): [Span.Span, HelpDoc.HelpDoc] => [Span.text(v.name), HelpDoc.p(`${v.meaning} (default: ${v.default})`)]
      )
    )
  ])

// ---- shared options ------------------------------------------------------------

const modulePath = Options.file("module", { exists: "yes" }).pipe(
  Options.withAlias("m"),
  Options.withDescription(
    "a compiled module (.js, .mjs) exporting projections (an array named `projections`, or each as an export); " +
      "a .ts module is loaded through tsx when tsx is installed"
  )
)

const embedded = Options.boolean("embedded").pipe(
  Options.withDescription(
    "start the embedded EventStoreDB and MongoDB servers in this process for the connection strings that are not set"
  )
)

const projectionNames = Options.text("projection").pipe(
  Options.withAlias("p"),
  Options.repeated,
  Options.withDescription("only this projection (repeatable; default: all of the module's)")
)

const positive = (name: string, description: string) =>
  Options.integer(name).pipe(
    Options.withSchema(Schema.Int.pipe(Schema.positive({ message: () => `--${name} must be a positive integer` }))),
    Options.optional,
    Options.withDescription(description)
  )

/**
 * Checks every setting (nothing started, nothing connected), loads the module,
 * then provides the app's layer (endpoints, embedded servers when asked, the
 * ports) to `use`. The addresses of embedded servers are printed once they listen.
 */
const withApp = <A, E, R>(
  args: { readonly module: string; readonly projection: ReadonlyArray<string>; readonly embedded: boolean },
  use: (app: typeof AppModule, runnables: ReadonlyArray<Runnable>) => Effect.Effect<A, E, R>
) =>
  Effect.gen(function*() {
    const [app, Cli] = yield* Effect.all([loadApp, loadCli])
    yield* app.checkConfig
    const runnables = yield* Cli.loadRunnables(args.module).pipe(Effect.flatMap((all) => Cli.select(all, args.projection)))
    return yield* Effect.gen(function*() {
      const endpoints = yield* app.Endpoints
      if (endpoints.eventStore.embedded) {
        yield* Console.log(`embedded EventStoreDB listening on ${Redacted.value(endpoints.eventStore.connectionString)}`)
      }
      if (endpoints.mongo.embedded) yield* Console.log(`embedded MongoDB listening on ${Redacted.value(endpoints.mongo.uri)}`)
      return yield* use(app, runnables)
    }).pipe(Effect.provide(app.layer(args.embedded ? { embedded: true } : {})))
  })

/**
 * Checks every setting, then provides the app's layer to `use`, for commands
 * that load their module themselves (the versions commands).
 */
const withAppLayer = <A, E, R>(embedded: boolean, use: (app: typeof AppModule) => Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const app = yield* loadApp
    yield* app.checkConfig
    return yield* use(app).pipe(Effect.provide(app.layer(embedded ? { embedded: true } : {})))
  })

const port = (name: string, server: string) =>
  Options.integer(name).pipe(
    Options.withSchema(Schema.Int.pipe(Schema.between(0, 65535, { message: () => `--${name} must be a port (0-65535)` }))),
    Options.withDescription(`the ${server} port (0 picks a free one)`)
  )

// ---- run -----------------------------------------------------------------------

const run = Command.make(
  "run",
  {
    module: modulePath,
    projection: projectionNames,
    mode: Options.choice("mode", ["catch-up", "persistent"]).pipe(
      Options.optional,
      Options.withDescription("catch-up (ordered, own checkpoint; default) or persistent (a consumer group)")
    ),
    lanes: positive("lanes", "parallel lanes (default RECONCILER_LANES or 4)"),
    batchSize: positive("batch-size", "most events folded into one write per lane (default RECONCILER_BATCH_SIZE or 500)"),
    httpPort: port("http-port", "HTTP endpoint (/metrics /healthz /readyz /status; default RECONCILER_HTTP_PORT or off)").pipe(
      Options.optional
    ),
    embedded
  },
  (args) =>
    withApp(args, (app, runnables) =>
      app.run(runnables, {
        mode: Option.getOrUndefined(args.mode),
        lanes: Option.getOrUndefined(args.lanes),
        batchSize: Option.getOrUndefined(args.batchSize),
        httpPort: Option.getOrUndefined(args.httpPort)
      }).pipe(Effect.provide(Layer.unwrapEffect(Effect.map(loadTelemetry, (Telemetry) => Telemetry.tracingLayerConfig)))))
).pipe(Command.withDescription(described(
  "Run the projections of a module until SIGINT/SIGTERM; then drain, commit the checkpoints and exit 0. " +
    "A second signal during the drain stops at once. With --http-port, serve /metrics, /healthz, /readyz and /status.",
  Usage.endpointVariables,
  Usage.engineVariables
)))

// ---- status --------------------------------------------------------------------

const status = Command.make(
  "status",
  {
    module: modulePath,
    projection: projectionNames,
    embedded,
    url: Options.text("url").pipe(
      Options.optional,
      Options.withDescription(
        "ask the running service at this HTTP endpoint (e.g. http://127.0.0.1:9464) instead: its figures from memory, skipped events included"
      )
    )
  },
  (args) =>
    Effect.gen(function*() {
      if (Option.isSome(args.url)) {
        // The running service's figures, from its memory (skipped events included).
        const Cli = yield* loadCli
        const runnables = yield* Cli.loadRunnables(args.module).pipe(Effect.flatMap((all) => Cli.select(all, args.projection)))
        const names = new Set(runnables.map((r) => r.name))
        const states = (yield* Cli.serviceStatus(args.url.value)).filter((s) => names.has(String(s.projection)))
        yield* Console.log(`the service at ${args.url.value}`)
        yield* Console.log(Cli.serviceStatusTable(states))
        return
      }
      yield* withApp(args, (app, runnables) =>
        Effect.gen(function*() {
          const [Cli, DeadLetters] = yield* Effect.all([loadCli, loadDeadLetters])
          const endpoints = yield* app.Endpoints
          const statuses = yield* app.status(runnables)
          const show = (o: Option.Option<bigint>) => Option.match(o, { onNone: () => "-", onSome: String })
          yield* Console.log(app.describeEndpoints(endpoints))
          yield* Console.log(Cli.table(
            ["projection", "checkpoint", "head", "lag", "dead letters", "gaps skipped"],
            statuses.map((s) => [s.projection, show(s.checkpoint), show(s.head), String(s.lag), String(s.deadLetters), String(s.gaps)])
          ))
          for (const line of yield* DeadLetters.quarantineLines(runnables)) yield* Console.log(line)
          yield* Console.log("skipped events are counted by the running service: ask it with --url")
        }))
    })
).pipe(Command.withDescription(described(
  "Per projection: committed checkpoint, head position of its categories, lag (in positions), dead-letter count and " +
    "(persistent mode) gaps skipped; then the quarantined documents and the events that block them. With --url, the " +
    "running service's figures (behind the head, oldest unapplied event, processed, skipped, stalled).",
  Usage.endpointVariables
)))

// ---- dead letters -----------------------------------------------------------------

const letterIds = Args.text({ name: "id" }).pipe(
  Args.repeated,
  Args.withDescription("dead letter ids (from `dead-letters list`)")
)
const allLetters = Options.boolean("all").pipe(
  Options.withDescription("every open letter of the selected projections (--projection narrows it)")
)
const decidedBy = Options.text("by").pipe(
  Options.optional,
  Options.withDescription("who decides, for the record (default: the OS user)")
)

const list = Command.make(
  "list",
  { module: modulePath, projection: projectionNames, embedded },
  (args) =>
    withApp(args, (_, runnables) =>
      Effect.gen(function*() {
        const [Cli, DeadLetters] = yield* Effect.all([loadCli, loadDeadLetters])
        const letters = yield* DeadLetters.open(runnables)
        yield* Console.log(Cli.foldedTable(DeadLetters.listHeader, DeadLetters.rows(letters), process.stdout.isTTY ? process.stdout.columns : undefined))
        yield* Console.log(`${letters.length} dead letter${letters.length === 1 ? "" : "s"}`)
      }))
).pipe(Command.withDescription(described(
  "List the open dead letters of the module's projections: the document each quarantines, its event and reason.",
  Usage.endpointVariables
)))

const show = Command.make(
  "show",
  { module: modulePath, projection: projectionNames, embedded, id: Args.text({ name: "id" }) },
  (args) =>
    withApp(args, (_, runnables) =>
      Effect.gen(function*() {
        const DeadLetters = yield* loadDeadLetters
        const [letter] = yield* DeadLetters.select(runnables, { ids: [args.id], all: false })
        yield* Console.log(yield* DeadLetters.show(letter!))
      }))
).pipe(Command.withDescription(described(
  "Show one dead letter: its event (data and metadata), reason, and the events held behind it.",
  Usage.endpointVariables
)))

const retry = Command.make(
  "retry",
  { module: modulePath, projection: projectionNames, embedded, all: allLetters, by: decidedBy, ids: letterIds },
  (args) =>
    withApp(args, (app, runnables) =>
      Effect.gen(function*() {
        // Into the collection each version writes (refused for a version that has none).
        const [DeadLetters, { ReadModels }] = yield* Effect.all([loadDeadLetters, loadVersions])
        yield* DeadLetters.run(yield* ReadModels.resolve(runnables), { ids: args.ids, all: args.all }, {
          action: "retried",
          by: DeadLetters.currentUser(Option.getOrUndefined(args.by))
        }, yield* placement(app))
      }))
).pipe(Command.withDescription(described(
  "Apply dead letters again with the projections as they are now (after a fix), then the events held behind them, " +
    "in order, and release their documents. Exit 1 if one fails again. Persistent mode (RECONCILER_MODE): then " +
    "replay the group's parked messages; the engine acknowledges the copies of ended letters, never applying them twice.",
  Usage.endpointVariables,
  Usage.placementVariables
)))

const skip = Command.make(
  "skip",
  {
    module: modulePath,
    projection: projectionNames,
    embedded,
    all: allLetters,
    by: decidedBy,
    reason: Options.text("reason").pipe(Options.optional, Options.withDescription("why, for the record")),
    ids: letterIds
  },
  (args) =>
    withApp(args, (app, runnables) =>
      Effect.gen(function*() {
        const [DeadLetters, { ReadModels }] = yield* Effect.all([loadDeadLetters, loadVersions])
        yield* DeadLetters.run(yield* ReadModels.resolve(runnables), { ids: args.ids, all: args.all }, {
          action: "skipped",
          by: DeadLetters.currentUser(Option.getOrUndefined(args.by)),
          reason: Option.getOrUndefined(args.reason)
        }, yield* placement(app))
      }))
).pipe(Command.withDescription(described(
  "Skip dead letters by decision (recorded with who and why): their events are never applied; the events held " +
    "behind them apply in order and their documents are released. Persistent mode (RECONCILER_MODE): then replay " +
    "the group's parked messages, as retry does.",
  Usage.endpointVariables,
  Usage.placementVariables
)))

/** Where the projections run (RECONCILER_MODE, RECONCILER_GROUP): persistent letters are parked in the group. */
const placement = (app: typeof AppModule) =>
  Effect.map(app.settings, (s) => ({ mode: s.mode ?? "catch-up", group: s.group }))

const deadLetters = Command.make("dead-letters").pipe(
  Command.withDescription("Inspect, retry and skip dead-lettered events (each quarantines its document until it ends)."),
  Command.withSubcommands([list, show, retry, skip])
)

// ---- versions: rebuild, diff, cutover, verify (logic in internal/versionsCli) -------

/** The versions commands' logic, loaded by the commands that use it. */
const loadVersions = Effect.promise(() => import("../internal/versionsCli.js"))

const oneProjection = Options.text("projection").pipe(Options.withAlias("p"), Options.withDescription("the projection"))
const flag = (name: string, description: string) => Options.boolean(name).pipe(Options.withDescription(description))
const requireIdentical = flag("require-identical", "refuse to cut over when the new version differs from the live one")
const cleanup = flag("cleanup", "after cutting over, remove the old version's collection, checkpoint and dead letters")

const rebuild = Command.make(
  "rebuild",
  {
    module: modulePath,
    projection: oneProjection,
    cutover: flag("cutover", "cut over once caught up"),
    requireIdentical,
    cleanup,
    lanes: positive("lanes", "parallel lanes (default RECONCILER_LANES or 4)"),
    batchSize: positive("batch-size", "most events folded into one write per lane (default RECONCILER_BATCH_SIZE or 500)"),
    embedded
  },
  (args) =>
    withAppLayer(args.embedded, (app) =>
      Effect.flatMap(Effect.zip(app.settings, loadVersions), ([settings, Versions]) =>
        Versions.rebuild({
          ...args,
          run: {
            ...settings,
            lanes: Option.getOrElse(args.lanes, () => settings.lanes),
            batchSize: Option.getOrElse(args.batchSize, () => settings.batchSize)
          }
        })))
).pipe(Command.withDescription(
  "Build the projection's current version from the start into its own collection while the live version keeps serving; resumable."
))

const cutover = Command.make(
  "cutover",
  { module: modulePath, projection: oneProjection, requireIdentical, cleanup, embedded },
  (args) => withAppLayer(args.embedded, () => Effect.flatMap(loadVersions, (Versions) => Versions.cutover(args)))
).pipe(Command.withDescription("Switch readers to the projection's rebuilt version in one step."))

const diff = Command.make(
  "diff",
  {
    module: modulePath,
    projection: oneProjection,
    sample: Options.integer("sample").pipe(Options.withDefault(10), Options.withDescription("differences to show")),
    embedded
  },
  (args) => withAppLayer(args.embedded, () => Effect.flatMap(loadVersions, (Versions) => Versions.diff(args)))
).pipe(Command.withDescription("Compare the live version with the rebuilt one, document by document; exit 1 when they differ."))

const verify = Command.make(
  "verify",
  {
    module: modulePath,
    projection: projectionNames,
    repair: flag("repair", "rewrite the documents that differ from their events (guarded writes)"),
    embedded
  },
  (args) =>
    withAppLayer(args.embedded, () =>
      Effect.flatMap(loadVersions, (Versions) => Versions.verify({ ...args, projections: args.projection })))
).pipe(Command.withDescription(
  "Fold the projections again from their events and compare every stored document; exit 1 on a mismatch."
))

// ---- embedded ----------------------------------------------------------------------

const embeddedServers = Command.make(
  "embedded",
  {
    eventstorePort: port("eventstore-port", "EventStoreDB"),
    mongoPort: port("mongo-port", "MongoDB"),
    dataDir: Options.directory("data-dir").pipe(
      Options.optional,
      Options.withDescription("keep the data in this directory (journals); in memory when absent")
    ),
    transactionLifetime: Options.integer("transaction-lifetime-limit-seconds").pipe(
      Options.withSchema(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1, {
        message: () => "--transaction-lifetime-limit-seconds must be a whole number of seconds, at least 1"
      }))),
      Options.withDefault(60),
      Options.withDescription("MongoDB aborts transactions open longer than this (a crashed client's locks go with them)")
    ),
    host: Options.text("host").pipe(
      Options.withSchema(Schema.String.pipe(Schema.filter((h) => net.isIP(h) !== 0 || h === "localhost", {
        message: () => "--host must be an IP address or localhost"
      }))),
      Options.withDefault("127.0.0.1"),
      Options.withDescription("the address both servers listen on")
    ),
    maxAppendSize: Options.integer("max-append-size").pipe(
      Options.withSchema(Schema.Int.pipe(Schema.greaterThanOrEqualTo(1, {
        message: () => "--max-append-size must be a whole number of bytes, at least 1"
      }))),
      Options.withDefault(1024 * 1024),
      Options.withDescription("EventStoreDB refuses appends larger than this many bytes (a real server's MaxAppendSize)")
    ),
    noBatchAppend: Options.boolean("no-batch-append").pipe(
      Options.withDescription("EventStoreDB offers no BatchAppend, as servers before 21.10 (clients append one call each)")
    ),
    noSecondaryIndexes: Options.boolean("no-secondary-indexes").pipe(
      Options.withDescription("EventStoreDB is a 24.10 without the $idx-ce- / $idx-et- secondary indexes of KurrentDB 25.1")
    ),
    fsync: Options.boolean("fsync").pipe(
      Options.withDescription("MongoDB syncs its journal to disk on every write (with --data-dir)")
    )
  },
  (args) =>
    Effect.gen(function*() {
      const [EventStoreServer, MongoServer] = yield* Effect.promise(() =>
        Promise.all([import("../embedded/EventStoreServer.js"), import("../embedded/MongoServer.js")])
      )
      const dataDir = (name: string) => Option.getOrUndefined(Option.map(args.dataDir, (dir) => path.join(dir, name)))
      const eventStore = yield* EventStoreServer.make({
        port: args.eventstorePort,
        host: args.host,
        dataDir: dataDir("eventstore"),
        maxAppendSize: args.maxAppendSize,
        batchAppend: !args.noBatchAppend,
        secondaryIndexes: !args.noSecondaryIndexes
      })
      const mongo = yield* MongoServer.make({
        port: args.mongoPort,
        host: args.host,
        fsync: args.fsync,
        dataDir: dataDir("mongo"),
        transactionLifetimeLimitSeconds: args.transactionLifetime
      })
      yield* Console.log(`embedded EventStoreDB listening on ${eventStore.connectionString}`)
      yield* Console.log(`embedded MongoDB listening on ${mongo.uri}`)
      yield* Console.log(
        `in memory${Option.isSome(args.dataDir) ? ` and journaled in ${args.dataDir.value}` : ""}; SIGINT or SIGTERM stops both`
      )
      return yield* Effect.never
    }).pipe(Effect.scoped)
).pipe(Command.withDescription(described(
  "Run the embedded EventStoreDB and MongoDB servers in the foreground until SIGINT/SIGTERM (development and tests only)."
)))

// ---- the command line ----------------------------------------------------------------

const reconciler = Command.make("reconciler").pipe(
  Command.withDescription(described(
    "Keeps MongoDB read models reconciled with EventStoreDB events.",
    Usage.endpointVariables,
    Usage.engineVariables
  )),
  Command.withSubcommands([run, status, deadLetters, rebuild, diff, cutover, verify, embeddedServers])
)

const cli = Command.run(reconciler, { name: "reconciler", version: "0.1.0" })

/** Exit codes: 0 done (or stopped by a signal after draining), 1 failed, 2 bad usage. */
const USAGE = 2

const message = (cause: Cause.Cause<unknown>): string => {
  const error = Cause.squash(cause)
  return error instanceof Error ? error.message : Cause.pretty(cause)
}

const main = cli(process.argv).pipe(
  Effect.provide(NodeContext.layer),
  Effect.provide(loggingLayer),
  Effect.catchIf(ValidationError.isValidationError, (error) =>
    // @effect/cli has printed the message (and help where useful).
    ValidationError.isHelpRequested(error) ? Effect.void : Effect.sync(() => (process.exitCode = USAGE))),
  // Acting on every letter must be asked for: bad usage.
  Effect.catchTag("NoLettersNamed", (error) =>
    Console.error(`reconciler: ${error.message}`).pipe(Effect.zipRight(Effect.sync(() => (process.exitCode = USAGE))))),
  // A missing or malformed setting in the environment is bad usage too.
  Effect.catchIf(ConfigError.isConfigError, (error) =>
    Console.error(`reconciler: configuration: ${String(error)}`).pipe(Effect.zipRight(Effect.sync(() => (process.exitCode = USAGE))))),
  Effect.tapErrorCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(`reconciler: ${message(cause)}`)),
  (program) => (Usage.plainOutput() ? Usage.withPlainConsole(program) : program)
)

Signals.runMain(main, {
  name: "reconciler",
  exitCode: (exit, stopped) =>
    Exit.isSuccess(exit)
      ? Number(process.exitCode ?? 0)
      : Cause.isInterruptedOnly(exit.cause) && stopped
      ? 0
      : 1
})
