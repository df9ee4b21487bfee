/**
 * `reconciler embedded` (the installed bin, as a user runs it): the embedded
 * EventStoreDB's library options have flags, listed by `--help`, checked
 * before anything starts (exit code 2), and in force on the running server as
 * a client sees it.
 */
import { describe, expect, it } from "@effect/vitest"
import { EventStoreDBClient, jsonEvent, MaxAppendSizeExceededError, START, streamNameFilter } from "@eventstore/db-client"
import { randomUUID } from "node:crypto"
import { Effect } from "effect"
import { BIN, spawn } from "../support/child.js"

const run = (args: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const child = yield* spawn(BIN, ["embedded", "--eventstore-port", "0", "--mongo-port", "0", ...args])
    const exit = yield* child.exit("50 seconds")
    return { code: exit.code, output: child.output() }
  })

/** Starts the servers with `args` and gives a client of the EventStoreDB (closed with the scope). */
const serve = (args: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const child = yield* spawn(BIN, ["embedded", "--eventstore-port", "0", "--mongo-port", "0", ...args])
    const uri = (yield* child.line(/^embedded EventStoreDB listening on (esdb:\/\/\S+)$/, "50 seconds"))[1]!
    return yield* Effect.acquireRelease(
      Effect.sync(() => EventStoreDBClient.connectionString(uri)),
      (c) => Effect.promise(() => c.dispose())
    )
  })

const supportsBatchAppend = (client: EventStoreDBClient) =>
  Effect.promise(async () =>
    (await (client as unknown as { capabilities: Promise<{ supports(method: { path: string }): boolean }> }).capabilities)
      .supports({ path: "/event_store.client.streams.Streams/BatchAppend" })
  )

/** The streams of the events a filtered `$all` subscription through `$idx-ce-<category>` delivers before it is caught up. */
const indexed = (client: EventStoreDBClient, category: string) =>
  Effect.promise(() =>
    new Promise<Array<string>>((resolve, reject) => {
      // the 6.x client reads $all without filters: a filtered subscription reads the index
      const subscription = client.subscribeToAll({ fromPosition: START, filter: streamNameFilter({ prefixes: [`$idx-ce-${category}`] }) })
      const out: Array<string> = []
      subscription.on("data", (e) => {
        if (e.event) out.push(e.event.streamId)
      })
      subscription.on("error", reject)
      subscription.on("caughtUp", () => {
        void subscription.unsubscribe().then(() => resolve(out), reject)
      })
    })
  )

const category = () => `cli${randomUUID().replace(/-/g, "").slice(0, 8)}`

describe("reconciler embedded", () => {
  it.scopedLive("--help lists the EventStoreDB's options", () =>
    Effect.gen(function*() {
      const child = yield* spawn(BIN, ["embedded", "--help"])
      expect((yield* child.exit("50 seconds")).code).toBe(0)
      for (const flag of ["--host text", "--max-append-size integer", "--no-batch-append", "--no-secondary-indexes", "--fsync"]) {
        expect(child.output()).toContain(flag)
      }
    }), { timeout: 60_000 })

  it.scopedLive("a bad value: a clear message and exit code 2, nothing started", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [ReadonlyArray<string>, RegExp]> = [
        [["--max-append-size", "0"], /--max-append-size must be a whole number of bytes, at least 1/],
        [["--max-append-size", "big"], /'big' is not a integer/],
        [["--host", "not an address"], /--host must be an IP address or localhost/]
      ]
      const results = yield* Effect.forEach(cases, ([args]) => run(args), { concurrency: 3 })
      results.forEach((result, i) => {
        expect(result.code, result.output).toBe(2)
        expect(result.output).toMatch(cases[i]![1])
        expect(result.output).not.toContain("listening on")
      })
    }), { timeout: 120_000 })

  it.scopedLive("the flags are in force: append size, BatchAppend, secondary indexes", () =>
    Effect.gen(function*() {
      const [defaults, limited] = yield* Effect.all([
        serve([]),
        serve(["--host", "127.0.0.1", "--max-append-size", "300", "--no-batch-append", "--no-secondary-indexes"])
      ], { concurrency: 2 })
      const big = jsonEvent({ type: "E", data: { text: "x".repeat(400) } })
      for (const client of [defaults, limited]) {
        const c = category()
        yield* Effect.promise(() => client.appendToStream(`${c}-1`, jsonEvent({ type: "E", data: {} })))
        const refused = yield* Effect.promise(() => client.appendToStream(`${c}-1`, big).then(() => undefined, (e: unknown) => e))
        const indexedStreams = yield* indexed(client, c)
        if (client === defaults) {
          expect(refused).toBeUndefined()
          expect(yield* supportsBatchAppend(client)).toBe(true)
          expect(indexedStreams).toEqual([`${c}-1`, `${c}-1`])
        } else {
          expect(refused).toBeInstanceOf(MaxAppendSizeExceededError)
          expect((refused as MaxAppendSizeExceededError).maxAppendSize).toBe(300)
          expect(yield* supportsBatchAppend(client)).toBe(false)
          // without secondary indexes `$idx-ce-` is a plain prefix: no stream is named so
          expect(indexedStreams).toEqual([])
        }
      }
    }), { timeout: 120_000 })
})
