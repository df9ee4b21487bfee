/**
 * The embedded servers in a child process, off the engine's thread: the demo,
 * the examples and `run --embedded` then measure the engine, not the servers
 * competing with it for one event loop.
 *
 * The child's entry is chosen by {@link ./embeddedSpawn.ts}: compiled from
 * `dist/` when that is current, the TypeScript source under tsx otherwise. A
 * child forked early by `EmbeddedSpawn.prestart` is taken instead of a new one.
 *
 * Guarantees: the child is stopped when the scope closes (asked over IPC, then
 * killed after a timeout), and it stops by itself when this process dies (its
 * IPC channel closes). A child that cannot start is a typed
 * {@link EmbeddedProcessError}; so is one that dies before it is ready.
 */
import type { ChildProcess } from "node:child_process"
import { Data, Duration, Effect } from "effect"
import type { Reply } from "./embeddedChild.js"
import * as EmbeddedSpawn from "./embeddedSpawn.js"

/** The child process of the embedded servers could not start. @since 0.1.0 */
export class EmbeddedProcessError extends Data.TaggedError("EmbeddedProcessError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

export interface Options {
  /** Start the EventStoreDB server (with this journal directory, if any). */
  readonly eventStore?: { readonly dataDir?: string | undefined } | undefined
  /** Start the MongoDB server (with this journal directory, if any). */
  readonly mongo?: { readonly dataDir?: string | undefined } | undefined
  /** How long the child may take to start. Default 30 s. */
  readonly startTimeout?: Duration.DurationInput | undefined
}

export interface Running {
  readonly eventStore: string | undefined
  readonly mongo: string | undefined
  readonly pid: number
}

/** The child's entry and the node flags it needs. */
export const entry = EmbeddedSpawn.entry

/** Starts the servers in a child process for the current scope. */
export const make = (options: Options): Effect.Effect<Running, EmbeddedProcessError, import("effect").Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ child: ChildProcess; reply: Extract<Reply, { type: "ready" }> }, EmbeddedProcessError>((resume) => {
      const request: EmbeddedSpawn.StartRequest = { eventStore: options.eventStore, mongo: options.mongo }
      let forked: EmbeddedSpawn.Forked
      try {
        const spare = EmbeddedSpawn.takeSpare()
        const started = spare?.started()
        // A spare asked to start other servers is of no use: stopped, and a fresh child forked.
        if (spare !== undefined && started !== undefined && started !== EmbeddedSpawn.startKey(request)) spare.child.kill("SIGKILL")
        forked = spare !== undefined && (started === undefined || started === EmbeddedSpawn.startKey(request)) ? spare : EmbeddedSpawn.spawn()
      } catch (cause) {
        resume(Effect.fail(new EmbeddedProcessError({ message: `cannot start the embedded servers' process: ${String(cause)}`, cause })))
        return
      }
      const child = forked.child
      let done = false
      const finish = (effect: Effect.Effect<{ child: ChildProcess; reply: Extract<Reply, { type: "ready" }> }, EmbeddedProcessError>) => {
        if (done) return
        done = true
        child.off("exit", onExit)
        child.off("error", onError)
        resume(effect)
      }
      const onAnswer = (reply: Exclude<Reply, { type: "loaded" }>) => {
        if (reply.type === "ready") finish(Effect.succeed({ child, reply }))
        else finish(Effect.fail(new EmbeddedProcessError({ message: `the embedded servers did not start: ${reply.message}` })))
      }
      const onExit = (code: number | null, signal: string | null) =>
        finish(Effect.fail(new EmbeddedProcessError({
          message: `the embedded servers' process exited before it was ready (${signal ?? `code ${code}`})`
        })))
      const onError = (cause: Error) =>
        finish(Effect.fail(new EmbeddedProcessError({ message: `the embedded servers' process failed: ${cause.message}`, cause })))
      child.on("exit", onExit)
      child.on("error", onError)
      forked.start(request)
      forked.onAnswer(onAnswer)
      return Effect.sync(() => {
        if (!done) {
          done = true
          child.kill("SIGKILL")
        }
      })
    }).pipe(
      Effect.timeoutFail({
        duration: options.startTimeout ?? "30 seconds",
        onTimeout: () => new EmbeddedProcessError({ message: "the embedded servers did not start in time" })
      })
    ),
    ({ child }) => stop(child)
  ).pipe(
    Effect.map(({ child, reply }) => ({ eventStore: reply.eventStore, mongo: reply.mongo, pid: child.pid ?? -1 }))
  )

/** Asks the child to stop, and kills it if it has not exited after 10 s. */
const stop = (child: ChildProcess): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000)
    child.once("exit", () => {
      clearTimeout(timer)
      resume(Effect.void)
    })
    if (child.connected) child.send({ type: "stop" })
    else child.kill("SIGTERM")
  })
