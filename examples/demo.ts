/**
 * The openbank demo (`npm start`): the production path end to end.
 *
 * 1. EventStoreDB and MongoDB: the embedded servers, in a child process (off
 *    the engine's thread), unless `EVENTSTORE_CONNECTION_STRING` /
 *    `MONGODB_URI` are set (then those are used).
 * 2. The `persons` and `accounts` projections run in the engine, through the
 *    real `@eventstore/db-client` and `mongodb` clients, while a simulated bank
 *    appends a realistic stream of events.
 * 3. When the projections have caught up they are stopped (drained), and every
 *    read model is verified (`Verify.verify`, as `reconciler verify` does): folded
 *    again from the recorded events and compared document by document.
 *
 * Prints `verified <N> events, <D> documents, 0 mismatches` and exits 0, or lists
 * the differing documents and exits 1. `npm start -- --help` for the options.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Console, Effect, Exit, Fiber, LogLevel, Option, Redacted } from "effect"
import { MongoClient } from "mongodb"
import { randomUUID } from "node:crypto"
import { pathToFileURL } from "node:url"
import { parseArgs } from "node:util"
import * as App from "../src/App.js"
import * as Logging from "../src/Logging.js"
import * as Progress from "../src/internal/progress.js"
import { Projection, ReadModelStore, Verify } from "../src/index.js"
import type { BankEvent } from "./openbank.js"
import { projections } from "./openbank.js"
import * as Tellers from "./tellers.js"

const usage = `Usage: npm start -- [--events N] [--seed S]

The openbank demo: runs the persons and accounts projections while a simulated
bank appends N events, then verifies every read model against a fold of the
recorded events (what reconciler verify does).

Options:
  --events N   how many events to append (default 5000)
  --seed S     the simulation's seed (default 42)
  --tamper     change one stored account before verifying (shows a mismatch being caught)
  --help       show this help

Environment:
  EVENTSTORE_CONNECTION_STRING   use this EventStoreDB instead of the embedded one
  MONGODB_URI                    use this MongoDB instead of the embedded one
  MONGODB_DATABASE               database of the read models (default: read_models embedded,
                                 a fresh one per run on a real MongoDB)
  RECONCILER_LANES, RECONCILER_BATCH_SIZE, ...   engine settings (see docs/service.md)
`

// ---- the reference: a plain fold of the events, written independently of the projections ----

/** A read model as plain documents by id (the bookkeeping field left out). */
export type Documents = Map<string, Record<string, unknown>>

/** What the `persons` and `accounts` collections must hold after `events`, in order. */
export const referenceFold = (events: Iterable<BankEvent>): { persons: Documents; accounts: Documents } => {
  const persons: Documents = new Map()
  const accounts: Documents = new Map()
  const names = new Map<string, string>()
  for (const event of events) {
    switch (event.type) {
      case "PersonRegistered": {
        const { personId, firstName, lastName } = event.data
        persons.set(personId, { firstName, lastName, accounts: persons.get(personId)?.accounts ?? 0 })
        names.set(personId, `${firstName} ${lastName}`)
        accounts.set(`owner-${personId}`, { kind: "owner", name: `${firstName} ${lastName}` })
        break
      }
      case "BankAccountCreated": {
        const { accountId, ownerId, overdraftLimit } = event.data
        const person = persons.get(ownerId)
        if (person) person.accounts = (person.accounts as number) + 1
        accounts.set(accountId, {
          kind: "account",
          ownerId,
          owner: names.get(ownerId) ?? "(unknown)",
          balance: 0,
          overdraftLimit,
          transactions: 0
        })
        break
      }
      case "BankAccountTransactionRecorded": {
        const { accountId, transaction } = event.data
        const move = (id: string, amount: number) => {
          const account = accounts.get(id)
          if (account?.kind !== "account") return
          account.balance = (account.balance as number) + amount
          account.transactions = (account.transactions as number) + 1
        }
        if (transaction.kind === "deposit") move(accountId, transaction.amount)
        else move(accountId, -transaction.amount)
        if (transaction.kind === "transfer") move(transaction.to, transaction.amount)
        break
      }
    }
  }
  return { persons, accounts }
}

/** A document that differs from the reference. */
export interface Mismatch {
  readonly collection: string
  readonly id: string
  readonly expected: unknown
  readonly actual: unknown
}

const canonical = (value: unknown): string =>
  JSON.stringify(value, (_, v) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => a.localeCompare(b)))
      : typeof v === "bigint"
      ? Number(v)
      : v)

/** Compares a collection's documents with the reference, both ways. */
export const compare = (collection: string, expected: Documents, actual: Documents): Array<Mismatch> => {
  const mismatches: Array<Mismatch> = []
  for (const id of new Set([...expected.keys(), ...actual.keys()])) {
    const e = expected.get(id)
    const a = actual.get(id)
    if (e === undefined || a === undefined || canonical(e) !== canonical(a)) {
      mismatches.push({ collection, id, expected: e, actual: a })
    }
  }
  return mismatches
}

// ---- the demo ---------------------------------------------------------------------------

interface Args {
  readonly events: number
  readonly seed: number
  readonly tamper: boolean
}

class UsageError extends Error {}

const parse = (argv: ReadonlyArray<string>): Args | "help" => {
  let values
  try {
    values = parseArgs({
      args: [...argv],
      options: { events: { type: "string" }, seed: { type: "string" }, tamper: { type: "boolean" }, help: { type: "boolean" } },
      strict: true,
      allowPositionals: false
    }).values
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error))
  }
  if (values.help) return "help"
  const integer = (name: string, raw: string | undefined, fallback: number, min: number) => {
    if (raw === undefined) return fallback
    const n = Number(raw)
    if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}, got ${JSON.stringify(raw)}`)
    return n
  }
  return {
    events: integer("events", values.events, 5000, 1),
    seed: integer("seed", values.seed, 42, 1),
    tamper: values.tamper === true
  }
}

const demo = (args: Args, tellers: Tellers.Tellers) =>
  Effect.gen(function*() {
    const started = Date.now()
    const startUp = performance.now() / 1000 // node, modules, the servers' child process
    const endpoints = yield* App.Endpoints
    yield* Console.log(
      `openbank demo: ${args.events} events; ${App.describeEndpoints(endpoints)}` +
        (endpoints.eventStore.embedded && endpoints.mongo.embedded ? " (in a child process)" : "")
    )
    // Ids are unique per run against a real EventStoreDB, so runs never share streams.
    const run = endpoints.eventStore.embedded ? "" : `${randomUUID().slice(0, 8)}`

    // The projections run while the bank appends. Forked into this scope, so that
    // the engine is stopped (and drains) before the layers close the clients.
    const engine = yield* Effect.forkScoped(App.run(projections))

    const progress = Progress.make()
    const positions: Array<bigint> = []
    let sorted = true
    let appended = 0
    const applied = new Map<string, number>(projections.map((p) => [p.name, 0]))
    const line = () => {
      const done = Math.min(...applied.values())
      return {
        fraction: done / args.events,
        text: `appended ${appended}/${args.events}, applied ${
          [...applied].map(([name, n]) => `${name} ${n}`).join(", ")
        }  ${((Date.now() - started) / 1000).toFixed(1)} s`
      }
    }
    const store = yield* ReadModelStore.ReadModelStore
    /** How many of this run's events each projection's checkpoint covers. */
    const observe = Effect.forEach(projections, (projection) =>
      store.readCheckpoint(Projection.checkpointId(projection)).pipe(
        Effect.map(Option.match({
          onNone: () => 0,
          onSome: (checkpoint) => {
            if (!sorted) {
              positions.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
              sorted = true
            }
            return covered(positions, BigInt.asUintN(64, checkpoint))
          }
        })),
        Effect.tap((n) => Effect.sync(() => applied.set(projection.name, n)))
      ))
    const reporter = yield* observe.pipe(
      Effect.zipRight(Effect.sync(() => progress.update(line()))),
      Effect.zipRight(Effect.sleep("100 millis")),
      Effect.forever,
      Effect.forkScoped
    )

    // The bank appends from a process of its own (examples/tellers.ts), off the engine's thread.
    yield* tellers.append(
      { connectionString: Redacted.value(endpoints.eventStore.connectionString), events: args.events, seed: args.seed, run },
      (acknowledged) => {
        for (const position of acknowledged) positions.push(position)
        sorted = false
        appended += acknowledged.length
      }
    )
    const appendedAt = Date.now()
    yield* App.awaitCaughtUpWhile(engine, projections)
    yield* Fiber.interrupt(reporter)
    yield* observe
    progress.done(line())
    // A clean stop: the engine drains and commits before the clients close.
    yield* Fiber.interrupt(engine)
    const stopped = Date.now()
    const elapsed = (stopped - started) / 1000

    if (args.tamper) {
      const mongo = yield* Effect.acquireRelease(
        Effect.promise(() => new MongoClient(Redacted.value(endpoints.mongo.uri)).connect()),
        (mongo) => Effect.promise(() => mongo.close())
      )
      yield* Effect.promise(() =>
        mongo.db(endpoints.mongo.database).collection("accounts").updateOne({ kind: "account" }, { $inc: { balance: 1 } })
      )
    }
    // The check users run in production too (`reconciler verify`): every projection folded
    // again from the recorded events, every stored document compared with the fold.
    const reports = yield* Effect.forEach(projections, (projection) => Verify.verify(projection), { concurrency: "unbounded" })
    const mismatches = reports.flatMap((report) => report.mismatches.map((m) => ({ ...m, collection: report.collection })))
    for (const m of mismatches.slice(0, 50)) {
      yield* Console.error(`mismatch ${m.collection}/${m.id}: expected ${canonical(m.expected)}, got ${canonical(m.stored)}`)
    }
    if (mismatches.length > 50) yield* Console.error(`… and ${mismatches.length - 50} more`)
    const events = Math.max(...reports.map((report) => report.events))
    const documents = reports.reduce((n, report) => n + report.documents, 0)
    yield* Console.log(
      `verified ${events} events, ${documents} documents, ${mismatches.length} mismatch${mismatches.length === 1 ? "" : "es"} ` +
        `(${elapsed.toFixed(1)} s, ${Math.round(events / elapsed)} events/s)`
    )
    const seconds = (from: number, to: number) => `${((to - from) / 1000).toFixed(1)} s`
    yield* Console.log(
      `time: start-up ${startUp.toFixed(1)} s, append ${seconds(started, appendedAt)}, ` +
        `caught up ${seconds(appendedAt, stopped)} later, verify ${seconds(stopped, Date.now())}`
    )
    return mismatches.length === 0 ? 0 : 1
  }).pipe(Effect.scoped)

/** How many positions (sorted ascending) are at or below `checkpoint`. */
const covered = (positions: ReadonlyArray<bigint>, checkpoint: bigint): number => {
  let lo = 0
  let hi = positions.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (positions[mid]! <= checkpoint) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** A fresh database per run on a real MongoDB, unless MONGODB_DATABASE says otherwise. */
const freshDatabase = Effect.sync(() => {
  if (process.env.MONGODB_URI !== undefined && process.env.MONGODB_DATABASE === undefined) {
    process.env.MONGODB_DATABASE = `openbank_demo_${Date.now()}`
  }
})

const main = Effect.suspend(() => {
  let args: Args | "help"
  try {
    args = parse(process.argv.slice(2))
  } catch (error) {
    return Console.error(`${(error as Error).message}\n\n${usage}`).pipe(Effect.as(2))
  }
  if (args === "help") return Console.log(usage).pipe(Effect.as(0))
  const chosen = args
  return freshDatabase.pipe(
    // The tellers' process loads while the servers start.
    Effect.zipRight(Effect.scoped(Effect.flatMap(Tellers.make, (tellers) =>
      demo(chosen, tellers).pipe(Effect.provide(App.layer({ embedded: true })))
    ))),
    // The one logger (RECONCILER_LOG_FORMAT); the engine's own logs stay quiet unless something is wrong.
    Effect.provide(Logging.layerConfig({ level: LogLevel.Warning }))
  )
})

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  NodeRuntime.runMain(main, {
    disablePrettyLogger: true,
    teardown: (exit, onExit) => {
      const code = Exit.isSuccess(exit) ? (exit.value as number) : Exit.isInterrupted(exit) ? 130 : 1
      onExit(code)
      process.exit(code)
    }
  })
}

