/**
 * Gaps that can never fill, through the real client against the embedded
 * server: a stream truncated by `$maxCount` before the group reached it. The
 * engine holds the first event it gets, reads the stream, finds its first
 * available revision beyond the expected one, skips the gap with a recorded
 * decision (and a metric), and goes on — it does not wait forever.
 */
import { EventStoreDBClient, jsonEvent } from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Metric, MetricState, Redacted, Schedule, Schema } from "effect"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import { EventSource } from "../src/EventSource.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import { InMemory, Projection, Reconciler } from "../src/index.js"
import { ReadModelStore } from "../src/ReadModelStore.js"

const Balance = Schema.Struct({ total: Schema.Number, applied: Schema.Array(Schema.Number) })

const balances = (category: string) =>
  Projection.make({
    name: "balances",
    categories: [category],
    document: Balance,
    events: { Credited: Schema.Struct({ doc: Schema.String, amount: Schema.Int }) },
    key: (event) => event.data.doc,
    evolve: (doc, event) => ({
      total: (doc?.total ?? 0) + event.data.amount,
      applied: [...(doc?.applied ?? []), Number(event.revision)]
    })
  })

const eventually = <A, E>(effect: Effect.Effect<A, E>) =>
  effect.pipe(Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.intersect(Schedule.recurs(400)))))

describe("persistent mode: gaps that can never fill", () => {
  it.scopedLive("a stream truncated by $maxCount: the gap is skipped, recorded and counted; later events apply in order", () =>
    Effect.gen(function*() {
      const server = yield* EventStoreServer.make()
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => EventStoreDBClient.connectionString(server.connectionString)),
        (c) => Effect.promise(() => c.dispose())
      )
      const source = yield* Layer.build(EventStoreDB.layer({ connectionString: Redacted.make(server.connectionString) })).pipe(
        Effect.map(Context.get(EventSource))
      )
      const category = "truncated"
      const stream = `${category}-1`
      for (let i = 0; i < 10; i++) {
        yield* Effect.promise(() => client.appendToStream(stream, jsonEvent({ type: "Credited", data: { doc: "d", amount: i } })))
      }
      // Only the last three events stay readable: 0…6 are gone before the group reaches them.
      yield* Effect.promise(() => client.setStreamMetadata(stream, { maxCount: 3 }))
      const store = yield* InMemory.makeStore()
      const projection = balances(category)
      const id = `${projection.name}@${projection.version}`
      yield* Reconciler.run(projection, { mode: "persistent", holdCheck: "20 millis", fillAfter: "100 millis" }).pipe(
        Effect.provideService(EventSource, source),
        Effect.provideService(ReadModelStore, store.port),
        Effect.forkScoped
      )
      const doc = yield* eventually(Effect.suspend(() => {
        const body = store.documents(projection.collection).get("d")?.body as typeof Balance.Type | undefined
        return body !== undefined && body.applied.length === 3 ? Effect.succeed(body) : Effect.fail("not yet")
      }))
      expect(doc).toEqual({ total: 7 + 8 + 9, applied: [7, 8, 9] })
      const gaps = store.gaps(id)
      expect(gaps.map((g) => [g.stream, g.from, g.to])).toEqual([[stream, 0n, 6n]])
      expect(gaps[0]!.reason).toContain("gone")
      yield* eventually(Effect.suspend(() => (store.progress(id).get(stream)?.revision === 9n ? Effect.void : Effect.fail("lagging"))))
      const counted = yield* Metric.value(Metric.tagged(Reconciler.metrics.gaps, "projection", projection.name))
      expect((counted as MetricState.MetricState.Counter<number>).count).toBeGreaterThanOrEqual(1)
      // Appended later, in order after the gap.
      yield* Effect.promise(() => client.appendToStream(stream, jsonEvent({ type: "Credited", data: { doc: "d", amount: 10 } })))
      yield* eventually(Effect.suspend(() => {
        const body = store.documents(projection.collection).get("d")?.body as typeof Balance.Type | undefined
        return body?.applied.length === 4 ? Effect.void : Effect.fail("not yet")
      }))
      expect((store.documents(projection.collection).get("d")!.body as typeof Balance.Type).applied).toEqual([7, 8, 9, 10])
    }))
})
