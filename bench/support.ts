/**
 * What the end-to-end benchmarks share (bench/e2e.ts, bench/live.ts,
 * bench/rss.ts): the servers (in this process or in a child process), the
 * openbank backlog, the reference check of the read models, the engine run
 * until caught up, and the per-event loop the engine replaces.
 *
 * Everything goes through the real clients against the embedded servers.
 */
import { EventStoreDBClient, FORWARDS, jsonEvent, START } from "@eventstore/db-client"
import { Effect, Exit, Fiber, Layer, Metric, Redacted, Schema } from "effect"
import type { Db, Document } from "mongodb"
import { MongoClient } from "mongodb"
import * as os from "node:os"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as App from "../src/App.js"
import * as EmbeddedProcess from "../src/internal/embeddedProcess.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import type { Projection as P } from "../src/Projection.js"
import * as Reconciler from "../src/Reconciler.js"
import type { Documents } from "../examples/demo.js"
import { compare, referenceFold } from "../examples/demo.js"
import type { BankEvent } from "../examples/openbank.js"
import { BankEvents, projections, simulate } from "../examples/openbank.js"

// ---- command line -----------------------------------------------------------------

const argv = process.argv.slice(2)
/** The value after `--name`, if any. */
export const arg = (name: string): string | undefined => {
  const at = argv.indexOf(`--${name}`)
  return at >= 0 ? argv[at + 1] : undefined
}
/** A comma-separated option. */
export const list = (name: string, fallback: string) => (arg(name) ?? fallback).split(",").filter((s) => s.length > 0)
export const numbers = (name: string, fallback: string) => list(name, fallback).map(Number)

/** Runs a benchmark's main effect and exits: 1 with its cause printed when it fails. */
export const runMain = <A, E>(main: Effect.Effect<A, E>) =>
  Effect.runPromiseExit(main).then((exit) => {
    if (Exit.isFailure(exit)) {
      console.error(exit.cause)
      process.exit(1)
    }
    process.exit(0)
  })

export const rate = (n: number, ms: number) => Math.round((n / ms) * 1000)
export const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
/** The `p`th percentile of ascending `sorted` (nearest rank). */
export const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
export const load = () => os.loadavg().map((l) => l.toFixed(1)).join(" ")
/** Milliseconds since the epoch, sub-millisecond, comparable between processes of one machine. */
export const now = () => performance.timeOrigin + performance.now()

/** The openbank streams (everything else in `$all` is the server's). */
export const OURS = /^(person|account)-/

// ---- servers ----------------------------------------------------------------------

export interface Servers {
  readonly eventStore: string
  readonly mongo: string
}

const inProcess = Effect.gen(function*() {
  const es = yield* EventStoreServer.make({})
  const mongo = yield* MongoServer.make({})
  return { eventStore: es.connectionString, mongo: mongo.uri } satisfies Servers
})

/** Both servers in one child process (their CPU and memory are not ours). */
export const inChild = EmbeddedProcess.make({ eventStore: {}, mongo: {} }).pipe(
  Effect.map((r): Servers => ({ eventStore: r.eventStore!, mongo: r.mongo! }))
)

/** `in-process` or `child`, for the current scope. */
export const servers = (where: string) => (where === "child" ? inChild : inProcess)

export const eventStoreClient = (s: Servers) =>
  Effect.acquireRelease(
    Effect.sync(() => EventStoreDBClient.connectionString(s.eventStore)),
    (c) => Effect.promise(() => c.dispose())
  )

export const mongoClient = (s: Servers) =>
  Effect.acquireRelease(
    Effect.promise(() => new MongoClient(s.mongo).connect()),
    (m) => Effect.promise(() => m.close())
  )

// ---- the backlog ------------------------------------------------------------------

/**
 * Appends `count` openbank events: windows of 1,000 simulated events, each
 * window's events grouped by stream and appended concurrently (one append per
 * stream). The recorded order is what every contender and the reference follow.
 */
export const appendBacklog = (client: EventStoreDBClient, count: number, seed: number) =>
  Effect.promise(async () => {
    let window: Array<readonly [string, BankEvent]> = []
    const flush = async () => {
      const byStream = new Map<string, Array<BankEvent>>()
      for (const [stream, event] of window) {
        const events = byStream.get(stream)
        if (events === undefined) byStream.set(stream, [event])
        else events.push(event)
      }
      const entries = [...byStream]
      for (let i = 0; i < entries.length; i += 32) {
        await Promise.all(
          entries.slice(i, i + 32).map(([stream, events]) => client.appendToStream(stream, events.map((e) => jsonEvent(e))))
        )
      }
      window = []
    }
    for (const entry of simulate(count, seed)) {
      window.push(entry)
      if (window.length >= 1000) await flush()
    }
    await flush()
  })

/** The recorded openbank events, in `$all` order, as the client reads them. */
export const readEvents = (client: EventStoreDBClient) =>
  Effect.promise(async () => {
    const events: Array<BankEvent> = []
    for await (const resolved of client.readAll({ direction: FORWARDS, fromPosition: START, resolveLinkTos: false })) {
      const event = resolved.event
      if (event === undefined || !OURS.test(event.streamId) || !(event.type in BankEvents)) continue
      events.push({ type: event.type, data: event.data } as BankEvent)
    }
    return events
  })

/** The read models every contender must produce from the recorded events. */
export const expected = (client: EventStoreDBClient) => Effect.map(readEvents(client), referenceFold)

const readCollection = (mongo: MongoClient, database: string, collection: string) =>
  Effect.promise(async () => {
    const documents: Documents = new Map()
    for (const doc of await mongo.db(database).collection(collection).find({}).toArray()) {
      const { _id, _reconciler, ...body } = doc
      if ((_reconciler as { deleted?: boolean } | undefined)?.deleted) continue
      documents.set(String(_id), body)
    }
    return documents
  })

/** How many documents of a database differ from the reference. */
export const verify = (mongo: MongoClient, database: string, reference: ReturnType<typeof referenceFold>) =>
  Effect.gen(function*() {
    const persons = yield* readCollection(mongo, database, "persons")
    const accounts = yield* readCollection(mongo, database, "accounts")
    const mismatches = [...compare("persons", reference.persons, persons), ...compare("accounts", reference.accounts, accounts)]
    // A benchmark that finds a wrong document shows a few: a count alone says nothing about the cause.
    for (const m of mismatches.slice(0, 3)) console.error(`mismatch in ${database}: ${JSON.stringify(m, (_, v) => typeof v === "bigint" ? String(v) : v)}`)
    return mismatches.length
  })

// ---- the engine ---------------------------------------------------------------------

/** The engine's batch-size histogram, summed over the openbank projections. */
export const batchStats = Effect.gen(function*() {
  let count = 0
  let sum = 0
  for (const p of projections) {
    const state = yield* Metric.value(Metric.tagged(Reconciler.metrics.batchSize, "projection", p.name))
    count += state.count
    sum += state.sum
  }
  return { count, sum }
})

/** The mean batch size between two {@link batchStats}. */
export const meanBatch = (before: { count: number; sum: number }, after: { count: number; sum: number }) =>
  (after.sum - before.sum) / Math.max(1, after.count - before.count)

/** The production adapters over these servers, read models in `database`. */
export const ports = (s: Servers, database: string) =>
  Layer.merge(
    EventStoreDB.layer({ connectionString: Redacted.make(s.eventStore) }),
    MongoReadModelStore.layer({ uri: s.mongo, database })
  )

/**
 * The engine (`Reconciler.runAll`, default options) until its checkpoints reach
 * the head; `around` wraps the timed part (a profiler). Returns ms and the mean batch size.
 */
export const engine = (
  s: Servers,
  database: string,
  around: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R> = (effect) => effect,
  options: Reconciler.RunOptions = {}
) =>
  Effect.scoped(Effect.gen(function*() {
    const before = yield* batchStats
    const { fiber, ms } = yield* around(Effect.gen(function*() {
      const started = performance.now()
      const fiber = yield* Effect.forkScoped(Reconciler.runAll(projections, options))
      yield* App.awaitCaughtUpWhile(fiber, projections, { interval: "20 millis" })
      return { fiber, ms: performance.now() - started }
    }))
    yield* Fiber.interrupt(fiber)
    return { ms, meanBatch: meanBatch(before, yield* batchStats) }
  })).pipe(Effect.provide(ports(s, database)))

// ---- the loops a user would otherwise write -----------------------------------------

type Doc = Record<string, unknown>
/** The openbank projections, untyped: the loops drive them like the engine does. */
export const untyped = projections as ReadonlyArray<P<any, any>>
const codecs = untyped.map((p) => ({
  decode: Schema.decodeUnknownSync(p.document as Schema.Schema<any, any>),
  encode: Schema.encodeSync(p.document as Schema.Schema<any, any>) as (doc: unknown) => Doc
}))
const decoders = Object.fromEntries(
  Object.entries(BankEvents).map(([type, schema]) => [type, Schema.decodeUnknownSync(schema as Schema.Schema<any, any>)])
)

const keysOf = (p: P<any, any>, event: any): ReadonlyArray<string> => {
  const key = p.key(event)
  return typeof key === "string" ? [key] : [...new Set(key as ReadonlyArray<string>)]
}

/** A resolved openbank event as a projection sees it; undefined for anything else. */
export const eventOf = (resolved: any, position: bigint) => {
  const e = resolved.event
  if (e === undefined || !OURS.test(e.streamId) || !(e.type in BankEvents)) return undefined
  return {
    type: e.type as string,
    data: decoders[e.type]!(e.data),
    id: e.id as string,
    streamId: e.streamId as string,
    revision: e.revision as bigint,
    position,
    created: e.created as Date
  }
}

/**
 * The loop the framework we replace ran: per event and document, `findOne`,
 * `evolve`, `replaceOne(upsert)`. Returns the function applying one event;
 * `written(collection, id)` is called once each document's write is acknowledged.
 */
export const sequentialApply = (db: Db, written: (collection: string, id: string) => void = () => {}) =>
  async (event: NonNullable<ReturnType<typeof eventOf>>) => {
    for (let i = 0; i < untyped.length; i++) {
      const p = untyped[i]!
      if (!(event.type in p.events)) continue
      const collection = db.collection<Document>(p.collection)
      const keys = keysOf(p, event)
      const before = new Map<string, unknown>()
      for (const key of keys) {
        const found = await collection.findOne({ _id: key } as Document)
        if (found === null) continue
        const { _id, ...body } = found
        before.set(key, codecs[i]!.decode(body))
      }
      for (const key of keys) {
        const next = p.evolve(before.get(key), event as never, { key, read: (id: string) => before.get(id) })
        if (next === undefined) await collection.deleteOne({ _id: key } as Document)
        else await collection.replaceOne({ _id: key } as Document, codecs[i]!.encode(next), { upsert: true })
        written(p.collection, key)
      }
    }
  }

/** The sequential loop over the backlog, read with `readAll`; returns ms. */
export const sequentialLoop = (s: Servers, database: string) =>
  Effect.promise(async () => {
    const client = EventStoreDBClient.connectionString(s.eventStore)
    const mongo = await new MongoClient(s.mongo).connect()
    try {
      const apply = sequentialApply(mongo.db(database))
      const started = performance.now()
      let n = 0n
      for await (const resolved of client.readAll({ direction: FORWARDS, fromPosition: START, resolveLinkTos: false })) {
        const event = eventOf(resolved, n)
        if (event === undefined) continue
        n++
        await apply(event)
      }
      return performance.now() - started
    } finally {
      await mongo.close()
      await client.dispose()
    }
  })

/** The ceiling: read through the client, fold in memory, one unordered bulkWrite per collection; returns ms. */
export const ceiling = (s: Servers, database: string) =>
  Effect.promise(async () => {
    const client = EventStoreDBClient.connectionString(s.eventStore)
    const mongo = await new MongoClient(s.mongo).connect()
    try {
      const started = performance.now()
      const states = projections.map(() => new Map<string, unknown>())
      let n = 0n
      for await (const resolved of client.readAll({ direction: FORWARDS, fromPosition: START, resolveLinkTos: false })) {
        const event = eventOf(resolved, n)
        if (event === undefined) continue
        n++
        for (let i = 0; i < untyped.length; i++) {
          const p = untyped[i]!
          if (!(event.type in p.events)) continue
          const state = states[i]!
          const keys = keysOf(p, event)
          const before = new Map(keys.map((k) => [k, state.get(k)]))
          for (const key of keys) {
            const next = p.evolve(before.get(key), event as never, {
              key,
              read: (id: string) => before.has(id) ? before.get(id) : state.get(id)
            })
            if (next === undefined) state.delete(key)
            else state.set(key, next)
          }
        }
      }
      for (let i = 0; i < projections.length; i++) {
        const ops = [...states[i]!].map(([id, doc]) => ({
          replaceOne: { filter: { _id: id } as Document, replacement: codecs[i]!.encode(doc), upsert: true }
        }))
        if (ops.length > 0) await mongo.db(database).collection<Document>(projections[i]!.collection).bulkWrite(ops, { ordered: false })
      }
      return performance.now() - started
    } finally {
      await mongo.close()
      await client.dispose()
    }
  })
