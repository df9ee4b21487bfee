/**
 * What the service reads from the source to tell where a projection stands,
 * through the real client against the embedded EventStoreDB: a persistent
 * group's outstanding and parked messages from the server (so that persistent
 * mode reports what the group has, not a missing checkpoint, and
 * `awaitCaughtUp` ends), and the first event after a checkpoint (the oldest
 * one not applied).
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger, Option, Redacted } from "effect"
import * as App from "../src/App.js"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import { EventSource } from "../src/EventSource.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import { ledger } from "./support/ledger.js"

describe("where a projection stands, from the server", () => {
  it.scopedLive("persistent mode: the group's pending, outstanding and parked messages; caught up when nothing is unacknowledged; a warning per parked event", () =>
    Effect.gen(function*() {
      const eventStore = yield* EventStoreServer.make()
      const mongo = yield* MongoServer.make()
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
        (client) => Effect.promise(() => client.dispose())
      )
      const exploded = jsonEvent({ type: "Exploded", data: { doc: "doc-2" } })
      yield* Effect.promise(() =>
        client.appendToStream("ledger-1", [
          ...Array.from({ length: 5 }, () => jsonEvent({ type: "Credited", data: { doc: "doc-1", amount: 1 } })),
          exploded
        ])
      )
      const ports = Layer.merge(
        EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
        MongoReadModelStore.layer({ uri: mongo.uri, database: "group_status" })
      )
      const lines: Array<string> = []
      const capture = Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => void lines.push(String(message))))
      yield* Effect.gen(function*() {
        const source = yield* EventSource
        expect(yield* source.groupStatus!(["ledger"], "ledger@1")).toEqual(Option.none())
        // Ends only once the server holds nothing unacknowledged for the group.
        yield* App.runUntilCaughtUp([ledger], { mode: "persistent", commitInterval: "20 millis" })
        const [status] = yield* App.status([ledger], { mode: "persistent" })
        expect(status).toMatchObject({
          projection: "ledger@1",
          lag: 0n,
          group: Option.some({ name: "ledger@1", outstanding: 0, parked: 1, pending: 0 })
        })
      }).pipe(Effect.provide(Layer.merge(ports, capture)))
      expect(lines.some((l) => l.startsWith(`parked: group ledger@1, event ${exploded.id} (Exploded), stream ledger-1 revision 5: evolve threw on Exploded`))).toBe(true)
    }))

  it.scopedLive("the first event after a checkpoint, with its creation time", () =>
    Effect.gen(function*() {
      const eventStore = yield* EventStoreServer.make()
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
        (client) => Effect.promise(() => client.dispose())
      )
      const source = yield* Layer.build(EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) })).pipe(
        Effect.map(Context.get(EventSource))
      )
      expect(yield* source.firstAfter!(["ledger"], Option.none())).toEqual(Option.none())
      const before = Date.now()
      yield* Effect.promise(() =>
        client.appendToStream("ledger-1", Array.from({ length: 4 }, (_, i) => jsonEvent({ type: "Credited", data: { doc: "doc-1", amount: i } })))
      )
      const first = yield* source.firstAfter!(["ledger"], Option.none())
      expect(Option.map(first, (e) => e.position)).toEqual(Option.some(0n))
      const third = yield* source.firstAfter!(["ledger"], Option.some(1n))
      expect(Option.map(third, (e) => e.position)).toEqual(Option.some(2n))
      expect(Option.getOrThrow(third).created.getTime()).toBeGreaterThanOrEqual(before - 1000)
      expect(yield* source.firstAfter!(["ledger"], Option.some(3n))).toEqual(Option.none())
      // several categories travel along $all, which is not answered
      expect(yield* source.firstAfter!(["ledger", "other"], Option.none())).toEqual(Option.none())
    }))
})
