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
  /** When the tellers began appending (`performance.now()` of this process), once they have. */
  readonly since: () => number | undefined
  /** Appends the plan's events; `onAppended` gets the acknowledged positions, in batches. */
  readonly append: (plan: Plan, onAppended: (positions: ReadonlyArray<bigint>) => void) => Effect.Effect<void, TellersError>
}

export type Request = { readonly type: "append"; readonly plan: Plan }
export type Reply =
  | { readonly type: "loaded" }
  | { readonly type: "appended"; readonly positions: ReadonlyArray<bigint> }
  | { readonly type: "done" }
  | { readonly type: "failed"; readonly message: string }

/**
 * A forked tellers' process. Its replies are kept from the start, so that a
 * plan handed over before anyone listens ({@link begin}) loses none.
 */
interface Forked {
  readonly child: ChildProcess
  /** Hands it the plan (sent once it has loaded); only the first call counts. */
  readonly request: (plan: Plan) => void
  /** The plan it was handed (JSON), if any. */
  readonly requested: () => string | undefined
  /** Every reply after `loaded` so far, then each new one, to `listener` (until it returns false). */
  readonly listen: (listener: (reply: Exclude<Reply, { type: "loaded" }>) => boolean) => void
  /** When the plan was handed over (`performance.now()`). */
  readonly since: () => number | undefined
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
  let plan: Plan | undefined
  let since: number | undefined
  const kept: Array<Exclude<Reply, { type: "loaded" }>> = []
  let listener: ((reply: Exclude<Reply, { type: "loaded" }>) => boolean) | undefined
  // Sent once the child listens for it (a message sent before would be lost).
  const send = () => void child.send({ type: "append", plan: plan! } satisfies Request)
  child.on("message", (reply: Reply) => {
    if (reply.type === "loaded") {
      loaded = true
      if (plan !== undefined) send()
    } else if (listener === undefined) kept.push(reply)
    else if (!listener(reply)) listener = undefined
  })
  return {
    child,
    request: (p) => {
      if (plan !== undefined) return
      plan = p
      since = performance.now()
      if (loaded) send()
    },
    requested: () => (plan === undefined ? undefined : JSON.stringify(plan)),
    listen: (l) => {
      for (const reply of kept.splice(0)) if (!l(reply)) return
      listener = l
    },
    since: () => since
  }
}

let spare: Forked | undefined
/** The one {@link prestart} forked, taken or not (what {@link begin} hands the plan to). */
let prestarted: Forked | undefined

/** Forks the tellers' process now, for the next {@link make} of this process to take. */
export const prestart = (): void => {
  if (prestarted === undefined) prestarted = spare = spawn()
}

/**
 * Hands the {@link prestart}ed tellers their plan now: they append while this
 * process is still loading; {@link Tellers.append} of the same plan then
 * reports what they did so far and waits for the rest.
 */
export const begin = (plan: Plan): void => prestarted?.request(plan)

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
).pipe(Effect.map((forked): Tellers => ({ since: forked.since, append: (plan, onAppended) => append(forked, plan, onAppended) })))

const append = (forked: Forked, plan: Plan, onAppended: (positions: ReadonlyArray<bigint>) => void) =>
  Effect.async<void, TellersError>((resume) => {
    const { child } = forked
    const requested = forked.requested()
    if (requested !== undefined && requested !== JSON.stringify(plan)) {
      return resume(Effect.fail(new TellersError({ message: "the tellers were handed another plan" })))
    }
    let ended = false
    const onExit = (code: number | null, signal: string | null) => {
      ended = true
      child.off("exit", onExit)
      resume(Effect.fail(new TellersError({ message: `the tellers' process exited (${signal ?? `code ${code}`})` })))
    }
    child.on("exit", onExit)
    forked.listen((reply) => {
      if (ended) return false
      if (reply.type === "appended") {
        onAppended(reply.positions)
        return true
      }
      ended = true
      child.off("exit", onExit)
      resume(reply.type === "done" ? Effect.void : Effect.fail(new TellersError({ message: reply.message })))
      return false
    })
    forked.request(plan)
    return Effect.sync(() => {
      ended = true // interrupted: the scope's release kills the child
      child.off("exit", onExit)
    })
  })
