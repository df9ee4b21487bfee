/**
 * Peak RSS of the reconciler catching up with backlogs of different sizes: it
 * must not grow with the backlog (bounded queues, batches, no per-event state
 * kept). The servers run in a child process and the reconciler in another
 * (this file with `--reconciler`), so neither the servers' memory nor this
 * process's reference fold counts. The reconciler reports
 * `process.resourceUsage().maxRSS` before it starts the engine (modules
 * loaded, clients connected: the floor) and after it has caught up (the peak),
 * the highest `memoryUsage()` figures sampled meanwhile, and the live heap
 * (`heapUsed` after a full GC) at the floor and once caught up.
 * Every read model is verified against the reference fold afterwards.
 *
 *   npm run bench:rss -- [--events 50000,500000] [--cache-size N] [--node-options a,b]
 *
 * `--cache-size` sets the lanes' document caches (10,000 documents each by
 * default), which fill as the read models grow, to tell their share of the peak.
 * `--node-options` (comma-separated) are given to the reconciler's process, e.g.
 * `--max-old-space-size=512`: the live heap stays flat, but by default V8 lets
 * garbage grow to about 4× the live heap before a full GC, and a short run ends
 * before the heap has grown that far (so the peak seems to grow with the backlog).
 * A smaller heap is paid for in GC time (the CPU and GC columns): compare them too.
 *
 * Run under `node --import tsx` (the reconciler is started the same way).
 */
import { Effect, Fiber } from "effect"
import { fork } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { PerformanceObserver } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import * as v8 from "node:v8"
import { projections } from "../examples/openbank.js"
import * as App from "../src/App.js"
import * as EmbeddedSpawn from "../src/internal/embeddedSpawn.js"
import * as Reconciler from "../src/Reconciler.js"
import type { Servers } from "./support.js"
import { appendBacklog, arg, eventStoreClient, expected, inChild, list, load, mongoClient, numbers, ports, rate, runMain, verify } from "./support.js"

const self = fileURLToPath(import.meta.url)
const DATABASE = "rss"

interface Reported {
  readonly ms: number
  readonly floorMB: number
  readonly peakMB: number
  /** Highest values of `process.memoryUsage()` sampled while the engine ran, MB. */
  readonly sampled: Memory
  /** `heapUsed` after a full GC at the moment the engine had caught up (the live heap), MB. */
  readonly liveMB: number
  /** The same, at the floor (before the engine started), MB. */
  readonly liveFloorMB: number
  /** CPU time of the process (user + system) and time in GC pauses while the engine ran, ms. */
  readonly cpuMs: number
  readonly gcMs: number
}

interface Memory {
  readonly rss: number
  readonly heapTotal: number
  readonly heapUsed: number
  readonly external: number
  readonly arrayBuffers: number
}

const MB = 1024 * 1024
const maxRssMB = () => process.resourceUsage().maxRSS / 1024
const memory = (): Memory => {
  const m = process.memoryUsage()
  return { rss: m.rss / MB, heapTotal: m.heapTotal / MB, heapUsed: m.heapUsed / MB, external: m.external / MB, arrayBuffers: m.arrayBuffers / MB }
}
/** A full collection (the child runs with `--expose-gc`), then the live heap in MB. */
const liveHeapMB = () => {
  ;(globalThis as { gc?: () => void }).gc?.()
  return process.memoryUsage().heapUsed / MB
}

/**
 * Watches the process's memory while the engine runs: the highest of each
 * `memoryUsage()` figure, and with `RSS_TIMELINE=file` one JSON line per sample
 * (to tell a live heap that grows from V8 sizing its heap larger). With
 * `RSS_LIVE_EVERY=seconds` a full GC runs at that interval and the line records
 * the live heap (this changes what it measures: investigation only). With
 * `RSS_SNAPSHOTS=dir` a heap snapshot is written once caught up (after the peak
 * is read) and, with `RSS_SNAPSHOT_EVERY=seconds`, at that interval too (blocks
 * the process while it writes: investigation only).
 */
const watch = () => {
  const peak = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }
  const started = performance.now()
  const timeline = process.env.RSS_TIMELINE
  const liveEvery = Number(process.env.RSS_LIVE_EVERY ?? 0) * 1000
  const snapshots = process.env.RSS_SNAPSHOTS
  const snapshotEvery = Number(process.env.RSS_SNAPSHOT_EVERY ?? 0) * 1000
  let lastLive = started
  let lastSnapshot = started
  let snapshot = 0
  const sample = () => {
    const now = performance.now()
    const m = memory()
    for (const k of Object.keys(peak) as Array<keyof Memory>) peak[k] = Math.max(peak[k], m[k])
    let live: number | undefined
    if (liveEvery > 0 && now - lastLive >= liveEvery) {
      lastLive = now
      live = liveHeapMB()
    }
    if (timeline !== undefined) {
      const line = { t: Math.round(now - started), ...Object.fromEntries(Object.entries(m).map(([k, v]) => [k, Math.round(v)])), ...(live === undefined ? {} : { live: Math.round(live) }) }
      fs.appendFileSync(timeline, JSON.stringify(line) + "\n")
    }
    if (snapshots !== undefined && snapshotEvery > 0 && now - lastSnapshot >= snapshotEvery) {
      lastSnapshot = now
      v8.writeHeapSnapshot(path.join(snapshots, `rss-${process.pid}-${String(++snapshot).padStart(2, "0")}.heapsnapshot`))
    }
  }
  const timer = setInterval(sample, 100)
  // CPU and GC time: the cost of a smaller heap shows there, less disturbed by a loaded machine than ev/s.
  const cpu = process.cpuUsage()
  let gcMs = 0
  const gc = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcMs += entry.duration
  })
  gc.observe({ entryTypes: ["gc"] })
  return {
    peak,
    stop: () => {
      sample()
      clearInterval(timer)
      gc.disconnect()
      const used = process.cpuUsage(cpu)
      return { cpuMs: (used.user + used.system) / 1000, gcMs }
    }
  }
}

/** The engine (`Reconciler.runAll`) until caught up; the live heap measured before it stops. */
const engine = (s: Servers, options: Reconciler.RunOptions) =>
  Effect.scoped(Effect.gen(function*() {
    const started = performance.now()
    const fiber = yield* Effect.forkScoped(Reconciler.runAll(projections, options))
    yield* App.awaitCaughtUpWhile(fiber, projections, { interval: "20 millis" })
    const ms = performance.now() - started
    const peakMB = maxRssMB()
    const liveMB = liveHeapMB()
    const snapshots = process.env.RSS_SNAPSHOTS
    if (snapshots !== undefined) v8.writeHeapSnapshot(path.join(snapshots, `rss-${process.pid}-caught-up.heapsnapshot`))
    yield* Fiber.interrupt(fiber)
    return { ms, peakMB, liveMB }
  })).pipe(Effect.provide(ports(s, DATABASE)))

/** The reconciler process: catches up, reports its peak RSS. */
const reconciler = (s: Servers) => {
  const liveFloorMB = liveHeapMB()
  const floorMB = maxRssMB()
  const cacheSize = arg("cache-size")
  const watching = watch()
  return Effect.runPromise(engine(s, cacheSize === undefined ? {} : { cacheSize: Number(cacheSize) })).then(
    (result) => {
      const { cpuMs, gcMs } = watching.stop()
      process.send!(
        { ms: result.ms, floorMB, peakMB: result.peakMB, sampled: watching.peak, liveMB: result.liveMB, liveFloorMB, cpuMs, gcMs } satisfies Reported,
        () => process.exit(0)
      )
    },
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )
}

const measure = (count: number) =>
  Effect.scoped(Effect.gen(function*() {
    const s = yield* inChild
    const client = yield* eventStoreClient(s)
    yield* appendBacklog(client, count, 42)
    const result = yield* Effect.async<Reported, Error>((resume) => {
      const child = fork(self, ["--reconciler", s.eventStore, s.mongo, ...(arg("cache-size") === undefined ? [] : ["--cache-size", arg("cache-size")!])], {
        // --expose-gc: the live heap is measured after a full collection (nothing else changes).
        execArgv: [...EmbeddedSpawn.tsxExecArgv(), "--expose-gc", ...list("node-options", "")],
        stdio: ["ignore", "inherit", "inherit", "ipc"]
      })
      child.on("message", (m: Reported) => resume(Effect.succeed(m)))
      child.on("exit", (code) => code !== 0 && resume(Effect.fail(new Error(`reconciler exited ${code}`))))
    })
    const mongo = yield* mongoClient(s)
    const mismatches = yield* verify(mongo, DATABASE, yield* expected(client))
    return {
      events: count,
      "engine ev/s": rate(count, result.ms),
      "RSS before engine MB": Math.round(result.floorMB),
      "peak RSS MB": Math.round(result.peakMB),
      "heap used peak MB": Math.round(result.sampled.heapUsed),
      "heap total peak MB": Math.round(result.sampled.heapTotal),
      "external peak MB": Math.round(result.sampled.external),
      "live heap before MB": Math.round(result.liveFloorMB),
      "live heap caught up MB": Math.round(result.liveMB),
      "CPU µs/event": Math.round((result.cpuMs * 1000) / count),
      "GC % of CPU": Math.round((100 * result.gcMs) / result.cpuMs),
      mismatches
    }
  }))

const main = Effect.gen(function*() {
  console.log(`peak RSS of the reconciler process (Node ${process.version}, load ${load()}); servers in a child process`)
  const rows = []
  for (const count of numbers("events", "50000,500000")) {
    const row = yield* measure(count)
    rows.push(row)
    console.table([row])
  }
  console.table(rows)
  if (rows.length >= 2) {
    const first = rows[0]!
    const last = rows[rows.length - 1]!
    const growth = (a: number, b: number) => (b / a).toFixed(2)
    console.log(
      `${last.events} vs ${first.events} events (${(last.events / first.events).toFixed(0)}× the backlog): ` +
        `peak RSS ${growth(first["peak RSS MB"], last["peak RSS MB"])}×, ` +
        `above the floor ${
          growth(first["peak RSS MB"] - first["RSS before engine MB"], last["peak RSS MB"] - last["RSS before engine MB"])
        }×`
    )
  }
  console.log(`load after: ${load()}`)
})

if (process.argv[2] === "--reconciler") {
  void reconciler({ eventStore: process.argv[3]!, mongo: process.argv[4]! })
} else {
  void runMain(main)
}
