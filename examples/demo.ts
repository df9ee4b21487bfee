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
import { pathToFileURL } from "node:url"
import { parseArgs } from "node:util"
import type { BankEvent } from "./openbank.js"

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

export const canonical = (value: unknown): string =>
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

// ---- the command line ------------------------------------------------------------------

export interface Args {
  readonly events: number
  readonly seed: number
  readonly tamper: boolean
}

export class UsageError extends Error {}

export const parse = (argv: ReadonlyArray<string>): Args | "help" => {
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

// ---- the entry -------------------------------------------------------------------------

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  let args: Args | "help" | undefined
  try {
    args = parse(process.argv.slice(2))
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${usage}`)
    process.exitCode = 2
  }
  if (args === "help") console.log(usage)
  else if (args !== undefined) {
    const chosen = args
    // The servers' and the tellers' processes are forked before this one loads the engine
    // (its modules take seconds under tsx): their loading overlaps ours. With both servers
    // embedded and in memory (the default), the servers start at once, and the bank begins
    // appending as soon as they are up: the engine, once loaded, catches up while it appends.
    const env = process.env
    const embedded = env.EVENTSTORE_CONNECTION_STRING === undefined || env.MONGODB_URI === undefined
    const early = env.EVENTSTORE_CONNECTION_STRING === undefined && env.MONGODB_URI === undefined &&
      env.RECONCILER_DATA_DIR === undefined
    void (embedded ? import("../src/internal/embeddedSpawn.js") : Promise.resolve(undefined)).then((spawn) => {
      spawn?.prestart(early ? { eventStore: {}, mongo: {} } : undefined)
      return import("./tellers.js").then((tellers) => {
        tellers.prestart()
        if (early) {
          void spawn?.spareReady().then((ready) => {
            if (ready?.eventStore !== undefined) {
              tellers.begin({ connectionString: ready.eventStore, events: chosen.events, seed: chosen.seed, run: "" })
            }
          })
        }
      })
    })
      .then(() => import("./demoRun.js"))
      .then((run) => run.start(chosen))
  }
}
