/**
 * End to end: the engine against the loops a user would otherwise write, through
 * the real clients against the embedded servers, on the openbank projections
 * (examples/openbank.ts). Every read model is verified against the reference fold
 * of the recorded events after every run.
 *
 * 1. backlog: N events already appended; time until `persons` and `accounts` are
 *    complete, for
 *    - the engine (`Reconciler.runAll`, default options, until its checkpoints reach the head),
 *    - a sequential loop as the framework we replace did it: per event decode,
 *      `findOne`, `evolve`, `replaceOne(upsert)`,
 *    - a ceiling: read every event through the client, fold in memory, one
 *      unordered `bulkWrite` of the final documents (no guards, no checkpoint);
 *    with the servers in this process and in a child process. One table per run, with ratios.
 * 2. live (`--live`): the servers in a child process, an appender in another
 *    process at each rate; lag from append (the server's `created`) to the
 *    durable write of each document the event touches: p50 / p99 / max.
 * 3. memory (`--rss`): peak RSS of a reconciler process catching up with two backlogs.
 *
 *   npm run bench:e2e -- [--events 20000,50000] [--servers in-process,child] [--reps 1]
 *                        [--live 500,2000,5000] [--live-seconds 10] [--rss 50000,500000]
 *
 * Run under `node --import tsx` (the child processes are started the same way).
 */
import { EventStoreDBClient, FORWARDS, jsonEvent, START } from "@eventstore/db-client"
import { Effect, Exit, Fiber, Layer, Metric, Redacted, Schema } from "effect"
import type { AnyBulkWriteOperation, Document } from "mongodb"
import { MongoClient } from "mongodb"
import { fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as App from "../src/App.js"
import * as EmbeddedProcess from "../src/internal/embeddedProcess.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import type { Projection as P } from "../src/Projection.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import * as Reconciler from "../src/Reconciler.js"
import type { Documents } from "../examples/demo.js"
import { compare, referenceFold } from "../examples/demo.js"
import type { BankEvent } from "../examples/openbank.js"
import { BankEvents, projections, simulate } from "../examples/openbank.js"

const argv = process.argv.slice(2)
const arg = (name: string): string | undefined => {
  const at = argv.indexOf(`--${name}`)
  return at >= 0 ? argv[at + 1] : undefined
}
const list = (name: string, fallback: string) => (arg(name) ?? fallback).split(",").filter((s) => s.length > 0)
const numbers = (name: string, fallback: string) => list(name, fallback).map(Number)

const self = fileURLToPath(import.meta.url)
const rate = (n: number, ms: number) => Math.round((n / ms) * 1000)
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
const OURS = /^(person|account)-/

// ---- servers ----------------------------------------------------------------------

interface Servers {
  readonly eventStore: string
  readonly mongo: string
}

const inProcess = Effect.gen(function*() {
  const es = yield* EventStoreServer.make({})
  const mongo = yield* MongoServer.make({})
  return { eventStore: es.connectionString, mongo: mongo.uri } satisfies Servers
})

const inChild = EmbeddedProcess.make({ eventStore: {}, mongo: {} }).pipe(
  Effect.map((r): Servers => ({ eventStore: r.eventStore!, mongo: r.mongo! }))
)

const servers = (where: string) => (where === "child" ? inChild : inProcess)

// ---- the backlog ------------------------------------------------------------------

/**
 * Appends `count` openbank events: windows of 1,000 simulated events, each
 * window's events grouped by stream and appended concurrently (one append per
 * stream). The recorded order is what every contender and the reference follow.
 */
const appendBacklog = (client: EventStoreDBClient, count: number, seed: number) =>
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
const readEvents = (client: EventStoreDBClient) =>
  Effect.promise(async () => {
    const events: Array<BankEvent> = []
    for await (const resolved of client.readAll({ direction: FORWARDS, fromPosition: START, resolveLinkTos: false })) {
      const event = resolved.event
      if (event === undefined || !OURS.test(event.streamId) || !(event.type in BankEvents)) continue
      events.push({ type: event.type, data: event.data } as BankEvent)
    }
    return events
  })

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

/** Mismatching documents of a database against the reference. */
const verify = (mongo: MongoClient, database: string, expected: ReturnType<typeof referenceFold>) =>
  Effect.gen(function*() {
    const persons = yield* readCollection(mongo, database, "persons")
    const accounts = yield* readCollection(mongo, database, "accounts")
    return [...compare("persons", expected.persons, persons), ...compare("accounts", expected.accounts, accounts)].length
  })

// ---- contenders -------------------------------------------------------------------

const batchStats = Effect.gen(function*() {
  let count = 0
  let sum = 0
  for (const p of projections) {
    const state = yield* Metric.value(Metric.tagged(Reconciler.metrics.batchSize, "projection", p.name))
    count += state.count
    sum += state.sum
  }
  return { count, sum }
})

const ports = (s: Servers, database: string) =>
  Layer.merge(
    EventStoreDB.layer({ connectionString: Redacted.make(s.eventStore) }),
    MongoReadModelStore.layer({ uri: s.mongo, database })
  )

/** `--profile FILE`: a CPU profile of the engine's catch-up (the first run only). */
const profiling = (() => {
  const file = arg("profile")
  if (file === undefined) return { start: Effect.void, stop: Effect.void }
  let session: import("node:inspector").Session | undefined
  let done = false
  const post = (method: string) =>
    Effect.async<any>((resume) => session!.post(method, (error, result) => resume(error ? Effect.die(error) : Effect.succeed(result))))
  return {
    start: Effect.suspend(() => {
      if (done) return Effect.void
      return Effect.promise(() => import("node:inspector")).pipe(
        Effect.tap((inspector) => Effect.sync(() => {
          session = new inspector.Session()
          session.connect()
        })),
        Effect.zipRight(Effect.suspend(() => post("Profiler.enable"))),
        Effect.zipRight(Effect.suspend(() => post("Profiler.start")))
      )
    }),
    stop: Effect.suspend(() => {
      if (done || session === undefined) return Effect.void
      done = true
      return post("Profiler.stop").pipe(
        Effect.flatMap((result) => Effect.promise(() => import("node:fs/promises").then((fs) => fs.writeFile(file, JSON.stringify(result.profile)))))
      )
    })
  }
})()

/** The engine until its checkpoints reach the head; returns ms and the mean batch size. */
const engine = (s: Servers, database: string, options: Reconciler.RunOptions = {}) =>
  Effect.scoped(Effect.gen(function*() {
    const before = yield* batchStats
    yield* profiling.start
    const started = performance.now()
    const fiber = yield* Effect.forkScoped(Reconciler.runAll(projections, options))
    yield* App.awaitCaughtUpWhile(fiber, projections, { interval: "20 millis" })
    const ms = performance.now() - started
    yield* profiling.stop
    yield* Fiber.interrupt(fiber)
    const after = yield* batchStats
    return { ms, meanBatch: (after.sum - before.sum) / Math.max(1, after.count - before.count) }
  })).pipe(Effect.provide(ports(s, database)))

type Doc = Record<string, unknown>
/** The openbank projections, untyped: the loops below drive them like the engine does. */
const untyped = projections as ReadonlyArray<P<any, any>>
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

const eventOf = (resolved: any, position: bigint) => {
  const e = resolved.event
  return {
    type: e.type,
    data: decoders[e.type]!(e.data),
    id: e.id,
    streamId: e.streamId,
    revision: e.revision,
    position,
    created: e.created
  }
}

/** The loop the framework we replace ran: per event and document, findOne, evolve, replaceOne. */
const sequentialLoop = (s: Servers, database: string) =>
  Effect.promise(async () => {
    const client = EventStoreDBClient.connectionString(s.eventStore)
    const mongo = await new MongoClient(s.mongo).connect()
    try {
      const db = mongo.db(database)
      const started = performance.now()
      let n = 0n
      for await (const resolved of client.readAll({ direction: FORWARDS, fromPosition: START, resolveLinkTos: false })) {
        const recorded = resolved.event
        if (recorded === undefined || !OURS.test(recorded.streamId) || !(recorded.type in BankEvents)) continue
        const event = eventOf(resolved, n++)
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
          }
        }
      }
      return performance.now() - started
    } finally {
      await mongo.close()
      await client.dispose()
    }
  })

/** The ceiling: read through the client, fold in memory, one unordered bulkWrite per collection. */
const ceiling = (s: Servers, database: string) =>
  Effect.promise(async () => {
    const client = EventStoreDBClient.connectionString(s.eventStore)
    const mongo = await new MongoClient(s.mongo).connect()
    try {
      const started = performance.now()
      const states = projections.map(() => new Map<string, unknown>())
      let n = 0n
      for await (const resolved of client.readAll({ direction: FORWARDS, fromPosition: START, resolveLinkTos: false })) {
        const recorded = resolved.event
        if (recorded === undefined || !OURS.test(recorded.streamId) || !(recorded.type in BankEvents)) continue
        const event = eventOf(resolved, n++)
        for (let i = 0; i < untyped.length; i++) {
          const p = untyped[i]!
          if (!(event.type in p.events)) continue
          const state = states[i]!
          const keys = keysOf(p, event)
          const before = new Map(keys.map((k) => [k, state.get(k)]))
          for (const key of keys) {
            const next = p.evolve(before.get(key), event as never, { key, read: (id: string) => before.has(id) ? before.get(id) : state.get(id) })
            if (next === undefined) state.delete(key)
            else state.set(key, next)
          }
        }
      }
      for (let i = 0; i < projections.length; i++) {
        const ops: Array<AnyBulkWriteOperation<Document>> = [...states[i]!].map(([id, doc]) => ({
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

// ---- 1. backlog ---------------------------------------------------------------------

const backlog = (where: string, count: number, reps: number) =>
  Effect.scoped(Effect.gen(function*() {
    const s = yield* servers(where)
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => EventStoreDBClient.connectionString(s.eventStore)),
      (c) => Effect.promise(() => c.dispose())
    )
    const appendStarted = performance.now()
    yield* appendBacklog(client, count, 42)
    const appendMs = performance.now() - appendStarted
    const expected = referenceFold(yield* readEvents(client))
    const mongo = yield* Effect.acquireRelease(
      Effect.promise(() => new MongoClient(s.mongo).connect()),
      (m) => Effect.promise(() => m.close())
    )
    const runs = { engine: [] as Array<number>, loop: [] as Array<number>, ceiling: [] as Array<number>, batch: [] as Array<number> }
    let mismatches = 0
    const only = arg("only")
    for (let rep = 0; rep < reps; rep++) {
      if (only === "engine") {
        const e = yield* engine(s, `e2e_engine_${rep}`)
        runs.engine.push(e.ms, e.ms)
        runs.batch.push(e.meanBatch)
        mismatches += yield* verify(mongo, `e2e_engine_${rep}`, expected)
        runs.loop.push(1)
        runs.ceiling.push(1)
        continue
      }
      // Alternate, so that warm-up and the machine's load fall on all alike.
      const e = yield* engine(s, `e2e_engine_${rep}`)
      runs.engine.push(e.ms)
      runs.batch.push(e.meanBatch)
      mismatches += yield* verify(mongo, `e2e_engine_${rep}`, expected)
      runs.loop.push(yield* sequentialLoop(s, `e2e_loop_${rep}`))
      mismatches += yield* verify(mongo, `e2e_loop_${rep}`, expected)
      runs.ceiling.push(yield* ceiling(s, `e2e_ceiling_${rep}`))
      mismatches += yield* verify(mongo, `e2e_ceiling_${rep}`, expected)
    }
    const engineRate = rate(count, median(runs.engine))
    const loopRate = rate(count, median(runs.loop))
    const ceilingRate = rate(count, median(runs.ceiling))
    return {
      events: count,
      servers: where,
      "engine ev/s": engineRate,
      "loop ev/s": loopRate,
      "ceiling ev/s": ceilingRate,
      "engine / loop": (engineRate / loopRate).toFixed(2),
      "engine / ceiling": (engineRate / ceilingRate).toFixed(2),
      "mean batch": median(runs.batch).toFixed(1),
      "append ev/s": rate(count, appendMs),
      mismatches
    }
  }))

// ---- 2. live ------------------------------------------------------------------------

/** A projection that notes, per document, when the events folded into it were appended. */
const timed = (pending: Map<string, Array<number>>) =>
  untyped.map((p) => ({
    ...p,
    evolve: (doc: unknown, event: any, context: any) => {
      const key = `${p.collection}/${context.key}`
      const list = pending.get(key)
      if (list === undefined) pending.set(key, [event.created.getTime()])
      else list.push(event.created.getTime())
      return p.evolve(doc, event, context)
    }
  }) as P<any, any>)

const live = (ratePerSecond: number, seconds: number) =>
  Effect.scoped(Effect.gen(function*() {
    const s = yield* inChild
    const pending = new Map<string, Array<number>>()
    const lags: Array<number> = []
    const runnables = timed(pending)
    const store = yield* Layer.build(MongoReadModelStore.layer({ uri: s.mongo, database: "e2e_live" }))
    const source = yield* Layer.build(EventStoreDB.layer({ connectionString: Redacted.make(s.eventStore) }))
    const inner = store.unsafeMap.get(ReadModelStore.key) as ReadModelStore["Type"]
    const timedStore: ReadModelStore["Type"] = {
      ...inner,
      write: (batch) =>
        inner.write(batch).pipe(Effect.tap((result) =>
          Effect.sync(() => {
            const now = Date.now()
            const conflicts = new Set(result.conflicts)
            for (const w of batch.writes) {
              if (conflicts.has(w.id)) continue
              const key = `${batch.collection}/${w.id}`
              for (const created of pending.get(key) ?? []) lags.push(now - created)
              pending.delete(key)
            }
          })
        ))
    }
    const before = yield* batchStats
    const fiber = yield* Reconciler.runAll(runnables, {}).pipe(
      Effect.provide(source),
      Effect.provideService(ReadModelStore, timedStore),
      Effect.forkScoped
    )
    const count = Math.round(ratePerSecond * seconds)
    // The appender: another process.
    const appended = yield* Effect.async<number, Error>((resume) => {
      const child = fork(self, ["--appender", s.eventStore, "--rate", String(ratePerSecond), "--count", String(count)], {
        execArgv: EmbeddedProcess.entry().execArgv.length > 0 ? [...EmbeddedProcess.entry().execArgv] : [],
        stdio: ["ignore", "inherit", "inherit", "ipc"]
      })
      child.on("message", (m: { appendedMs: number }) => resume(Effect.succeed(m.appendedMs)))
      child.on("exit", (code) => code !== 0 && resume(Effect.fail(new Error(`appender exited ${code}`))))
    })
    const caughtUp = yield* App.awaitCaughtUpWhile(fiber, runnables, { interval: "20 millis" }).pipe(
      Effect.provide(source),
      Effect.provideService(ReadModelStore, timedStore),
      Effect.timeout("5 seconds"),
      Effect.as(true),
      Effect.catchAll(() => Effect.succeed(false))
    )
    yield* Fiber.interrupt(fiber)
    const after = yield* batchStats
    lags.sort((a, b) => a - b)
    return {
      "rate ev/s": ratePerSecond,
      "achieved append ev/s": rate(count, appended),
      "document writes": lags.length,
      "lag p50 ms": percentile(lags, 50),
      "lag p99 ms": percentile(lags, 99),
      "lag max ms": lags[lags.length - 1] ?? NaN,
      "mean batch": ((after.sum - before.sum) / Math.max(1, after.count - before.count)).toFixed(1),
      "kept up": caughtUp && percentile(lags, 99) < 1000
    }
  }))

/** The appender process: `count` events at `rate` per second, each its own append, 32 in flight at most. */
const appender = async (connectionString: string, ratePerSecond: number, count: number) => {
  const client = EventStoreDBClient.connectionString(connectionString)
  const events = [...simulate(count, 7)]
  const started = performance.now()
  const last = new Map<string, Promise<unknown>>()
  const inFlight = new Set<Promise<unknown>>()
  for (let i = 0; i < events.length; i++) {
    const due = started + (i / ratePerSecond) * 1000
    const wait = due - performance.now()
    if (wait > 1) await new Promise((r) => setTimeout(r, wait))
    while (inFlight.size >= 32) await Promise.race(inFlight)
    const [stream, event] = events[i]!
    const previous = last.get(stream)
    const append: Promise<unknown> = (previous ?? Promise.resolve()).then(() => client.appendToStream(stream, jsonEvent(event)))
    last.set(stream, append)
    inFlight.add(append)
    append.then(() => inFlight.delete(append))
  }
  await Promise.all(inFlight)
  const appendedMs = performance.now() - started
  await client.dispose()
  process.send?.({ appendedMs })
  process.exit(0)
}

// ---- 3. memory ----------------------------------------------------------------------

/** The reconciler process of the memory run: catches up, reports its peak RSS. */
const reconcilerProcess = (s: Servers, database: string) =>
  Effect.runPromise(engine(s, database).pipe(Effect.map((r) => ({ ms: r.ms, maxRssMB: process.resourceUsage().maxRSS / 1024 })))).then(
    (result) => {
      process.send?.(result)
      process.exit(0)
    },
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )

const memory = (count: number) =>
  Effect.scoped(Effect.gen(function*() {
    const s = yield* inChild
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => EventStoreDBClient.connectionString(s.eventStore)),
      (c) => Effect.promise(() => c.dispose())
    )
    yield* appendBacklog(client, count, 42)
    const result = yield* Effect.async<{ ms: number; maxRssMB: number }, Error>((resume) => {
      const child = fork(self, ["--reconciler", s.eventStore, s.mongo], {
        execArgv: [...EmbeddedProcess.entry().execArgv],
        stdio: ["ignore", "inherit", "inherit", "ipc"]
      })
      child.on("message", (m: { ms: number; maxRssMB: number }) => resume(Effect.succeed(m)))
      child.on("exit", (code) => code !== 0 && resume(Effect.fail(new Error(`reconciler exited ${code}`))))
    })
    const mongo = yield* Effect.acquireRelease(
      Effect.promise(() => new MongoClient(s.mongo).connect()),
      (m) => Effect.promise(() => m.close())
    )
    const mismatches = yield* verify(mongo, "e2e_rss", referenceFold(yield* readEvents(client)))
    return {
      events: count,
      "engine ev/s": rate(count, result.ms),
      "reconciler peak RSS MB": Math.round(result.maxRssMB),
      mismatches
    }
  }))

// ---- main ---------------------------------------------------------------------------

const main = Effect.gen(function*() {
  const load = (yield* Effect.promise(() => import("node:os"))).loadavg().map((l) => l.toFixed(1)).join(" ")
  console.log(`e2e benchmark (Node ${process.version}, load ${load}); openbank, persons + accounts`)
  const reps = Number(arg("reps") ?? 1)
  if (arg("events") !== "0") {
    const rows = []
    for (const count of numbers("events", "20000,50000")) {
      for (const where of list("servers", "in-process,child")) {
        const row = yield* backlog(where, count, reps)
        rows.push(row)
        console.log(`backlog ${count} events, servers ${where}, median of ${reps}:`)
        console.table([row])
      }
    }
    console.log("backlog, all runs:")
    console.table(rows)
  }
  if (arg("live") !== undefined) {
    const rows = []
    for (const r of numbers("live", "500,2000,5000")) {
      const row = yield* live(r, Number(arg("live-seconds") ?? 10))
      rows.push(row)
      console.log(`live at ${r} events/s (servers and appender in other processes):`)
      console.table([row])
    }
    const kept = rows.filter((r) => r["kept up"]).map((r) => r["rate ev/s"])
    console.log(`highest rate kept up: ${kept.length === 0 ? "none" : Math.max(...kept)} events/s`)
  }
  if (arg("rss") !== undefined) {
    const rows = []
    for (const count of numbers("rss", "50000,500000")) rows.push(yield* memory(count))
    console.log("peak RSS of the reconciler process (servers in a child process):")
    console.table(rows)
  }
  console.log(`load after: ${(yield* Effect.promise(() => import("node:os"))).loadavg().map((l) => l.toFixed(1)).join(" ")}`)
})

if (argv[0] === "--appender") {
  void appender(argv[1]!, Number(arg("rate")), Number(arg("count")))
} else if (argv[0] === "--reconciler") {
  void reconcilerProcess({ eventStore: argv[1]!, mongo: argv[2]! }, "e2e_rss")
} else {
  Effect.runPromiseExit(main).then((exit) => {
    if (Exit.isFailure(exit)) {
      console.error(exit.cause)
      process.exit(1)
    }
    process.exit(0)
  })
}

