/**
 * The demo's bank tellers: the simulated bank appends its events from a process
 * of its own, as a real bank's write side would. In the demo's process they
 * competed with the engine for one thread, and the engine, not the bank, set
 * the pace of appending (about 1,100 events/s against 6,500 alone).
 *
 * {@link make} forks examples/tellersChild.ts for the current scope (killed
 * when the scope closes; the child exits when its parent goes away), or takes
 * the child {@link prestart} forked first thing, so that it loads while the
 * parent loads and starts the servers. {@link Tellers.append} then hands it the
 * plan and resolves when every event is appended, reporting acknowledged `$all`
 * prepare positions as it goes (the demo's progress).
 */
import { Data, Effect } from "effect"
import type { Scope } from "effect"
import { fork } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

/** What the tellers append. */
export interface Plan {
  readonly connectionString: string
  readonly events: number
  readonly seed: number
  /** A prefix for every id (runs against a real EventStoreDB never share streams); "" for none. */
  readonly run: string
}

/** The tellers' process failed, or an append failed. */
export class TellersError extends Data.TaggedError("TellersError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** The forked tellers. */
export interface Tellers {
  /** Appends the plan's events; `onAppended` gets the acknowledged positions, in batches. */
  readonly append: (plan: Plan, onAppended: (positions: ReadonlyArray<bigint>) => void) => Effect.Effect<void, TellersError>
}

export type Request = { readonly type: "append"; readonly plan: Plan }
export type Reply =
  | { readonly type: "loaded" }
  | { readonly type: "appended"; readonly positions: ReadonlyArray<bigint> }
  | { readonly type: "done" }
  | { readonly type: "failed"; readonly message: string }

/** A forked tellers' process, and whether it has loaded (it says so once it reads its requests). */
interface Forked {
  readonly child: ChildProcess
  readonly loaded: () => boolean
}

const spawn = (): Forked => {
  const self = fileURLToPath(import.meta.url)
  const ext = path.extname(self)
  // Under tsx the child needs its loader; compiled, it needs nothing.
  const execArgv = ext === ".ts" ? ["--import", pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href] : []
  const file = path.join(path.dirname(self), `tellersChild${ext}`)
  // "advanced" serialization carries the bigint positions.
  const child = fork(file, [], { execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"], serialization: "advanced" })
  let loaded = false
  const onMessage = (reply: Reply) => {
    if (reply.type !== "loaded") return
    loaded = true
    child.off("message", onMessage)
  }
  child.on("message", onMessage)
  return { child, loaded: () => loaded }
}

let spare: Forked | undefined

/** Forks the tellers' process now, for the next {@link make} of this process to take. */
export const prestart = (): void => {
  if (spare === undefined) spare = spawn()
}

/** Forks the tellers' process for the current scope (or takes the one {@link prestart} forked). */
export const make: Effect.Effect<Tellers, TellersError, Scope.Scope> = Effect.acquireRelease(
  Effect.try({
    try: () => {
      const taken = spare
      spare = undefined
      return taken !== undefined && taken.child.exitCode === null && taken.child.signalCode === null ? taken : spawn()
    },
    catch: (cause) => new TellersError({ message: `cannot start the tellers' process: ${String(cause)}`, cause })
  }),
  ({ child }) =>
    Effect.async<void>((resume) => {
      if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
      child.once("exit", () => resume(Effect.void))
      child.kill("SIGKILL")
    })
).pipe(Effect.map((forked): Tellers => ({ append: (plan, onAppended) => append(forked, plan, onAppended) })))

const append = ({ child, loaded }: Forked, plan: Plan, onAppended: (positions: ReadonlyArray<bigint>) => void) =>
  Effect.async<void, TellersError>((resume) => {
    const request = () => child.send({ type: "append", plan } satisfies Request)
    const onMessage = (reply: Reply) => {
      if (reply.type === "loaded") return request()
      if (reply.type === "appended") return onAppended(reply.positions)
      off()
      resume(reply.type === "done" ? Effect.void : Effect.fail(new TellersError({ message: reply.message })))
    }
    const onExit = (code: number | null, signal: string | null) => {
      off()
      resume(Effect.fail(new TellersError({ message: `the tellers' process exited (${signal ?? `code ${code}`})` })))
    }
    const off = () => {
      child.off("message", onMessage)
      child.off("exit", onExit)
    }
    child.on("message", onMessage)
    child.on("exit", onExit)
    // Sent once the child listens for it (a message sent before would be lost).
    if (loaded()) request()
    return Effect.sync(off) // interrupted: the scope's release kills the child
  })
