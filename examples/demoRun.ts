/**
 * The openbank demo's run (examples/demo.ts is the entry: it reads the command
 * line and forks the servers' and the tellers' processes before this module
 * and the engine load).
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Console, Effect, Exit, Fiber, LogLevel, Option, Redacted } from "effect"
import { MongoClient } from "mongodb"
import { randomUUID } from "node:crypto"
import * as App from "../src/App.js"
import * as Logging from "../src/Logging.js"
import * as Progress from "../src/internal/progress.js"
import { Projection, ReadModelStore, Verify } from "../src/index.js"
import type { Args } from "./demo.js"
import { canonical } from "./demo.js"
import { projections } from "./openbank.js"
import * as Tellers from "./tellers.js"

const demo = (args: Args, tellers: Tellers.Tellers) =>
  Effect.gen(function*() {
    const started = performance.now()
    const startUp = started / 1000 // node, modules, the servers' child process
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

    /** When the bank began appending: during start-up when the servers started early. */
    const began = () => Math.min(started, tellers.since() ?? started)
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
        }  ${((performance.now() - began()) / 1000).toFixed(1)} s`
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
    const appendedAt = performance.now()
    yield* App.awaitCaughtUpWhile(engine, projections)
    yield* Fiber.interrupt(reporter)
    yield* observe
    progress.done(line())
    // A clean stop: the engine drains and commits before the clients close.
    yield* Fiber.interrupt(engine)
    const stopped = performance.now()
    const elapsed = (stopped - began()) / 1000 // from the first append

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
    const reports = yield* Verify.verifyAll(projections) // one read of the events for both
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
      `time: start-up ${startUp.toFixed(1)} s, append ${seconds(began(), appendedAt)}` +
        (began() < started ? ` (from ${(began() / 1000).toFixed(1)} s, while this process loaded)` : "") +
        `, caught up ${seconds(appendedAt, stopped)} later, verify ${seconds(stopped, performance.now())}`
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

/** The demo for these arguments; its exit code. */
export const main = (args: Args) =>
  freshDatabase.pipe(
    // The tellers' process loads while the servers start.
    Effect.zipRight(Effect.scoped(Effect.flatMap(Tellers.make, (tellers) =>
      demo(args, tellers).pipe(Effect.provide(App.layer({ embedded: true })))
    ))),
    // The one logger (RECONCILER_LOG_FORMAT); the engine's own logs stay quiet unless something is wrong.
    Effect.provide(Logging.layerConfig({ level: LogLevel.Warning }))
  )

/** Runs the demo as the program: exits with its code. */
export const start = (args: Args): void =>
  NodeRuntime.runMain(main(args), {
    disablePrettyLogger: true,
    teardown: (exit, onExit) => {
      const code = Exit.isSuccess(exit) ? (exit.value as number) : Exit.isInterrupted(exit) ? 130 : 1
      onExit(code)
      process.exit(code)
    }
  })
