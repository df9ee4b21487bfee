/**
 * Read-your-writes by position, through the real clients on the embedded
 * servers, in both modes: `awaitDocument` resolves once the document has
 * applied the appended event and not before (the write is held back and the
 * waiter seen asking meanwhile); `awaitPosition` once the projection has;
 * both fail typed after their timeout.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Option, Redacted } from "effect"
import * as App from "../src/App.js"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import * as MongoServer from "../src/embedded/MongoServer.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import * as MongoReadModelStore from "../src/MongoReadModelStore.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import { ledger } from "./support/ledger.js"

describe("read your writes", () => {
  for (const mode of ["catch-up", "persistent"] as const) {
    it.scopedLive(`awaitDocument resolves when the document applied the append, not before; awaitPosition (${mode})`, () =>
      Effect.gen(function*() {
        const eventStore = yield* EventStoreServer.make()
        const mongo = yield* MongoServer.make()
        const client = yield* Effect.acquireRelease(
          Effect.sync(() => EventStoreDBClient.connectionString(eventStore.connectionString)),
          (client) => Effect.promise(() => client.dispose())
        )
        const append = (stream: string, doc: string, amount: number) =>
          Effect.promise(() => client.appendToStream(stream, jsonEvent({ type: "Credited", data: { doc, amount } }))).pipe(
            Effect.map((result): App.Appended => ({ streamId: stream, revision: result.nextExpectedRevision, position: result.position }))
          )
        const ports = Layer.merge(
          EventStoreDB.layer({ connectionString: Redacted.make(eventStore.connectionString) }),
          MongoReadModelStore.layer({ uri: mongo.uri, database: `ryw_${mode.replace("-", "_")}` })
        )
        yield* Effect.gen(function*() {
          const real = yield* ReadModelStore
          // Writes of doc-7 wait for the gate; loads of doc-7 after the hold are counted.
          let gate = yield* Deferred.make<void>()
          const held = yield* Deferred.make<void>()
          const askedTwice = yield* Deferred.make<void>()
          let holding = false
          let asked = 0
          const gated = ReadModelStore.of({
            ...real,
            write: (batch) =>
              batch.writes.some((w) => w.id === "doc-7")
                ? Effect.suspend(() => {
                  holding = true
                  return Deferred.succeed(held, undefined).pipe(Effect.zipRight(Deferred.await(gate)), Effect.zipRight(real.write(batch)))
                })
                : real.write(batch),
            load: (collection, ids) =>
              Effect.suspend(() => {
                if (holding && ids.includes("doc-7") && ++asked >= 2) Deferred.unsafeDone(askedTwice, Effect.void)
                return real.load(collection, ids)
              })
          })
          const withGate = Effect.provideService(ReadModelStore, gated)
          yield* Effect.forkScoped(App.run([ledger], { mode, commitInterval: "20 millis" }).pipe(withGate))

          const first = yield* append("ledger-1", "doc-1", 5)
          yield* App.awaitDocument(ledger, "doc-1", first, { mode })
          expect((yield* real.load("ledger", ["doc-1"])).get("doc-1")?.body).toMatchObject({ total: 5 })

          // doc-7's write is held: the waiter keeps asking and does not resolve.
          const seventh = yield* append("ledger-2", "doc-7", 7)
          const waiter = yield* Effect.forkScoped(App.awaitDocument(ledger, "doc-7", seventh, { mode }).pipe(withGate))
          yield* Deferred.await(held)
          yield* Deferred.await(askedTwice)
          expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)
          expect((yield* real.load("ledger", ["doc-7"])).get("doc-7")).toBeUndefined()

          // Released: the waiter resolves, and the document holds the event.
          yield* Deferred.succeed(gate, undefined)
          yield* Fiber.join(waiter)
          expect((yield* real.load("ledger", ["doc-7"])).get("doc-7")?.body).toMatchObject({ total: 7 })

          // The whole projection, by the append's position.
          const later = yield* append("ledger-1", "doc-2", 3)
          yield* App.awaitPosition(ledger, later, { mode })
          expect((yield* real.load("ledger", ["doc-2"])).get("doc-2")?.body).toMatchObject({ total: 3 })

          // Held back again and waited on with a short timeout: a typed error.
          gate = yield* Deferred.make<void>()
          const stuck = yield* append("ledger-2", "doc-7", 1)
          const timedOut = yield* App.awaitDocument(ledger, "doc-7", stuck, { mode, timeout: "300 millis" }).pipe(Effect.flip)
          expect(timedOut._tag).toBe("AwaitTimeout")
          expect(timedOut.message).toContain("ledger did not apply ledger-2@1 on doc-7 within")
          yield* Deferred.succeed(gate, undefined)
        }).pipe(Effect.provide(ports))
      }), { timeout: 60_000 })
  }
})
