/**
 * Peak RSS of the reconciler catching up with backlogs of different sizes: it
 * must not grow with the backlog (bounded queues, batches, no per-event state
 * kept). The servers run in a child process and the reconciler in another
 * (this file with `--reconciler`), so neither the servers' memory nor this
 * process's reference fold counts. The reconciler reports
 * `process.resourceUsage().maxRSS` before it starts the engine (modules
 * loaded, clients connected: the floor) and after it has caught up (the peak).
 * Every read model is verified against the reference fold afterwards.
 *
 *   npm run bench:rss -- [--events 50000,500000] [--cache-size N]
 *
 * `--cache-size` sets the lanes' document caches (10,000 documents each by
 * default), which fill as the read models grow, to tell their share of the peak.
 *
 * Run under `node --import tsx` (the reconciler is started the same way).
 */
import { Effect } from "effect"
import { fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import * as EmbeddedProcess from "../src/internal/embeddedProcess.js"
import type { Servers } from "./support.js"
import { appendBacklog, arg, runMain, engine, eventStoreClient, expected, inChild, load, mongoClient, numbers, rate, verify } from "./support.js"

const self = fileURLToPath(import.meta.url)
const DATABASE = "rss"

interface Reported {
  readonly ms: number
  readonly floorMB: number
  readonly peakMB: number
}

const maxRssMB = () => process.resourceUsage().maxRSS / 1024

/** The reconciler process: catches up, reports its peak RSS. */
const reconciler = (s: Servers) => {
  const floorMB = maxRssMB()
  const cacheSize = arg("cache-size")
  return Effect.runPromise(engine(s, DATABASE, undefined, cacheSize === undefined ? {} : { cacheSize: Number(cacheSize) })).then(
    (result) => process.send!({ ms: result.ms, floorMB, peakMB: maxRssMB() } satisfies Reported, () => process.exit(0)),
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
        execArgv: [...EmbeddedProcess.entry().execArgv],
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
