/**
 * The child process of {@link ./embeddedProcess.ts}: starts the embedded servers
 * it is asked for, tells its parent where they listen, and runs until the
 * parent says stop or goes away (the IPC channel closes when the parent dies,
 * however it dies: no orphan).
 *
 * Signals: a terminal's Ctrl-C reaches the whole process group; the servers
 * must outlive the parent's drain, so SIGINT is ignored here and the parent
 * decides when they stop.
 */
import { Effect, Exit, Scope } from "effect"
import * as EventStoreServer from "../embedded/EventStoreServer.js"
import * as MongoServer from "../embedded/MongoServer.js"

/** What the parent asks for (the first IPC message). */
export interface Start {
  readonly type: "start"
  readonly eventStore: { readonly dataDir?: string | undefined } | undefined
  readonly mongo: { readonly dataDir?: string | undefined } | undefined
}

/** What the child answers: `loaded` first (it now reads its start message), then `ready` or `failed`. */
export type Reply =
  | { readonly type: "loaded" }
  | { readonly type: "ready"; readonly eventStore: string | undefined; readonly mongo: string | undefined }
  | { readonly type: "failed"; readonly message: string }

const send = (reply: Reply) => process.send?.(reply)

const main = async () => {
  if (process.send === undefined) {
    console.error("embeddedChild runs as a child process with an IPC channel")
    process.exit(2)
  }
  process.on("SIGINT", () => {})
  const scope = Effect.runSync(Scope.make())
  let stopping = false
  const stop = async (code: number) => {
    if (stopping) return
    stopping = true
    await Effect.runPromise(Scope.close(scope, Exit.void)).catch(() => undefined)
    process.exit(code)
  }
  process.on("disconnect", () => void stop(0))
  process.on("SIGTERM", () => void stop(0))
  process.on("message", (message: Start | { readonly type: "stop" }) => {
    if (message.type === "stop") {
      void stop(0)
      return
    }
    if (message.type !== "start") return
    // Both servers start at once (each binds its own port and opens its own journal).
    const servers = Effect.all({
      eventStore: message.eventStore === undefined
        ? Effect.succeed(undefined)
        : Effect.map(EventStoreServer.make({ dataDir: message.eventStore.dataDir }), (server) => server.connectionString),
      mongo: message.mongo === undefined
        ? Effect.succeed(undefined)
        : Effect.map(MongoServer.make({ dataDir: message.mongo.dataDir }), (server) => server.uri)
    }, { concurrency: "unbounded" })
    Effect.runPromise(Scope.extend(servers, scope)).then(
      ({ eventStore, mongo }) => send({ type: "ready", eventStore, mongo }),
      (error) => {
        send({ type: "failed", message: error instanceof Error ? error.message : String(error) })
        void stop(1)
      }
    )
  })
  send({ type: "loaded" })
}

void main()
