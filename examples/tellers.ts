/**
 * The demo's bank tellers: the simulated bank appends its events from a process
 * of its own, as a real bank's write side would. In the demo's process they
 * competed with the engine for one thread, and the engine, not the bank, set
 * the pace of appending (about 1,100 events/s against 6,500 alone).
 *
 * {@link make} forks this module for the current scope (killed when the scope
 * closes; the child exits when its parent goes away). The child loads while
 * the parent starts the servers; {@link Tellers.append} then hands it the plan
 * and resolves when every event is appended, reporting each batch of
 * acknowledged `$all` prepare positions as it goes (the demo's progress).
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { Data, Effect } from "effect"
import type { Scope } from "effect"
import { fork } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import type { BankEvent } from "./openbank.js"
import { simulate } from "./openbank.js"

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

type Request = { readonly type: "append"; readonly plan: Plan }
type Reply =
  | { readonly type: "appended"; readonly positions: ReadonlyArray<bigint> }
  | { readonly type: "done" }
  | { readonly type: "failed"; readonly message: string }

/** Appends in flight at once. */
const TELLERS = 16

/** Forks the tellers' process for the current scope. */
export const make: Effect.Effect<Tellers, TellersError, Scope.Scope> = Effect.acquireRelease(
  Effect.try({
    try: () => {
      const self = fileURLToPath(import.meta.url)
      // Under tsx the child needs its loader; compiled, it needs nothing.
      const execArgv = path.extname(self) === ".ts"
        ? ["--import", pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href]
        : []
      // "advanced" serialization carries the bigint positions.
      return fork(self, ["--tellers"], { execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"], serialization: "advanced" })
    },
    catch: (cause) => new TellersError({ message: `cannot start the tellers' process: ${String(cause)}`, cause })
  }),
  (child) =>
    Effect.async<void>((resume) => {
      if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
      child.once("exit", () => resume(Effect.void))
      child.kill("SIGKILL")
    })
).pipe(Effect.map((child): Tellers => ({ append: (plan, onAppended) => append(child, plan, onAppended) })))

const append = (child: ChildProcess, plan: Plan, onAppended: (positions: ReadonlyArray<bigint>) => void) =>
  Effect.async<void, TellersError>((resume) => {
    const onMessage = (reply: Reply) => {
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
    child.send({ type: "append", plan } satisfies Request)
    return Effect.sync(off) // interrupted: the scope's release kills the child
  })

// ---- the child ------------------------------------------------------------------------

/**
 * Tellers append concurrently, each event after those it depends on (its own
 * stream's earlier events, the owner's registration, the credited account's opening).
 */
const tellers = async (plan: Plan, send: (reply: Reply) => void) => {
  const client = EventStoreDBClient.connectionString(plan.connectionString)
  let positions: Array<bigint> = []
  const flush = () => {
    if (positions.length === 0) return
    send({ type: "appended", positions })
    positions = []
  }
  const timer = setInterval(flush, 50)
  try {
    const last = new Map<string, Promise<unknown>>()
    const inFlight = new Set<Promise<unknown>>()
    let appended = 0
    for (const [stream, event] of simulate(plan.events, plan.seed)) {
      const next = plan.run === "" ? { stream, event } : prefix(plan.run, stream, event)
      while (inFlight.size >= TELLERS) await Promise.race(inFlight)
      const after = [next.stream, ...dependencies(next.event)].flatMap((s) => last.get(s) ?? [])
      const append: Promise<unknown> = Promise.all(after)
        .then(() => client.appendToStream(next.stream, jsonEvent(next.event)))
        .then((result) => {
          // the prepare position: how the engine positions several-category subscriptions
          positions.push(result.position?.prepare ?? BigInt(appended))
          appended++
        })
      last.set(next.stream, append)
      inFlight.add(append)
      const settled = () => void inFlight.delete(append)
      append.then(settled, settled) // a failure surfaces through race / all
    }
    await Promise.all(inFlight)
  } finally {
    clearInterval(timer)
    flush()
    await client.dispose()
  }
}

/** The streams whose earlier events an event depends on (besides its own stream's). */
const dependencies = (event: BankEvent): ReadonlyArray<string> =>
  event.type === "BankAccountCreated"
    ? [`person-${event.data.ownerId}`]
    : event.type === "BankAccountTransactionRecorded" && event.data.transaction.kind === "transfer"
    ? [`account-${event.data.transaction.to}`]
    : []

/** The same event with this run's ids (a real EventStoreDB keeps earlier runs' streams). */
const prefix = (run: string, stream: string, event: BankEvent): { stream: string; event: BankEvent } => {
  const id = (s: string) => `${run}${s}`
  const dash = stream.indexOf("-")
  const renamed = `${stream.slice(0, dash + 1)}${id(stream.slice(dash + 1))}`
  switch (event.type) {
    case "PersonRegistered":
      return { stream: renamed, event: { ...event, data: { ...event.data, personId: id(event.data.personId) } } }
    case "BankAccountCreated":
      return {
        stream: renamed,
        event: { ...event, data: { ...event.data, accountId: id(event.data.accountId), ownerId: id(event.data.ownerId) } }
      }
    case "BankAccountTransactionRecorded": {
      const t = event.data.transaction
      return {
        stream: renamed,
        event: {
          ...event,
          data: {
            accountId: id(event.data.accountId),
            ownerId: id(event.data.ownerId),
            transaction: t.kind === "transfer" ? { ...t, to: id(t.to), toOwnerId: id(t.toOwnerId) } : t
          }
        }
      }
    }
  }
}

if (process.argv[2] === "--tellers" && process.send !== undefined) {
  const send = (reply: Reply) => void process.send!(reply)
  // Ctrl-C reaches the whole process group: the parent decides when the tellers stop.
  process.on("SIGINT", () => {})
  process.on("disconnect", () => process.exit(0))
  process.on("message", (request: Request) => {
    if (request.type !== "append") return
    tellers(request.plan, send).then(
      () => send({ type: "done" }),
      (error) => send({ type: "failed", message: error instanceof Error ? error.message : String(error) })
    )
  })
}
