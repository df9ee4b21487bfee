/**
 * Runs the embedded MongoDB server standalone until SIGINT/SIGTERM:
 *
 * ```sh
 * tsx src/bin/embedded-mongo.ts --port 27017 [--data-dir ./data] [--fsync] [--replica-set rs0]
 * ```
 *
 * Prints the connection string once listening. For development and tests only.
 *
 * @since 0.1.0
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect } from "effect"
import { parseArgs } from "node:util"
import * as MongoServer from "../embedded/MongoServer.js"

const program = Effect.gen(function*() {
  const { values } = yield* Effect.try(() =>
    parseArgs({
      args: process.argv.slice(2),
      options: {
        port: { type: "string", default: "27017" },
        host: { type: "string", default: "127.0.0.1" },
        "data-dir": { type: "string" },
        fsync: { type: "boolean", default: false },
        "replica-set": { type: "string", default: "rs0" }
      }
    })
  )
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 0 || port > 65535) return yield* Effect.fail(new Error(`invalid --port ${values.port}`))
  const server = yield* MongoServer.make({
    port,
    host: values.host,
    dataDir: values["data-dir"],
    fsync: values.fsync,
    replicaSet: values["replica-set"]
  })
  yield* Console.log(`embedded MongoDB listening on ${server.uri}${values["data-dir"] ? ` (data in ${values["data-dir"]})` : " (in memory)"}`)
  return yield* Effect.never
}).pipe(Effect.scoped)

NodeRuntime.runMain(program)
