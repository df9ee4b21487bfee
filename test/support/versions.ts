/**
 * Embedded servers holding a ledger history (Credited events over `docs`
 * documents, appended 100 per stream append), the ports over them, the
 * command line run against them as a child process, and the documents of a
 * collection read with the MongoDB driver.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { Effect, Layer, Redacted } from "effect"
import { MongoClient } from "mongodb"
import * as EventStoreServer from "../../src/embedded/EventStoreServer.js"
import * as MongoServer from "../../src/embedded/MongoServer.js"
import * as EventStoreDB from "../../src/EventStoreDB.js"
import * as MongoReadModelStore from "../../src/MongoReadModelStore.js"
import { spawn } from "./child.js"

export const BIN = "src/bin/reconciler.ts"
const DATABASE = "versions_test"
const clean = { EVENTSTORE_CONNECTION_STRING: undefined, MONGODB_URI: undefined, MONGODB_DATABASE: undefined, RECONCILER_EMBEDDED: undefined }

export const setup = (events: number, docs: number) =>
  Effect.gen(function*() {
    const eventStore = yield* EventStoreServer.make()
    const mongo = yield* MongoServer.make({ transactionLifetimeLimitSeconds: 2 })
    const env = { ...clean, EVENTSTORE_CONNECTION_STRING: eventStore.connectionString, MONGODB_URI: mongo.uri, MONGODB_DATABASE: DATABASE }
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
      (client) => Effect.promise(() => client.dispose())
    )
    const db = yield* Effect.acquireRelease(
      Effect.promise(() => new MongoClient(mongo.uri).connect()),
      (m) => Effect.promise(() => m.close())
    ).pipe(Effect.map((m) => m.db(DATABASE)))
    const sums = new Map<string, number>()
    // Appended in pages of 100 events per stream append.
    for (let start = 0; start < events; start += 100) {
      const page = Array.from({ length: Math.min(100, events - start) }, (_, k) => start + k)
      for (const stream of [0, 1, 2]) {
        const mine = page.filter((i) => i % 3 === stream)
        yield* Effect.promise(() =>
          client.appendToStream(`ledger-${stream}`, mine.map((i) => {
            const doc = `doc-${i % docs}`
            const amount = (i % 5) + 1
            sums.set(doc, (sums.get(doc) ?? 0) + amount)
            return jsonEvent({ type: "Credited", data: { doc, amount } })
          }))
        )
      }
    }
    const ports = Layer.merge(
      EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
      MongoReadModelStore.layer({ uri: mongo.uri, database: DATABASE })
    )
    const cli = (args: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const child = yield* spawn(BIN, args, env)
        const exit = yield* child.exit("60 seconds")
        return { code: exit.code, output: child.output() }
      })
    const documents = (collection: string) =>
      Effect.promise(() => db.collection(collection).find({}).toArray()).pipe(
        Effect.map((docs) => new Map(docs.map((d) => [String(d._id), d])))
      )
    return { env, db, sums, ports, cli, documents }
  })

