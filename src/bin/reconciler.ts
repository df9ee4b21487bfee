#!/usr/bin/env -S npx tsx
/**
 * The `reconciler` command line.
 *
 * ```sh
 * reconciler run --module examples/openbank.ts [--mode catch-up|persistent] [--lanes N] [--batch-size N] [--http-port P]
 * reconciler status --module examples/openbank.ts
 * reconciler dead-letters list  --module examples/openbank.ts [--projection NAME]
 * reconciler dead-letters retry --module examples/openbank.ts [--projection NAME]
 * reconciler embedded --eventstore-port P --mongo-port Q [--data-dir D] [--transaction-lifetime-limit-seconds S]
 * ```
 *
 * Endpoints and engine settings come from the environment (see docs/service.md);
 * flags override the engine settings. Connection strings are never printed.
 * `--help` on every command; an unknown flag or a bad value exits with code 2.
 *
 * @since 0.1.0
 */
import { Command, Options, ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, ConfigError, Console, Effect, Exit, Option, Schema } from "effect"
import * as path from "node:path"
import * as App from "../App.js"
import * as EventStoreServer from "../embedded/EventStoreServer.js"
import * as MongoServer from "../embedded/MongoServer.js"
import { checkpointId } from "../Projection.js"
import { ReadModelStore } from "../ReadModelStore.js"
import * as Cli from "../internal/cli.js"
import * as Logging from "../Logging.js"
import * as Telemetry from "../Telemetry.js"

// ---- shared options ------------------------------------------------------------

const modulePath = Options.file("module", { exists: "yes" }).pipe(
  Options.withAlias("m"),
  Options.withDescription("a module exporting projections (an array named `projections`, or each as an export)")
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

/** The app's layer: endpoints (and embedded servers when asked), the ports over them. */
const appLayer = (useEmbedded: boolean) => App.layer(useEmbedded ? { embedded: true } : {})

const projectionsOf = (module: string, names: ReadonlyArray<string>) =>
  Cli.loadRunnables(module).pipe(Effect.flatMap((runnables) => Cli.select(runnables, names)))

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
    batchSize: positive("batch-size", "most events folded into one write per lane (default RECONCILER_BATCH_SIZE or 100)"),
    httpPort: port("http-port", "HTTP endpoint (/metrics /healthz /readyz /status; default RECONCILER_HTTP_PORT or off)").pipe(
      Options.optional
    ),
    embedded
  },
  (args) =>
    Effect.gen(function*() {
      const runnables = yield* projectionsOf(args.module, args.projection)
      yield* App.run(runnables, {
        mode: Option.getOrUndefined(args.mode),
        lanes: Option.getOrUndefined(args.lanes),
        batchSize: Option.getOrUndefined(args.batchSize),
        httpPort: Option.getOrUndefined(args.httpPort)
      }).pipe(Effect.provide(appLayer(args.embedded)), Effect.provide(Telemetry.tracingLayerConfig))
    })
).pipe(Command.withDescription(
  "Run the projections of a module until SIGINT/SIGTERM; then drain, commit the checkpoints and exit 0."
))

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
      const runnables = yield* projectionsOf(args.module, args.projection)
      if (Option.isSome(args.url)) {
        const names = new Set(runnables.map((r) => r.name))
        const states = (yield* Cli.serviceStatus(args.url.value)).filter((s) => names.has(String(s.projection)))
        yield* Console.log(`the service at ${args.url.value}`)
        yield* Console.log(Cli.serviceStatusTable(states))
        return
      }
      yield* Effect.gen(function*() {
        const endpoints = yield* App.Endpoints
        const statuses = yield* App.status(runnables)
        const show = (o: Option.Option<bigint>) => Option.match(o, { onNone: () => "-", onSome: String })
        yield* Console.log(App.describeEndpoints(endpoints))
        yield* Console.log(Cli.table(
          ["projection", "checkpoint", "head", "lag", "dead letters", "skipped"],
          statuses.map((s) => [s.projection, show(s.checkpoint), show(s.head), String(s.lag), String(s.deadLetters), "-"])
        ))
        yield* Console.log("skipped: counted by the running service (ask it with --url)")
      }).pipe(Effect.provide(appLayer(args.embedded)))
    })
).pipe(Command.withDescription(
  "Per projection: committed checkpoint, head position of its categories, lag (in positions) and dead-letter count; " +
    "with --url, the running service's figures (behind the head, oldest unapplied event, processed, skipped, stalled)."
))

// ---- dead letters -----------------------------------------------------------------

const list = Command.make(
  "list",
  { module: modulePath, projection: projectionNames, embedded },
  (args) =>
    Effect.gen(function*() {
      const runnables = yield* projectionsOf(args.module, args.projection)
      const store = yield* ReadModelStore
      const rows: Array<Array<string>> = []
      for (const runnable of runnables) {
        for (const letter of yield* store.deadLetters(checkpointId(runnable))) {
          rows.push([
            letter.projection,
            letter.eventId,
            letter.eventType,
            `${letter.streamId}@${letter.revision}`,
            String(letter.position),
            letter.at.toISOString(),
            letter.reason
          ])
        }
      }
      yield* Console.log(Cli.foldedTable(
        ["projection", "event", "type", "stream@revision", "position", "at", "reason"],
        rows,
        process.stdout.isTTY ? process.stdout.columns : undefined
      ))
      yield* Console.log(`${rows.length} dead letter${rows.length === 1 ? "" : "s"}`)
    }).pipe(Effect.provide(appLayer(args.embedded)))
).pipe(Command.withDescription("List the dead-lettered events of the module's projections, with their reasons."))

const retry = Command.make(
  "retry",
  { module: modulePath, projection: projectionNames, embedded },
  (args) =>
    Effect.gen(function*() {
      const runnables = yield* projectionsOf(args.module, args.projection)
      let failures = 0
      for (const runnable of runnables) {
        const outcome = yield* Cli.retryDeadLetters(runnable)
        failures += outcome.failed.length + outcome.superseded.length
        yield* Console.log(
          `${runnable.name}: ${outcome.retried.length} retried, ${outcome.failed.length} failed again, ` +
            `${outcome.superseded.length} superseded (a later event already applied; rebuild to apply)`
        )
        for (const { letter, reason } of outcome.failed) {
          yield* Console.log(`  ${letter.eventId} (${letter.eventType}):\n${reason.split("\n").map((line) => `    ${line}`).join("\n")}`)
        }
      }
      if (failures > 0) yield* Effect.sync(() => (process.exitCode = 1))
    }).pipe(Effect.provide(appLayer(args.embedded)))
).pipe(Command.withDescription(
  "Apply the dead letters again with the projections as they are now (after a fix); remove those that apply."
))

const deadLetters = Command.make("dead-letters").pipe(
  Command.withDescription("Inspect and retry dead-lettered events."),
  Command.withSubcommands([list, retry])
)

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
    )
  },
  (args) =>
    Effect.gen(function*() {
      const dataDir = (name: string) => Option.getOrUndefined(Option.map(args.dataDir, (dir) => path.join(dir, name)))
      const eventStore = yield* EventStoreServer.make({ port: args.eventstorePort, dataDir: dataDir("eventstore") })
      const mongo = yield* MongoServer.make({
        port: args.mongoPort,
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
).pipe(Command.withDescription(
  "Run the embedded EventStoreDB and MongoDB servers in the foreground until SIGINT/SIGTERM (development and tests only)."
))

// ---- the command line ----------------------------------------------------------------

const reconciler = Command.make("reconciler").pipe(
  Command.withDescription("Keeps MongoDB read models reconciled with EventStoreDB events."),
  Command.withSubcommands([run, status, deadLetters, embeddedServers])
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
  Effect.provide(Logging.layerConfig()),
  Effect.catchIf(ValidationError.isValidationError, (error) =>
    // @effect/cli has printed the message (and help where useful).
    ValidationError.isHelpRequested(error) ? Effect.void : Effect.sync(() => (process.exitCode = USAGE))),
  // A missing or malformed setting in the environment is bad usage too.
  Effect.catchIf(ConfigError.isConfigError, (error) =>
    Console.error(`reconciler: configuration: ${String(error)}`).pipe(Effect.zipRight(Effect.sync(() => (process.exitCode = USAGE))))),
  Effect.tapErrorCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.void : Console.error(`reconciler: ${message(cause)}`))
)

NodeRuntime.runMain(main, {
  disableErrorReporting: true,
  // The logger is Logging's (RECONCILER_LOG_FORMAT), not runMain's pretty one.
  disablePrettyLogger: true,
  teardown: (exit, onExit) => {
    const code = Exit.isSuccess(exit)
      ? Number(process.exitCode ?? 0)
      : Cause.isInterruptedOnly(exit.cause)
      ? 0
      : 1
    onExit(code)
    process.exit(code)
  }
})
