/**
 * End to end, backlog: the engine against the loops a user would otherwise
 * write, through the real clients against the embedded servers, on the openbank
 * projections (examples/openbank.ts). N events already appended; time until
 * `persons` and `accounts` are complete, for
 * - the engine (`Reconciler.runAll`, default options, until its checkpoints reach the head),
 * - a sequential loop as the framework we replace did it: per event decode,
 *   `findOne`, `evolve`, `replaceOne(upsert)`,
 * - a ceiling: read every event through the client, fold in memory, one
 *   unordered `bulkWrite` of the final documents (no guards, no checkpoint);
 * with the servers in this process and in a child process. Every read model is
 * verified against the reference fold of the recorded events after every run.
 * One table per run, with ratios. Live lag: bench/live.ts; memory: bench/rss.ts.
 *
 *   npm run bench:e2e -- [--events 20000,50000] [--servers in-process,child] [--reps 1]
 *                        [--only engine,loop,ceiling] [--profile FILE] [--engine-options JSON]
 *
 * `--engine-options '{"batchSize":500}'`: run options for the engine (defaults otherwise).
 */
import { Effect } from "effect"
import type * as Reconciler from "../src/Reconciler.js"
import {
  arg,
  ceiling,
  engine,
  eventStoreClient,
  expected,
  appendBacklog,
  list,
  load,
  median,
  mongoClient,
  numbers,
  rate,
  runMain,
  sequentialLoop,
  servers,
  verify
} from "./support.js"
import type { Servers } from "./support.js"

/** `--profile FILE`: a CPU profile of the engine's catch-up (the first run only). */
const profiling = (() => {
  const file = arg("profile")
  if (file === undefined) return { around: <A, E, R>(effect: Effect.Effect<A, E, R>) => effect }
  let session: import("node:inspector").Session | undefined
  let done = false
  const post = (method: string) =>
    Effect.async<any>((resume) => session!.post(method, (error, result) => resume(error ? Effect.die(error) : Effect.succeed(result))))
  const start = Effect.suspend(() => {
      if (done) return Effect.void
      return Effect.promise(() => import("node:inspector")).pipe(
        Effect.tap((inspector) => Effect.sync(() => {
          session = new inspector.Session()
          session.connect()
        })),
        Effect.zipRight(Effect.suspend(() => post("Profiler.enable"))),
        Effect.zipRight(Effect.suspend(() => post("Profiler.start")))
      )
    })
  const stop = Effect.suspend(() => {
      if (done || session === undefined) return Effect.void
      done = true
      return post("Profiler.stop").pipe(
        Effect.flatMap((result) => Effect.promise(() => import("node:fs/promises").then((fs) => fs.writeFile(file, JSON.stringify(result.profile)))))
      )
    })
  return { around: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.zipRight(start, Effect.zipLeft(effect, stop)) }
})()


const engineOptions = JSON.parse(arg("engine-options") ?? "{}") as Reconciler.RunOptions

/** The contenders; each returns its ms (and the engine its mean batch size). */
const contenders: ReadonlyArray<{
  readonly name: string
  readonly run: (s: Servers, database: string) => Effect.Effect<{ readonly ms: number; readonly meanBatch?: number }, unknown>
}> = [
  { name: "engine", run: (s, database) => engine(s, database, profiling.around, engineOptions) },
  { name: "loop", run: (s, database) => Effect.map(sequentialLoop(s, database), (ms) => ({ ms })) },
  { name: "ceiling", run: (s, database) => Effect.map(ceiling(s, database), (ms) => ({ ms })) }
]

const backlog = (where: string, count: number, reps: number) =>
  Effect.scoped(Effect.gen(function*() {
    const s = yield* servers(where)
    const client = yield* eventStoreClient(s)
    const appendStarted = performance.now()
    yield* appendBacklog(client, count, 42)
    const appendMs = performance.now() - appendStarted
    const reference = yield* expected(client)
    const mongo = yield* mongoClient(s)
    const only = list("only", "engine,loop,ceiling")
    const chosen = contenders.filter((c) => only.includes(c.name))
    const ms = new Map(chosen.map((c) => [c.name, [] as Array<number>]))
    const batches: Array<number> = []
    let mismatches = 0
    for (let rep = 0; rep < reps; rep++) {
      // Alternate, so that warm-up and the machine's load fall on all alike.
      for (const contender of chosen) {
        const database = `e2e_${contender.name}_${rep}`
        const result = yield* contender.run(s, database)
        ms.get(contender.name)!.push(result.ms)
        if (result.meanBatch !== undefined) batches.push(result.meanBatch)
        mismatches += yield* verify(mongo, database, reference)
      }
    }
    const rates = new Map([...ms].map(([name, runs]) => [name, rate(count, median(runs))]))
    const ratio = (a: string, b: string) =>
      rates.has(a) && rates.has(b) ? Number((rates.get(a)! / rates.get(b)!).toFixed(2)) : "-"
    return {
      events: count,
      servers: where,
      ...Object.fromEntries([...rates].map(([name, r]) => [`${name} ev/s`, r])),
      "engine / loop": ratio("engine", "loop"),
      "engine / ceiling": ratio("engine", "ceiling"),
      "mean batch": batches.length === 0 ? "-" : median(batches).toFixed(1),
      "append ev/s": rate(count, appendMs),
      mismatches
    }
  }))

const main = Effect.gen(function*() {
  console.log(`e2e backlog benchmark (Node ${process.version}, load ${load()}); openbank, persons + accounts`)
  const reps = Number(arg("reps") ?? 1)
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
  console.log(`load after: ${load()}`)
})

void runMain(main)
