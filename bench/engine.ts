/**
 * The engine against a hand-written loop, in one process.
 *
 * 1,000,000 events over 10,000 streams in the in-memory source, projected into the
 * in-memory store. The baseline is a plain TypeScript loop doing the same decode
 * (UTF-8 → JSON → Schema), fold and Map update. Run: `npm run bench:engine`
 * (`-- --events N --streams S --reps R` to change the size; `--profile FILE` writes a CPU
 * profile of the engine's timed runs only). Runs with --expose-gc so that heap figures are
 * measured after full collections.
 */
import { Effect, Either, Schema } from "effect"
import * as EventSource from "../src/EventSource.js"
import * as InMemory from "../src/InMemory.js"
import * as Projection from "../src/Projection.js"
import * as ReadModelStore from "../src/ReadModelStore.js"
import * as Reconciler from "../src/Reconciler.js"

const arg = (name: string, fallback: number) => {
  const at = process.argv.indexOf(`--${name}`)
  return at >= 0 ? Number(process.argv[at + 1]) : fallback
}
const profileFile = (() => {
  const at = process.argv.indexOf("--profile")
  return at >= 0 ? process.argv[at + 1] : undefined
})()
const totalEvents = arg("events", 1_000_000)
const streams = arg("streams", 10_000)

const Account = Schema.Struct({ balance: Schema.Number, transactions: Schema.Number })
const events = {
  Deposited: Schema.Struct({ account: Schema.String, amount: Schema.Number }),
  Withdrawn: Schema.Struct({ account: Schema.String, amount: Schema.Number })
}
type Account = typeof Account.Type

const evolve = (doc: Account | undefined, type: string, amount: number): Account => ({
  balance: (doc?.balance ?? 0) + (type === "Deposited" ? amount : -amount),
  transactions: (doc?.transactions ?? 0) + 1
})

const accounts = Projection.make({
  name: "bench-accounts",
  categories: ["account"],
  document: Account,
  events,
  key: (event) => event.data.account,
  evolve: (doc, event) => evolve(doc, event.type, event.data.amount)
})

// Live memory while the engine runs, measured in a separate, untimed run: every
// 50th store write forces a full GC and reads the heap (the engine keeps the event
// loop busy, so a timer would not get to run).
let peakLiveHeap = 0
let peakRss = 0
let writes = 0
const sample = () => {
  if (++writes % 50 !== 0) return
  gc()
  const usage = process.memoryUsage()
  peakLiveHeap = Math.max(peakLiveHeap, usage.heapUsed)
  peakRss = Math.max(peakRss, usage.rss)
}
const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(0)
const gc = () => (globalThis as { gc?: () => void }).gc?.()
const median = (values: Array<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
const repetitions = arg("reps", 3)

/** `--profile`: the inspector's CPU profiler, running only while the engine's timed runs do. */
const profiler = await (async () => {
  if (profileFile === undefined) return undefined
  const inspector = await import("node:inspector")
  const session = new inspector.Session()
  session.connect()
  const post = (method: string) =>
    new Promise<any>((resolve, reject) => session.post(method, (error, result) => (error ? reject(error) : resolve(result))))
  await post("Profiler.enable")
  return {
    start: Effect.promise(() => post("Profiler.start")),
    // Stopping discards nothing: each stop's nodes are merged into one file at the end.
    stop: Effect.promise(() => post("Profiler.stop")).pipe(Effect.map((result) => result.profile as object))
  }
})()
const profiles: Array<object> = []

const fill = (log: InMemory.EventLog, count: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < count; i++) {
      const account = `a${i % streams}`
      yield* log.append(`account-${i % streams}`, [{
        type: i % 3 === 0 ? "Withdrawn" : "Deposited",
        data: { account, amount: i % 100 }
      }])
    }
  })

/** The baseline: the same work, no engine. */
const plainLoop = (log: InMemory.EventLog) => {
  const text = new TextDecoder()
  const decoders = {
    Deposited: Schema.decodeUnknownEither(events.Deposited),
    Withdrawn: Schema.decodeUnknownEither(events.Withdrawn)
  }
  const docs = new Map<string, Account>()
  const started = performance.now()
  for (const event of log.events) {
    const decode = decoders[event.type as keyof typeof decoders]
    const decoded = decode(JSON.parse(text.decode(event.data)))
    if (Either.isLeft(decoded)) throw new Error("bench data is valid")
    const id = decoded.right.account
    docs.set(id, evolve(docs.get(id), event.type, decoded.right.amount))
  }
  return { seconds: (performance.now() - started) / 1000, docs }
}

const engine = (log: InMemory.EventLog, measureMemory = false) =>
  Effect.scoped(Effect.gen(function*() {
    const store = yield* InMemory.makeStore()
    const started = performance.now()
    const port: ReadModelStore.ReadModelStore["Type"] = {
      ...store.port,
      write: (batch) => measureMemory ? Effect.sync(sample).pipe(Effect.zipRight(store.port.write(batch))) : store.port.write(batch)
    }
    yield* Reconciler.run(accounts, { lanes: 4, batchSize: 500, laneBuffer: 1_000 }).pipe(
      Effect.provideService(EventSource.EventSource, log.port),
      Effect.provideService(ReadModelStore.ReadModelStore, port)
    )
    return { seconds: (performance.now() - started) / 1000, store }
  }))

const measure = (count: number) =>
  Effect.gen(function*() {
    // Chunks of 256: how a real client hands over reads.
    const log = yield* InMemory.makeEventLog({ endAtHead: true, chunkSize: 256 })
    yield* fill(log, count)
    gc()
    const backlog = process.memoryUsage()
    // Alternate the two so that warm-up and machine noise fall on both alike; take medians.
    const plainRates: Array<number> = []
    const engineRates: Array<number> = []
    let mismatches = 0
    for (let rep = 0; rep < repetitions; rep++) {
      const plain = plainLoop(log)
      plainRates.push(count / plain.seconds)
      gc()
      if (profiler !== undefined) yield* profiler.start
      const run = yield* engine(log)
      if (profiler !== undefined) profiles.push(yield* profiler.stop)
      engineRates.push(count / run.seconds)
      // Same read model both ways (the collection copied once, not once per document).
      const documents = run.store.documents(accounts.collection)
      for (const [id, doc] of plain.docs) {
        const stored = documents.get(id)?.body as Account | undefined
        if (stored?.balance !== doc.balance || stored.transactions !== doc.transactions) mismatches++
      }
      gc()
    }
    peakLiveHeap = backlog.heapUsed
    peakRss = backlog.rss
    yield* engine(log, true)
    return {
      count,
      plain: median(plainRates),
      engine: median(engineRates),
      backlog,
      peakRss,
      peakLiveHeap,
      mismatches
    }
  })

const main = Effect.gen(function*() {
  console.log(
    `engine benchmark: ${totalEvents.toLocaleString()} events over ${streams.toLocaleString()} streams, ` +
      `median of ${repetitions} alternating runs (Node ${process.version})`
  )
  const small = yield* measure(Math.floor(totalEvents / 4))
  const full = yield* measure(totalEvents)
  const rate = (n: number) => Math.round(n).toLocaleString()
  console.table([small, full].map((r) => ({
    events: r.count.toLocaleString(),
    "plain loop ev/s": rate(r.plain),
    "engine ev/s": rate(r.engine),
    "engine / plain": (r.engine / r.plain).toFixed(2),
    "live heap with backlog MB": mb(r.backlog.heapUsed),
    "peak live heap, engine MB": mb(r.peakLiveHeap),
    "engine extra MB": mb(r.peakLiveHeap - r.backlog.heapUsed),
    "peak RSS MB": mb(r.peakRss),
    mismatches: r.mismatches
  })))
  console.log(
    "engine extra: the peak live JS heap while the engine runs (its store's documents and the lanes' caches",
    "included) minus the live heap holding the source's backlog. Flat from a quarter to the full backlog: in-flight",
    "deliveries are bounded, so the engine's memory follows the documents, not the backlog."
  )
  if (profileFile !== undefined && profiles.length > 0) {
    // The last (largest) run's profile: one file, readable by any .cpuprofile viewer.
    const fs = yield* Effect.promise(() => import("node:fs/promises"))
    yield* Effect.promise(() => fs.writeFile(profileFile, JSON.stringify(profiles[profiles.length - 1])))
    console.log(`CPU profile of the last timed engine run: ${profileFile}`)
  }
  if (small.mismatches + full.mismatches > 0) yield* Effect.die("the engine and the plain loop disagree")
})

Effect.runPromise(main).catch((error) => {
  console.error(error)
  process.exit(1)
})
