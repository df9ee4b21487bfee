/**
 * The end-to-end tests' view of the ledger (test/support/ledger.ts) over the
 * wire: generated appends, and the read model a plain fold of the recorded
 * events gives.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { Effect } from "effect"
import { MongoClient } from "mongodb"

export const DOCS = 40
export const STREAMS = 12

export interface Recorded {
  readonly position: bigint
  readonly id: string
  readonly type: string
  readonly data: { readonly doc?: string; readonly amount?: number; readonly a?: string; readonly b?: string }
}

/** The ledger's read model after `events` in order: per document, its total and the ids applied. */
export const referenceFold = (events: ReadonlyArray<Recorded>) => {
  const docs = new Map<string, { total: number; applied: Array<string> }>()
  const credit = (doc: string, id: string, amount: number) => {
    const current = docs.get(doc) ?? { total: 0, applied: [] }
    docs.set(doc, { total: current.total + amount, applied: [...current.applied, id] })
  }
  for (const event of events) {
    if (event.type === "Credited") credit(event.data.doc!, event.id, event.data.amount!)
    if (event.type === "Linked") {
      credit(event.data.a!, event.id, 0)
      if (event.data.b !== event.data.a) credit(event.data.b!, event.id, 0)
    }
  }
  return Object.fromEntries([...docs].sort(([a], [b]) => a.localeCompare(b)))
}

/** `count` events in appends of `perAppend` to one stream each, credits and links mixed. */
export const batches = (count: number, perAppend: number, seed: number) => {
  let n = seed
  const next = (max: number) => (n = (n * 1103515245 + 12345) % 2147483648) % max
  const out: Array<{ stream: string; events: Array<ReturnType<typeof jsonEvent>> }> = []
  for (let i = 0; i < count; i += perAppend) {
    const events = Array.from({ length: Math.min(perAppend, count - i) }, () =>
      next(5) === 0
        ? jsonEvent({ type: "Linked", data: { a: `doc-${next(DOCS)}`, b: `doc-${next(DOCS)}` } })
        : jsonEvent({ type: "Credited", data: { doc: `doc-${next(DOCS)}`, amount: 1 + next(100) } }))
    out.push({ stream: `ledger-${next(STREAMS)}`, events })
  }
  return out
}


/**
 * The test's own clients of a running pair of servers, and its views of the
 * ledger: the committed checkpoint, appending, the recorded events, the read
 * model, the head. The clients close with the scope.
 */
export const ledgerViews = (eventStoreUri: string, mongoUri: string, database: string) =>
  Effect.gen(function*() {
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => EventStoreDBClient.connectionString(eventStoreUri)),
      (client) => Effect.promise(() => client.dispose())
    )
    const mongo = yield* Effect.acquireRelease(
      Effect.promise(() => new MongoClient(mongoUri, { useBigInt64: true }).connect()),
      (mongo) => Effect.promise(() => mongo.close())
    )
    const db = mongo.db(database)
    const checkpoint = Effect.promise(() => db.collection("reconciler_checkpoints").findOne({ _id: "ledger@1" as never })).pipe(
      Effect.map((doc) => (doc?.position as bigint | undefined) ?? -1n)
    )
    const append = (count: number, seed: number) =>
      Effect.forEach(batches(count, 10, seed), ({ stream, events }) => Effect.promise(() => client.appendToStream(stream, events)), {
        discard: true
      })
    /** The category's events as recorded, with their `$ce-ledger` positions. */
    const recorded = Effect.promise(async () => {
      const events: Array<Recorded> = []
      for await (const resolved of client.readStream("$ce-ledger", { resolveLinkTos: true })) {
        events.push({
          position: resolved.link!.revision,
          id: resolved.event!.id,
          type: resolved.event!.type,
          data: resolved.event!.data as Recorded["data"]
        })
      }
      return events
    })
    const readModel = Effect.promise(() => db.collection("ledger").find({}).toArray()).pipe(
      Effect.map((docs): Record<string, { total: number; applied: Array<string> }> =>
        Object.fromEntries(
          docs.map(({ _id, total, applied }) => [String(_id), { total, applied }]).sort(([a], [b]) => String(a).localeCompare(String(b)))
        )
      )
    )
    const head = recorded.pipe(Effect.map((events) => events.at(-1)?.position ?? -1n))
    return { checkpoint, append, recorded, readModel, head }
  })
