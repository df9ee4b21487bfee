/**
 * Openbank, after the sample of the framework this project replaces: people
 * register, open bank accounts, and record deposits, withdrawals and transfers.
 *
 * - `persons`: one document per person (name, number of accounts);
 * - `accounts`: one document per account (owner's name, balance, overdraft
 *   limit, transaction count). The owner's name lives in the person's stream,
 *   not the account's: the projection joins it in (see {@link accounts}).
 *
 * Run it with `npx tsx examples/openbank.ts` (embedded servers unless
 * `EVENTSTORE_CONNECTION_STRING` / `MONGODB_URI` are set). `npm start` runs the
 * bigger demo over the same projections (examples/demo.ts).
 */
import { Console, Context, Effect, Layer, Redacted, Schema } from "effect"
import { MongoClient } from "mongodb"
import { pathToFileURL } from "node:url"
import * as App from "../src/App.js"
import * as Appender from "../src/Appender.js"
import * as Logging from "../src/Logging.js"
import { Projection } from "../src/index.js"
import { simulate } from "./bank.js"

// ---- events: `person-<id>` and `account-<id>` streams ----------------------------

/** Amounts are integer cents. */
const Cents = Schema.Int

/** A transaction as the account's write side recorded it. */
export const Transaction = Schema.Union(
  Schema.Struct({ kind: Schema.Literal("deposit"), amount: Cents }),
  Schema.Struct({ kind: Schema.Literal("withdrawal"), amount: Cents }),
  Schema.Struct({
    kind: Schema.Literal("transfer"),
    amount: Cents,
    /** The credited account, and its owner (the write side knows both). */
    to: Schema.String,
    toOwnerId: Schema.String
  })
)
export type Transaction = typeof Transaction.Type

/** The events, by type. */
export const BankEvents = {
  PersonRegistered: Schema.Struct({ personId: Schema.String, firstName: Schema.String, lastName: Schema.String }),
  BankAccountCreated: Schema.Struct({ accountId: Schema.String, ownerId: Schema.String, overdraftLimit: Cents }),
  /** Recorded in the stream of the account it debits (or credits, for a deposit). */
  BankAccountTransactionRecorded: Schema.Struct({
    accountId: Schema.String,
    ownerId: Schema.String,
    transaction: Transaction
  })
}
export type BankEvent = {
  readonly [K in keyof typeof BankEvents]: { readonly type: K; readonly data: typeof BankEvents[K]["Encoded"] }
}[keyof typeof BankEvents]

// ---- read model 1: persons ---------------------------------------------------------

export const Person = Schema.Struct({ firstName: Schema.String, lastName: Schema.String, accounts: Schema.Int })
export type Person = typeof Person.Type

/** One document per person; an account opened for them counts in. */
export const persons = Projection.make({
  name: "persons",
  categories: ["person", "account"],
  document: Person,
  events: { PersonRegistered: BankEvents.PersonRegistered, BankAccountCreated: BankEvents.BankAccountCreated },
  key: (event) => event.type === "PersonRegistered" ? event.data.personId : event.data.ownerId,
  evolve: (person, event) =>
    event.type === "PersonRegistered"
      ? { firstName: event.data.firstName, lastName: event.data.lastName, accounts: person?.accounts ?? 0 }
      : person && { ...person, accounts: person.accounts + 1 }
})

// ---- read model 2: accounts, with their owner's name -------------------------------

export const Account = Schema.Struct({
  kind: Schema.Literal("account"),
  ownerId: Schema.String,
  owner: Schema.String,
  balance: Cents,
  overdraftLimit: Cents,
  transactions: Schema.Int
})
export type Account = typeof Account.Type

/** What the projection keeps of a person to name account owners: `owner-<personId>`. */
export const Owner = Schema.Struct({ kind: Schema.Literal("owner"), name: Schema.String })

const ownerKey = (personId: string) => `owner-${personId}`

/**
 * One document per account, plus a small `owner-<personId>` document per person.
 *
 * The join: `BankAccountCreated` touches the new account *and* its owner's
 * document; both are in the owner's partition, so one lane applies them in
 * order and `read` gives the owner as it stood before the event. A transaction
 * touches its account (a transfer, both accounts), each in its owner's partition;
 * `key` says which of the event's documents is being evolved.
 */
export const accounts = Projection.make({
  name: "accounts",
  categories: ["person", "account"],
  document: Schema.Union(Account, Owner),
  events: BankEvents,
  key: (event) => {
    switch (event.type) {
      case "PersonRegistered":
        return ownerKey(event.data.personId)
      case "BankAccountCreated":
        return [event.data.accountId, ownerKey(event.data.ownerId)]
      case "BankAccountTransactionRecorded": {
        const { accountId, transaction } = event.data
        return transaction.kind === "transfer" ? [accountId, transaction.to] : accountId
      }
    }
  },
  partition: (event, key) => {
    switch (event.type) {
      case "PersonRegistered":
        return event.data.personId
      case "BankAccountCreated":
        return event.data.ownerId
      case "BankAccountTransactionRecorded": {
        const { accountId, ownerId, transaction } = event.data
        return key === accountId || transaction.kind !== "transfer" ? ownerId : transaction.toOwnerId
      }
    }
  },
  evolve: (document, event, { key, read }): typeof Account.Type | typeof Owner.Type | undefined => {
    switch (event.type) {
      case "PersonRegistered":
        return { kind: "owner", name: `${event.data.firstName} ${event.data.lastName}` }
      case "BankAccountCreated": {
        if (key !== event.data.accountId) return document // the owner's document: unchanged
        const owner = read(ownerKey(event.data.ownerId))
        return {
          kind: "account",
          ownerId: event.data.ownerId,
          owner: owner?.kind === "owner" ? owner.name : "(unknown)",
          balance: 0,
          overdraftLimit: event.data.overdraftLimit,
          transactions: 0
        }
      }
      case "BankAccountTransactionRecorded": {
        if (document?.kind !== "account") return document
        const { amount } = event.data.transaction
        const credited = event.data.transaction.kind === "deposit" ||
          (event.data.transaction.kind === "transfer" && event.data.transaction.to === key)
        return {
          ...document,
          balance: document.balance + (credited ? amount : -amount),
          transactions: document.transactions + 1
        }
      }
    }
  }
})

/** The example's projections, as `reconciler run --module examples/openbank.ts` finds them. */
export const projections = [persons, accounts]

// ---- the write side, in miniature (examples/bank.ts: no library code, so the tellers' process loads fast) ----

export { simulate } from "./bank.js"

// ---- the app -----------------------------------------------------------------------

/** Appends a small history, runs the projections until caught up, prints the read models. */
const main = Effect.gen(function*() {
  const endpoints = yield* App.Endpoints
  yield* Console.log(App.describeEndpoints(endpoints))
  // Through the project's client (either package, by the connection string's scheme).
  const appender = yield* Layer.build(Appender.layer({ connectionString: endpoints.eventStore.connectionString })).pipe(
    Effect.map(Context.get(Appender.Appender))
  )
  for (const [stream, event] of simulate(60)) yield* appender.append(stream, [event])
  yield* App.runUntilCaughtUp(projections)

  const mongo = yield* Effect.acquireRelease(
    Effect.promise(() => new MongoClient(Redacted.value(endpoints.mongo.uri)).connect()),
    (mongo) => Effect.promise(() => mongo.close())
  )
  const db = mongo.db(endpoints.mongo.database)
  const show = { projection: { _reconciler: 0 } }
  yield* Console.log("persons:")
  for (const person of yield* Effect.promise(() => db.collection("persons").find({}, show).toArray())) {
    yield* Console.log(" ", JSON.stringify(person))
  }
  yield* Console.log("accounts:")
  for (const account of yield* Effect.promise(() => db.collection("accounts").find({ kind: "account" }, show).toArray())) {
    yield* Console.log(" ", JSON.stringify(account))
  }
})

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  Effect.runPromise(main.pipe(Effect.scoped, Effect.provide(App.layer({ embedded: true })), Effect.provide(Logging.layerConfig()))).catch((error) => {
    console.error(error)
    process.exit(1)
  })
}
