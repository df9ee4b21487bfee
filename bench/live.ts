/**
 * Live lag: how long after an append is acknowledged its documents are durably
 * written, at a steady rate, for the engine and for the per-event loop it
 * replaces (the baseline), one after the other at each rate.
 *
 * Three processes per run: the servers (`reconciler embedded`'s child process,
 * src/internal/embeddedProcess.ts), an appender (this file with `--appender`),
 * and this process, which runs the reconciler (the library, as a service would).
 *
 * - Start: the appender appends openbank events at the rate, on a timer tick
 *   (every 10 ms, the events due by then): each stream's due events in one
 *   `appendToStream` with its expected revision, many streams at once (each
 *   stream in order: a stream's next append waits for its previous one). It
 *   notes, per event id, when the server acknowledged it, and sends those times
 *   over its IPC channel at the end (a side channel: nothing in the events).
 *   One append per event would not do: the client spends about 0.4 ms of CPU
 *   per append, so one process reached only ≈2,000 appends/s. The rate it
 *   reached is reported next to the one requested.
 * - End: when the write of a document the event touches is acknowledged by
 *   MongoDB (`w: majority`), as the reconciler sees it: the engine's store
 *   `write` returning (a wrapper of the real `MongoReadModelStore`), the loop's
 *   `replaceOne` returning. From then on any reader sees the document, so this
 *   is what users see (a read issued afterwards observes it), with no polling.
 * - Lag: end − start per (event, document), both on the machine's clock
 *   (`performance.timeOrigin + performance.now()` in each process).
 * - Kept up: every event written within 5 s of the appender's last
 *   acknowledgement and p99 < 1 s (a reconciler that falls behind sees its lag
 *   grow for the whole run, far past both).
 *
 *   npm run bench:live -- [--rates 500,2000,5000] [--seconds 10] [--only engine,loop]
 *
 * Run under `node --import tsx` (the appender is started the same way).
 */
import { EventStoreDBClient, jsonEvent, NO_STREAM, START, streamNameFilter } from "@eventstore/db-client"
import { Deferred, Effect, Exit, Fiber, Layer, Redacted } from "effect"
import { MongoClient } from "mongodb"
import { fork } from "node:child_process"
import { randomUUID } from "node:crypto"
import { fileURLToPath } from "node:url"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as EmbeddedSpawn from "../src/internal/embeddedSpawn.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import type { Projection as P } from "../src/Projection.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import * as Reconciler from "../src/Reconciler.js"
import { simulate } from "../examples/openbank.js"
import type { Servers } from "./support.js"
import {
  arg,
  runMain,
  batchStats,
  eventOf,
  inChild,
  list,
  load,
  meanBatch,
  now,
  numbers,
  percentile,
  rate,
  sequentialApply,
  untyped
} from "./support.js"

const self = fileURLToPath(import.meta.url)
/** After the last acknowledgement, how long a contender may take to write everything. */
const GRACE_MS = 5_000

/**
 * What a contender reports: for each (event, document) the time its write was
 * acknowledged; `done` resolves once every event of `expected` ids is written.
 */
class Recorder {
  /** event id → write times of its documents */
  readonly written = new Map<string, Array<number>>()
  private expected: ReadonlySet<string> | undefined
  private missing = 0
  constructor(readonly done: Deferred.Deferred<void>) {}
  write(eventId: string, at: number) {
    const times = this.written.get(eventId)
    if (times !== undefined) return void times.push(at)
    this.written.set(eventId, [at])
    if (this.expected?.has(eventId) === true && --this.missing === 0) Deferred.unsafeDone(this.done, Exit.void)
  }
  expect(ids: ReadonlySet<string>) {
    this.expected = ids
    this.missing = [...ids].filter((id) => !this.written.has(id)).length
    if (this.missing === 0) Deferred.unsafeDone(this.done, Exit.void)
  }
}

// ---- contenders: each runs in the scope until interrupted ----------------------------

/**
 * The engine, default options, with the real MongoDB store wrapped: a projection
 * wrapper notes which events were folded into which document, the store's
 * `write` notes when each of the batch's documents is durable.
 */
const engine = (s: Servers, recorder: Recorder) =>
  Effect.gen(function*() {
    const folded = new Map<string, Set<string>>() // collection/id → event ids folded since its last write
    const runnables = untyped.map((p) => ({
      ...p,
      evolve: (doc: unknown, event: any, context: any) => {
        const key = `${p.collection}/${context.key}`
        const ids = folded.get(key)
        if (ids === undefined) folded.set(key, new Set([event.id]))
        else ids.add(event.id)
        return p.evolve(doc, event, context)
      }
    }) as P<any, any>)
    const store = yield* Layer.build(MongoReadModelStore.layer({ uri: s.mongo, database: "live" }))
    const source = yield* Layer.build(EventStoreDB.layer({ connectionString: Redacted.make(s.eventStore) }))
    const inner = store.unsafeMap.get(ReadModelStore.key) as ReadModelStore["Type"]
    const timed: ReadModelStore["Type"] = {
      ...inner,
      write: (batch) =>
        inner.write(batch).pipe(Effect.tap((result) =>
          Effect.sync(() => {
            const at = now()
            const conflicts = new Set(result.conflicts)
            for (const w of batch.writes) {
              if (conflicts.has(w.id)) continue // the engine loads it again and refolds
              const key = `${batch.collection}/${w.id}`
              for (const id of folded.get(key) ?? []) recorder.write(id, at)
              folded.delete(key)
            }
          })
        ))
    }
    const before = yield* batchStats
    const fiber = yield* Reconciler.runAll(runnables, {}).pipe(
      Effect.provide(source),
      Effect.provideService(ReadModelStore, timed),
      Effect.forkScoped
    )
    return { fiber, meanBatch: Effect.map(batchStats, (after) => meanBatch(before, after)) }
  })

/** The per-event loop, on a catch-up subscription to the openbank streams of `$all`. */
const loop = (s: Servers, recorder: Recorder) =>
  Effect.gen(function*() {
    const client = EventStoreDBClient.connectionString(s.eventStore)
    const mongo = yield* Effect.promise(() => new MongoClient(s.mongo).connect())
    const subscription = client.subscribeToAll({
      fromPosition: START,
      filter: streamNameFilter({ prefixes: ["person-", "account-"] })
    })
    let current = ""
    const apply = sequentialApply(mongo.db("live"), () => recorder.write(current, now()))
    const fiber = yield* Effect.forkScoped(Effect.promise(async () => {
      let n = 0n
      for await (const resolved of subscription) {
        const event = eventOf(resolved, n)
        if (event === undefined) continue
        n++
        current = event.id
        await apply(event)
      }
    }))
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        await subscription.unsubscribe()
        await mongo.close()
        await client.dispose()
      })
    )
    return { fiber, meanBatch: Effect.succeed(1) }
  })

const contenders = { engine, loop } as const

// ---- one run ----------------------------------------------------------------------

interface Appended {
  readonly appendedMs: number
  readonly acks: ReadonlyArray<readonly [id: string, at: number]>
}

const run = (name: keyof typeof contenders, ratePerSecond: number, seconds: number) =>
  Effect.scoped(Effect.gen(function*() {
    const s = yield* inChild
    const recorder = new Recorder(yield* Deferred.make<void>())
    const contender = yield* contenders[name](s, recorder)
    const count = Math.round(ratePerSecond * seconds)
    const appended = yield* Effect.async<Appended, Error>((resume) => {
      const child = fork(self, ["--appender", s.eventStore, "--rate", String(ratePerSecond), "--count", String(count)], {
        execArgv: [...EmbeddedSpawn.tsxExecArgv()],
        stdio: ["ignore", "inherit", "inherit", "ipc"]
      })
      child.on("message", (m: Appended) => resume(Effect.succeed(m)))
      child.on("exit", (code) => code !== 0 && resume(Effect.fail(new Error(`appender exited ${code}`))))
    })
    const acked = new Map(appended.acks)
    recorder.expect(new Set(acked.keys()))
    const lastAck = Math.max(...acked.values())
    const deadline = lastAck + GRACE_MS - now()
    const complete = yield* Deferred.await(recorder.done).pipe(
      Effect.raceFirst(Fiber.join(contender.fiber).pipe(Effect.zipRight(Effect.dieMessage(`${name} stopped`)))),
      Effect.timeout(Math.max(0, deadline)),
      Effect.option,
      Effect.map((o) => o._tag === "Some")
    )
    const lags: Array<number> = []
    for (const [id, ack] of acked) for (const at of recorder.written.get(id) ?? []) lags.push(at - ack)
    lags.sort((a, b) => a - b)
    const batch = yield* contender.meanBatch
    yield* Fiber.interrupt(contender.fiber)
    const written = [...acked.keys()].filter((id) => recorder.written.has(id)).length
    const p99 = percentile(lags, 99)
    return {
      reconciler: name,
      "rate ev/s": ratePerSecond,
      "appended ev/s": rate(count, appended.appendedMs),
      "events written": `${written}/${count}`,
      "lag p50 ms": Math.round(percentile(lags, 50)),
      "lag p99 ms": Math.round(p99),
      "lag max ms": Math.round(lags[lags.length - 1] ?? NaN),
      "mean batch": batch.toFixed(1),
      "kept up": complete && p99 < 1000
    }
  }))

/** The appender's tick: every tick appends the events due by then. */
const TICK_MS = 10
/** Appends in flight at most (each one stream's due events). */
const IN_FLIGHT = 64

/**
 * The appender process: `count` events at `rate` per second, batched per
 * stream on each tick, at most {@link IN_FLIGHT} appends at once.
 */
const appender = async (connectionString: string, ratePerSecond: number, count: number) => {
  const client = EventStoreDBClient.connectionString(connectionString)
  const events = [...simulate(count, 7)].map(([stream, event]) => ({ stream, event: jsonEvent({ id: randomUUID(), type: event.type, data: event.data }) }))
  const acks: Array<readonly [string, number]> = []
  /** Each stream's due events not yet sent, its revision, and whether an append of it is in flight. */
  const queued = new Map<string, Array<(typeof events)[number]["event"]>>()
  const revisions = new Map<string, bigint>()
  const busy = new Set<string>()
  let due = 0
  let acknowledged = 0
  let inFlight = 0
  const started = performance.now()
  const send = () => {
    for (const [stream, batch] of queued) {
      if (inFlight >= IN_FLIGHT) return
      if (busy.has(stream)) continue
      queued.delete(stream)
      busy.add(stream)
      inFlight++
      const revision = revisions.get(stream)
      client.appendToStream(stream, batch, { expectedRevision: revision === undefined ? NO_STREAM : revision }).then(
        () => {
          const at = now()
          for (const event of batch) acks.push([event.id, at])
          revisions.set(stream, (revision ?? -1n) + BigInt(batch.length))
          busy.delete(stream)
          inFlight--
          acknowledged += batch.length
          if (acknowledged === count) void finish()
          else send()
        },
        (error) => {
          console.error(error)
          process.exit(1)
        }
      )
    }
  }
  const tick = () => {
    const target = Math.min(count, Math.floor(((performance.now() - started) / 1000) * ratePerSecond))
    for (; due < target; due++) {
      const { event, stream } = events[due]!
      const batch = queued.get(stream)
      if (batch === undefined) queued.set(stream, [event])
      else batch.push(event)
    }
    send()
    if (due < count) setTimeout(tick, Math.max(0, started + ((Math.floor((performance.now() - started) / TICK_MS) + 1) * TICK_MS) - performance.now()))
  }
  const finish = async () => {
    const appendedMs = performance.now() - started
    await client.dispose()
    process.send!({ appendedMs, acks } satisfies Appended, () => process.exit(0))
  }
  if (count === 0) return finish()
  tick()
}

// ---- main ---------------------------------------------------------------------------

const main = Effect.gen(function*() {
  console.log(`live lag (Node ${process.version}, load ${load()}); openbank, persons + accounts; servers and appender in other processes`)
  const seconds = Number(arg("seconds") ?? 10)
  const only = list("only", "engine,loop") as Array<keyof typeof contenders>
  const rows = []
  for (const r of numbers("rates", "500,2000,5000")) {
    for (const name of only) {
      const row = yield* run(name, r, seconds)
      rows.push(row)
      console.log(`${name} at ${r} events/s for ${seconds} s:`)
      console.table([row])
    }
  }
  console.log("live, all runs (lag: append acknowledged → document write acknowledged):")
  console.table(rows)
  for (const name of only) {
    const kept = rows.filter((r) => r.reconciler === name && r["kept up"]).map((r) => r["rate ev/s"])
    console.log(`${name}: highest rate kept up with: ${kept.length === 0 ? "none" : `${Math.max(...kept)} events/s`}`)
  }
  const target = rows.find((r) => r.reconciler === "engine" && r["rate ev/s"] === 2000)
  if (target !== undefined) console.log(`engine p99 at 2,000 ev/s: ${target["lag p99 ms"]} ms (target < 250 ms)`)
  console.log(`load after: ${load()}`)
})

if (process.argv[2] === "--appender") {
  void appender(process.argv[3]!, Number(arg("rate")), Number(arg("count")))
} else {
  void runMain(main)
}
