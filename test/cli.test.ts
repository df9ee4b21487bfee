/**
 * The `reconciler` command line, as a user runs it (a child process): help for
 * every command, exit code 2 on bad usage, and `status` / `dead-letters` against
 * embedded servers reached with connection strings that carry secrets, which
 * never show in the output.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Context, Duration, Effect, Layer, Redacted } from "effect"
import * as App from "../src/App.js"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import * as ConnectionString from "../src/internal/connectionString.js"
import * as Progress from "../src/internal/progress.js"
import * as Usage from "../src/internal/usage.js"
import * as fs from "node:fs"
import * as path from "node:path"
import { BIN, cleanEnv as clean, root, runBin as runCli, spawn } from "./support/child.js"
import { ledger } from "./support/ledger.js"

/** Endpoints nothing listens on: a command that tried to connect would hang until the drivers give up. */
const unreachable = { EVENTSTORE_CONNECTION_STRING: "esdb://127.0.0.1:1?tls=false", MONGODB_URI: "mongodb://127.0.0.1:1/" }
const secret = "hunter2-do-not-print"


describe("reconciler command line", () => {
  it.scopedLive("every command explains itself with --help", () =>
    Effect.gen(function*() {
      const commands: ReadonlyArray<readonly [ReadonlyArray<string>, RegExp]> = [
        [[], /Keeps MongoDB read models reconciled/],
        [["run"], /--batch-size integer[\s\S]*until SIGINT\/SIGTERM/],
        [["status"], /checkpoint, head position of its categories, lag/],
        [["dead-letters"], /Inspect, retry and skip dead-lettered events/],
        [["dead-letters", "list"], /List the open dead letters/],
        [["dead-letters", "show"], /Show one dead letter/],
        [["dead-letters", "retry"], /Apply dead letters again/],
        [["dead-letters", "skip"], /Skip dead letters by decision/],
        [["embedded"], /--eventstore-port integer --mongo-port integer \[--data-dir directory\] \[--transaction-lifetime-limit-seconds integer\]/]
      ]
      const results = yield* Effect.forEach(commands, ([command]) => runCli([...command, "--help"]), { concurrency: 4 })
      results.forEach((result, i) => {
        expect(result.code, `${commands[i]![0].join(" ")}: ${result.output}`).toBe(0)
        expect(result.output).toMatch(commands[i]![1])
      })
    }), { timeout: 180_000 })

  it.scopedLive("an unknown flag, a bad value or a bad setting: a clear message and exit code 2", () =>
    Effect.gen(function*() {
      const module = ["--module", "examples/openbank.ts"]
      const cases: ReadonlyArray<readonly [ReadonlyArray<string>, Record<string, string>, RegExp]> = [
        [["run", ...module, "--bogus"], {}, /unknown argument: '--bogus'/],
        [["run", ...module, "--lanes", "zero"], {}, /'zero' is not a integer/],
        [["run", ...module, "--lanes", "0"], {}, /--lanes must be a positive integer/],
        [["run", ...module, "--mode", "sideways"], {}, /catch-up, persistent/],
        [["status", "--module", "no/such/module.ts"], {}, /no\/such\/module\.ts' must exist/],
        [["embedded", "--eventstore-port", "70000", "--mongo-port", "0"], {}, /--eventstore-port must be a port/],
        [["frobnicate"], {}, /Invalid subcommand for reconciler - use one of 'run'/],
        [["status", ...module], {}, /EVENTSTORE_CONNECTION_STRING to be set/],
        [["run", ...module], { RECONCILER_EMBEDDED: "true", RECONCILER_LANES: "many" }, /RECONCILER_LANES/],
        // Checked before anything connects: nothing listens on these ports, and no connection is tried.
        [["run", ...module], { ...unreachable, RECONCILER_LANES: "many" }, /RECONCILER_LANES: "Expected an integer value/],
        [["run", ...module], { ...unreachable, RECONCILER_DRAIN_TIMEOUT: "soon" }, /RECONCILER_DRAIN_TIMEOUT/],
        [
          ["run", ...module],
          { ...unreachable, EVENTSTORE_CONNECTION_STRING: `esdb://admin:${secret}@db:port?tls=false` },
          /EVENTSTORE_CONNECTION_STRING: "not a valid connection string: at character \d+, expected port number"/
        ],
        [
          ["status", ...module],
          { ...unreachable, EVENTSTORE_CONNECTION_STRING: `esdb://admin:${secret}@db:2113?tls=false&tsl=true` },
          /EVENTSTORE_CONNECTION_STRING: "unknown option "tsl" in the connection string"/
        ],
        [
          ["dead-letters", "list", ...module],
          { ...unreachable, MONGODB_URI: `mongodb://app:${secret}@db/?directConnection=maybe` },
          /MONGODB_URI: "not a valid connection string: directConnection must be either "true" or "false""/
        ]
      ]
      const results = yield* Effect.forEach(cases, ([args, env]) => runCli(args, env), { concurrency: 4 })
      results.forEach((result, i) => {
        expect(result.code, `${cases[i]![0].join(" ")}: ${result.output}`).toBe(2)
        expect(result.output).toMatch(cases[i]![2])
        expect(result.output).not.toContain(secret)
        // Against `unreachable`, the MongoDB driver would try for 30 s before giving up.
        expect(result.took).toBeLessThan(25_000)
      })
    }), { timeout: 180_000 })

  it.scopedLive("help and messages are plain text when stdout is not a terminal, colours or not asked", () =>
    Effect.gen(function*() {
      const child = yield* spawn(BIN, ["run", "--help"], clean, { color: true }) // no NO_COLOR: stdout is a pipe
      expect(yield* child.exit()).toEqual({ code: 0, signal: null })
      expect(child.output()).toContain("ENVIRONMENT")
      expect(child.output()).not.toMatch(/\x1b\[/)
    }))

  it.scopedLive("--help lists every variable the service reads, with its default", () =>
    Effect.gen(function*() {
      // The names App's configuration asks for, recorded as it reads them (nothing set: defaults everywhere).
      const read = new Set<string>()
      const recording = ConfigProvider.fromMap(new Map()).pipe(ConfigProvider.mapInputPath((name) => (read.add(name), name)))
      yield* App.checkConfig.pipe(Effect.withConfigProvider(recording))
      const documented = [...Usage.endpointVariables, ...Usage.engineVariables]
      expect(new Set(documented.map((v) => v.name))).toEqual(read)

      const help = yield* runCli(["run", "--help"])
      const top = yield* runCli(["--help"])
      for (const variable of [...documented, Usage.noColor]) {
        expect(help.output).toContain(variable.name)
        expect(help.output).toContain(`(default: ${variable.default})`)
        expect(top.output).toContain(variable.name)
      }
      const status = yield* runCli(["status", "--help"])
      for (const variable of Usage.endpointVariables) expect(status.output).toContain(variable.name)
    }))

  it.scopedLive("run --embedded prints the servers' addresses; a second signal during the drain stops at once", () =>
    Effect.gen(function*() {
      const service = yield* spawn(BIN, ["run", "--embedded", "--module", "test/support/stuck.ts"], {
        ...clean,
        RECONCILER_DRAIN_TIMEOUT: "60 seconds"
      })
      const eventStoreUri = (yield* service.line(/^embedded EventStoreDB listening on (esdb:\/\/\S+)$/))[1]!
      yield* service.line(/^embedded MongoDB listening on mongodb:\/\/127\.0\.0\.1:\d+\//)
      // The printed address is the server's: a user can append to it.
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStoreUri)),
        (client) => Effect.promise(() => client.dispose())
      )
      yield* Effect.promise(() => client.appendToStream("stuck-1", jsonEvent({ type: "Stuck", data: { n: 1 } })))
      yield* service.line(/handling .*, forever/)

      yield* service.kill("SIGTERM")
      yield* service.line(/^reconciler: SIGTERM: stopping — draining/)
      const signalled = Date.now()
      yield* service.kill("SIGINT")
      expect(yield* service.exit("20 seconds")).toEqual({ code: 130, signal: null })
      expect(Date.now() - signalled).toBeLessThan(10_000) // not the 60 s drain timeout
      expect(service.output()).toMatch(/^reconciler: SIGINT during the drain: stopping at once/m)
    }), { timeout: 90_000 })

  it.scopedLive("status and dead-letters list: figures per projection, quarantined documents, secrets never printed", () =>
    Effect.gen(function*() {
      const eventStore = yield* EventStoreServer.make()
      const mongo = yield* MongoServer.make()
      const secret = "hunter2-do-not-print"
      const env = {
        EVENTSTORE_CONNECTION_STRING: eventStore.connectionString.replace("esdb://", `esdb://admin:${secret}@`),
        MONGODB_URI: `${mongo.uri}&appName=${secret}`,
        MONGODB_DATABASE: "cli_test"
      }

      // A history with three poison events: doc-9 explodes on its last event, doc-1
      // explodes and then has a later event (held), and one event does not match its schema.
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
        (client) => Effect.promise(() => client.dispose())
      )
      const events = [
        ["ledger-1", "Credited", { doc: "doc-1", amount: 5 }],
        ["ledger-2", "Credited", { doc: "doc-9", amount: 7 }],
        ["ledger-1", "Exploded", { doc: "doc-1" }],
        ["ledger-2", "Exploded", { doc: "doc-9" }],
        ["ledger-3", "Credited", { doc: 42, amount: "lots" }],
        ["ledger-1", "Credited", { doc: "doc-1", amount: 1 }]
      ] as const
      for (const [stream, type, data] of events) {
        yield* Effect.promise(() => client.appendToStream(stream, jsonEvent({ type, data: data as never })))
      }
      const ports = Layer.merge(
        EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
        MongoReadModelStore.layer({ uri: mongo.uri, database: "cli_test" })
      )
      yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" }).pipe(Effect.provide(ports))

      const status = yield* runCli(["status", "--module", "test/support/ledger.ts"], env)
      expect(status.code).toBe(0)
      expect(status.output).toMatch(/projection\s+checkpoint\s+head\s+lag\s+dead letters/)
      expect(status.output).toMatch(/ledger@1\s+5\s+5\s+0\s+3/)
      expect(status.output).toContain("EventStoreDB from EVENTSTORE_CONNECTION_STRING")
      // The quarantined documents and the events that block them.
      expect(status.output).toMatch(/ledger@1: doc-1 quarantined at ledger-1@1 \(Exploded\) \[[0-9a-f]{16}\]: evolve threw/)
      expect(status.output).toMatch(/ledger@1: doc-9 quarantined at ledger-2@1 \(Exploded\)/)
      expect(status.output).toMatch(/ledger@1: event ledger-3@0 \(Credited\) dead-lettered/)

      const list = yield* runCli(["dead-letters", "list", "-m", "test/support/ledger.ts"], env)
      expect(list.code).toBe(0)
      expect(list.output).toMatch(/[0-9a-f]{16}\s+ledger@1\s+doc-1\s+ledger-1@1\s+Exploded .* evolve threw on Exploded: Error: exploded on doc-1/)
      expect(list.output).toMatch(/doc-9\s+ledger-2@1 .* exploded on doc-9/)
      expect(list.output).toMatch(/\(unknown\)\s+ledger-3@0 .* does not match the schema of Credited/)
      expect(list.output).toContain("3 dead letters")

      for (const output of [status.output, list.output]) expect(output).not.toContain(secret)
    }), { timeout: 90_000 })
})

describe("progress output", () => {
  /** A fake output stream: what was written, and whether it is a terminal. */
  const sink = (isTTY: boolean) => {
    const writes: Array<string> = []
    const stream = { isTTY, columns: 200, write: (s: string) => writes.push(s) > 0 } as unknown as NodeJS.WriteStream
    return { stream, writes }
  }

  it("the bar fills with the fraction, in eighths, and clamps", () => {
    expect(Progress.bar(0, 8)).toBe(`▕${" ".repeat(8)}▏`)
    expect(Progress.bar(0.5, 8)).toBe(`▕████${" ".repeat(4)}▏`)
    expect(Progress.bar(1 / 16, 8)).toBe(`▕▌${" ".repeat(7)}▏`)
    expect(Progress.bar(2, 8)).toBe("▕████████▏")
    expect(Progress.bar(Number.NaN, 8)).toBe(`▕${" ".repeat(8)}▏`)
  })

  it("a terminal gets one line redrawn in place; anything else gets plain lines every 10 %", () => {
    const tty = sink(true)
    const onTty = Progress.make(tty.stream)
    const plain = sink(false)
    const onPlain = Progress.make(plain.stream)
    for (let i = 0; i <= 100; i += 5) {
      onTty.update({ fraction: i / 100, text: `${i} done` })
      onPlain.update({ fraction: i / 100, text: `${i} done` })
    }
    onTty.done({ fraction: 1, text: "100 done" })
    onPlain.done({ fraction: 1, text: "100 done" })
    expect(tty.writes.every((w) => w.startsWith("\r\x1b[2K") || w === "\n")).toBe(true)
    expect(tty.writes.at(-1)).toBe("\n")
    expect(plain.writes.join("")).not.toContain("\r")
    expect(plain.writes).toHaveLength(11) // 0 %, 10 %, …, 100 %, and the end not repeated
    expect(plain.writes.at(-1)).toBe("100% 100 done\n")
  })
})

describe("App configuration", () => {
  const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

  it.effect("engine settings: defaults, every variable read, bad values rejected", () =>
    Effect.gen(function*() {
      expect(yield* App.settings.pipe(withEnv({}))).toEqual({
        mode: "catch-up",
        lanes: 4,
        batchSize: 500,
        laneBuffer: undefined, // the engine's default: 2 × batchSize
        drainTimeout: Duration.seconds(10),
        commitInterval: Duration.seconds(1),
        group: undefined
      })
      const set = yield* App.settings.pipe(withEnv({
        RECONCILER_MODE: "persistent",
        RECONCILER_LANES: "2",
        RECONCILER_BATCH_SIZE: "50",
        RECONCILER_LANE_BUFFER: "8",
        RECONCILER_DRAIN_TIMEOUT: "3 seconds",
        RECONCILER_COMMIT_INTERVAL: "200 millis",
        RECONCILER_GROUP: "billing"
      }))
      expect(set).toEqual({
        mode: "persistent",
        lanes: 2,
        batchSize: 50,
        laneBuffer: 8,
        drainTimeout: Duration.seconds(3),
        commitInterval: Duration.millis(200),
        group: "billing"
      })
      for (const [name, value] of [["RECONCILER_MODE", "sideways"], ["RECONCILER_LANES", "0"], ["RECONCILER_BATCH_SIZE", "x"], ["RECONCILER_DRAIN_TIMEOUT", "soon"]]) {
        const error = yield* App.settings.pipe(withEnv({ [name!]: value! }), Effect.flip)
        expect(String(error)).toContain(name)
      }
    }))

  it.scoped("endpoints: connection strings are redacted; missing ones are an error unless embedded servers are allowed", () =>
    Effect.gen(function*() {
      const secret = "hunter2-do-not-print"
      const given = yield* Layer.build(App.endpointsLayer()).pipe(
        Effect.map(Context.get(App.Endpoints)),
        withEnv({ EVENTSTORE_CONNECTION_STRING: `esdb://admin:${secret}@db:2113`, MONGODB_URI: `mongodb://u:${secret}@db` })
      )
      expect(Redacted.value(given.eventStore.connectionString)).toContain(secret)
      expect(String(given.eventStore.connectionString)).not.toContain(secret)
      expect(JSON.stringify(given)).not.toContain(secret)
      expect(App.describeEndpoints(given)).toBe(
        "EventStoreDB from EVENTSTORE_CONNECTION_STRING, MongoDB from MONGODB_URI (database read_models)"
      )
      const missing = yield* Layer.build(App.endpointsLayer()).pipe(withEnv({ MONGODB_URI: "mongodb://db" }), Effect.flip)
      expect(String(missing)).toContain("EVENTSTORE_CONNECTION_STRING")
      const embedded = yield* Layer.build(App.endpointsLayer()).pipe(
        Effect.map(Context.get(App.Endpoints)),
        withEnv({ RECONCILER_EMBEDDED: "true", MONGODB_DATABASE: "elsewhere" })
      )
      expect(embedded.eventStore.embedded && embedded.mongo.embedded).toBe(true)
      expect(Redacted.value(embedded.mongo.uri)).toMatch(/^mongodb:\/\/127\.0\.0\.1:\d+\//)
      expect(embedded.mongo.database).toBe("elsewhere")
    }))
})

describe("connection strings", () => {
  it("the clients' parsers decide; messages name the problem, never the value", () => {
    const secret = "hunter2-do-not-print"
    for (const good of [
      "esdb://127.0.0.1:2113?tls=false",
      `esdb+discover://admin:${secret}@a:2113,b:2113?nodePreference=leader`
    ]) expect(ConnectionString.eventStoreProblem(good), good).toBeUndefined()
    // KurrentDB's schemes are its client's to parse (the package is an optional peer dependency).
    const kurrent = fs.existsSync(path.join(root, "node_modules", "@kurrent", "kurrentdb-client"))
    for (const good of [`kurrentdb://admin:${secret}@db:2113?tls=true&tlsVerifyCert=false`, "kurrent+discover://cluster.example.com:2113"]) {
      const found = ConnectionString.eventStoreProblem(good)
      if (kurrent) expect(found, good).toBeUndefined()
      else expect(found, good).toBe("this connection string needs the @kurrent/kurrentdb-client package: npm install @kurrent/kurrentdb-client")
    }
    const bad: ReadonlyArray<readonly [string, RegExp]> = [
      [`http://admin:${secret}@db:2113`, /expected esdb:\/\/ or esdb\+discover:\/\//],
      [`esdb://admin:${secret}@db:x2113`, /expected port number/],
      [`esdb://admin:${secret}@db:2113?tls=maybe`, /expected true or false/],
      [`esdb://admin:${secret}@db:2113?bogus=1`, /unknown option "bogus"/]
    ]
    for (const [value, problem] of bad) {
      const found = ConnectionString.eventStoreProblem(value)
      expect(found, value).toMatch(problem)
      expect(found).not.toContain(secret)
    }
    expect(ConnectionString.mongoProblem(`mongodb://app:${secret}@db:27017/?replicaSet=rs0`)).toBeUndefined()
    expect(ConnectionString.mongoProblem("mongodb+srv://cluster.example.com/")).toBeUndefined()
    for (const [value, problem] of [
      [`mongo://app:${secret}@db`, /Invalid scheme/],
      [`mongodb://app:${secret}@db/?directConnection=maybe`, /directConnection/],
      [`mongodb://app:${secret}@db/?bogusOption=1`, /bogusoption is not supported/],
      [`mongodb://app:${secret}@db:notaport`, /not a valid connection string/]
    ] as const) {
      const found = ConnectionString.mongoProblem(value)
      expect(found, value).toMatch(problem)
      expect(found).not.toContain(secret)
    }
  })
})

describe("App.behind", () => {
  it("how far a checkpoint is behind a head", () => {
    expect(App.behind(5n, 5n)).toBe(0n)
    expect(App.behind(3n, 5n)).toBe(2n)
    expect(App.behind(-1n, 5n)).toBe(6n)
    expect(App.behind(7n, 5n)).toBe(0n)
  })
})
