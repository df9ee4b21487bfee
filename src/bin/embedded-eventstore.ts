/**
 * Runs the embedded EventStoreDB-protocol server standalone until SIGINT/SIGTERM:
 *
 * ```sh
 * tsx src/bin/embedded-eventstore.ts --port 2113 [--host 127.0.0.1] [--data-dir ./data/eventstore]
 * ```
 *
 * Prints the connection string once listening. On shutdown it drops its
 * subscribers, checkpoints its consumer groups and flushes the journal.
 * For development and tests only.
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect } from "effect"
import { parseArgs } from "node:util"
import * as EventStoreServer from "../embedded/EventStoreServer.js"

const program = Effect.gen(function*() {
  const { values } = yield* Effect.try(() =>
    parseArgs({
      args: process.argv.slice(2),
      options: {
        port: { type: "string", default: "2113" },
        host: { type: "string", default: "127.0.0.1" },
        "data-dir": { type: "string" }
      }
    })
  )
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    return yield* Effect.fail(new Error(`invalid --port ${values.port}`))
  }
  const server = yield* EventStoreServer.make({ port, host: values.host, dataDir: values["data-dir"] })
  yield* Console.log(
    `embedded EventStoreDB listening on ${server.connectionString}${
      values["data-dir"] ? ` (journal in ${values["data-dir"]})` : " (in memory)"
    }`
  )
  return yield* Effect.never
}).pipe(Effect.scoped)

NodeRuntime.runMain(program)
