/**
 * One category rule everywhere, the server's `$by_category` rule: the text
 * before the first `-`; no category for a stream id without a `-` past its
 * first character, or for a system stream. `categoryOf`, the in-memory log and
 * the embedded server's `$ce-` links agree on it.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Stream } from "effect"
import { categoryOf, EventSource } from "../../src/EventSource.js"
import * as EventStoreServer from "../../src/embedded/EventStoreServer.js"
import { InMemory } from "../../src/index.js"
import { Client, jsonEvent } from "../support/eventStoreClient.js"

const ids = ["order-1", "order-1-2", "order", "-order", "order-", "$order-1", "orders-1"]
const expected: Record<string, string | undefined> = {
  "order-1": "order",
  "order-1-2": "order",
  "order": undefined,
  "-order": undefined,
  "order-": "order",
  "$order-1": undefined,
  "orders-1": "orders"
}

describe("the category rule", () => {
  it("categoryOf: before the first dash; none without one, at the start, or for system streams", () => {
    for (const id of ids) expect(Option.getOrUndefined(categoryOf(id))).toBe(expected[id])
  })

  it.scopedLive("the embedded server links exactly those streams into $ce-order", () =>
    Effect.gen(function*() {
      const server = yield* EventStoreServer.make()
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => Client.connectionString(server.connectionString)),
        (c) => Effect.promise(() => c.dispose())
      )
      for (const id of ids) yield* Effect.promise(() => client.appendToStream(id, jsonEvent({ type: "E", data: {} })))
      const linked = yield* Effect.promise(async () => {
        const out: Array<string> = []
        for await (const e of client.readStream("$ce-order", { resolveLinkTos: true })) out.push(e.event!.streamId)
        return out
      })
      expect(linked).toEqual(ids.filter((id) => expected[id] === "order"))
    }))

  it.effect("the in-memory log delivers to a category exactly those streams", () =>
    Effect.gen(function*() {
      const log = yield* InMemory.InMemoryEventLog
      for (const id of ids) yield* log.append(id, [{ type: "E", data: {} }])
      const source = yield* EventSource
      const delivered = yield* source.subscribe({ mode: "catch-up", categories: ["order"], after: Option.none() }).pipe(
        Stream.map((d) => d.streamId),
        Stream.runCollect
      )
      expect([...delivered]).toEqual(ids.filter((id) => expected[id] === "order"))
    }).pipe(Effect.provide(InMemory.layer({ log: { endAtHead: true } }))))
})
