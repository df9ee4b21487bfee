/**
 * What the `reconciler` command line tells its user before it does anything:
 * the environment variables each command reads, with their defaults, and
 * plain output where colours do not belong. Loaded with `--help`, so it imports
 * single modules of `effect` rather than its index (which loads all of them).
 */
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import { stripVTControlCharacters } from "node:util"

/** An environment variable a command reads: what it means and its default. */
export interface Variable {
  readonly name: string
  readonly meaning: string
  readonly default: string
}

/** Where the events and the read models are (`run`, `status`, `dead-letters`; see `App.endpointsConfig`). */
export const endpointVariables: ReadonlyArray<Variable> = [
  {
    name: "EVENTSTORE_CONNECTION_STRING",
    meaning: "EventStoreDB / KurrentDB connection string, e.g. esdb://host:2113?tls=false (a secret: never printed)",
    default: "required, unless --embedded or RECONCILER_EMBEDDED=true"
  },
  {
    name: "MONGODB_URI",
    meaning: "MongoDB connection string, e.g. mongodb://host:27017/?replicaSet=rs0 (a secret: never printed)",
    default: "required, unless --embedded or RECONCILER_EMBEDDED=true"
  },
  { name: "MONGODB_DATABASE", meaning: "database of the read models, checkpoints and dead letters", default: "read_models" },
  {
    name: "RECONCILER_EMBEDDED",
    meaning: "true: start the embedded servers (development only) for the connection strings not set",
    default: "false"
  },
  { name: "RECONCILER_DATA_DIR", meaning: "journal directory of the embedded servers", default: "in memory" }
]

/** The engine's settings (`run`; see `App.settings`); flags override them. */
export const engineVariables: ReadonlyArray<Variable> = [
  { name: "RECONCILER_MODE", meaning: "catch-up (ordered, own checkpoint) or persistent (consumer group)", default: "catch-up" },
  { name: "RECONCILER_LANES", meaning: "parallel lanes per projection", default: "4" },
  { name: "RECONCILER_BATCH_SIZE", meaning: "most events folded into one write per lane", default: "100" },
  { name: "RECONCILER_LANE_BUFFER", meaning: "deliveries a lane may hold beyond its batch", default: "256" },
  {
    name: "RECONCILER_DRAIN_TIMEOUT",
    meaning: "how long the drain on SIGTERM/SIGINT may take before the rest is nacked",
    default: "10 seconds"
  },
  { name: "RECONCILER_COMMIT_INTERVAL", meaning: "how often the checkpoint is committed when no write carries it", default: "1 second" },
  { name: "RECONCILER_GROUP", meaning: "persistent mode: the consumer group", default: "<projection>@<version>" }
]

/** Where projections run, for the commands that settle their dead letters. */
export const placementVariables: ReadonlyArray<Variable> = engineVariables.filter((v) =>
  v.name === "RECONCILER_MODE" || v.name === "RECONCILER_GROUP"
)

/** How the output looks (every command). */
export const noColor: Variable = {
  name: "NO_COLOR",
  meaning: "set (not empty): plain text, no ANSI codes (also whenever stdout is not a terminal)",
  default: "unset"
}

/** True when the output must be plain text: stdout is not a terminal, or `NO_COLOR` is set (https://no-color.org). */
export const plainOutput = (): boolean =>
  !process.stdout.isTTY || (process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== "")

/** Runs `effect` with a Console whose text output has its ANSI escape codes removed. */
export const withPlainConsole = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Console.consoleWith((console) => {
    const strip = (args: ReadonlyArray<unknown>) => args.map((a) => (typeof a === "string" ? stripVTControlCharacters(a) : a))
    return Effect.withConsole(effect, {
      ...console,
      log: (...args) => console.log(...strip(args)),
      error: (...args) => console.error(...strip(args)),
      info: (...args) => console.info(...strip(args)),
      warn: (...args) => console.warn(...strip(args))
    })
  })

