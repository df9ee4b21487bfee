/**
 * The embedded servers in a child process (what `npm start`, the examples and
 * `run --embedded` use): reachable through the real clients, stopped with the
 * scope, gone when the parent dies however it dies, and a typed error when
 * they cannot start.
 */
import { describe, expect, it } from "@effect/vitest"
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { Cause, Effect, Exit, Option, Schedule, Scope } from "effect"
import { MongoClient } from "mongodb"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as EmbeddedProcess from "../src/internal/embeddedProcess.js"
import * as EmbeddedSpawn from "../src/internal/embeddedSpawn.js"

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Polls until the process is gone (a bounded wait for an outside event, not a sleep standing in for one). */
const gone = (pid: number) =>
  Effect.suspend(() => (alive(pid) ? Effect.fail("alive" as const) : Effect.void)).pipe(
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.intersect(Schedule.recurs(200))))
  )

describe("embedded servers in a child process", () => {
  it("run from dist/ when it is current (the test setup builds it), from the sources under tsx when asked", () => {
    expect(EmbeddedSpawn.entry()).toEqual({ file: path.resolve(__dirname, "../dist/internal/embeddedChild.js"), execArgv: [] })
    process.env.RECONCILER_EMBEDDED_FROM_SOURCE = "1"
    try {
      expect(EmbeddedSpawn.entry()).toEqual({ file: path.resolve(__dirname, "../src/internal/embeddedChild.ts"), execArgv: EmbeddedSpawn.tsxExecArgv() })
    } finally {
      delete process.env.RECONCILER_EMBEDDED_FROM_SOURCE
    }
  })

  it.live.each(["compiled", "source", "forked early", "started early"] as const)("serve the real clients, and stop with the scope (%s)", (how) =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      if (how === "source") process.env.RECONCILER_EMBEDDED_FROM_SOURCE = "1"
      const early = how === "forked early"
        ? EmbeddedSpawn.prestart()
        : how === "started early"
        ? EmbeddedSpawn.prestart({ eventStore: {}, mongo: {} })
        : undefined
      const running = yield* EmbeddedProcess.make({ eventStore: {}, mongo: {} }).pipe(
        Scope.extend(scope),
        Effect.ensuring(Effect.sync(() => delete process.env.RECONCILER_EMBEDDED_FROM_SOURCE))
      )
      if (early !== undefined) expect(running.pid).toBe(early)
      expect(EmbeddedSpawn.takeSpare()).toBeUndefined()
      expect(running.pid).not.toBe(process.pid)
      const client = EventStoreDBClient.connectionString(running.eventStore!)
      const appended = yield* Effect.promise(() => client.appendToStream("probe-1", jsonEvent({ type: "Probed", data: { n: 1 } })))
      expect(appended.success).toBe(true)
      yield* Effect.promise(() => client.dispose())
      const mongo = yield* Effect.promise(() => new MongoClient(running.mongo!).connect())
      yield* Effect.promise(() => mongo.db("probe").collection("docs").insertOne({ _id: "a" as never, n: 1 }))
      expect(yield* Effect.promise(() => mongo.db("probe").collection("docs").countDocuments())).toBe(1)
      yield* Effect.promise(() => mongo.close())
      yield* Scope.close(scope, Exit.void)
      expect(alive(running.pid)).toBe(false)
    }), 60_000)

  it.live("a child started early for other servers is not taken: it is stopped and another one forked", () =>
    Effect.gen(function*() {
      const early = EmbeddedSpawn.prestart({ eventStore: {}, mongo: undefined })!
      const running = yield* Effect.scoped(EmbeddedProcess.make({ mongo: {} }))
      expect(running.pid).not.toBe(early)
      expect(running.eventStore).toBeUndefined()
      expect(running.mongo).toMatch(/^mongodb:/)
      yield* gone(early)
    }), 60_000)

  it.live("a server that cannot start is a typed EmbeddedProcessError", () =>
    Effect.gen(function*() {
      // A data directory that is a file: the MongoDB server cannot open its journal.
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "embedded-")), "not-a-directory")
      fs.writeFileSync(file, "")
      const exit = yield* Effect.scoped(EmbeddedProcess.make({ mongo: { dataDir: file } })).pipe(Effect.exit)
      expect(Exit.isFailure(exit)).toBe(true)
      const error = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
      expect(Option.map(error, (e) => e._tag)).toEqual(Option.some("EmbeddedProcessError"))
      expect(Option.getOrThrow(error).message).toContain("did not start")
    }), 60_000)

  it.live("the child dies with its parent, even when the parent is killed", () =>
    Effect.gen(function*() {
      const parent = spawn(process.execPath, [...EmbeddedSpawn.tsxExecArgv(), path.join(__dirname, "support", "embeddedParent.ts")], {
        stdio: ["ignore", "pipe", "inherit"]
      })
      const child = yield* Effect.async<number, Error>((resume) => {
        let out = ""
        parent.stdout!.on("data", (data: Buffer) => {
          out += data.toString()
          const line = out.split("\n").find((l) => l.startsWith("{"))
          if (line !== undefined) resume(Effect.succeed((JSON.parse(line) as { child: number }).child))
        })
        parent.on("exit", (code) => resume(Effect.fail(new Error(`the parent exited (${code}) before its child was ready`))))
      })
      expect(alive(child)).toBe(true)
      parent.kill("SIGKILL")
      yield* gone(child)
      expect(alive(child)).toBe(false)
    }), 60_000)
})
