/**
 * Embedded EventStoreDB throughput, through the official client (or against a
 * real server with EVENTSTORE_CONNECTION_STRING):
 *
 * 1. append: BENCH_EVENTS JSON events in batches of BENCH_BATCH (one
 *    appendToStream per batch, BENCH_STREAMS streams of one category);
 * 2. catch-up read: a catch-up subscription to `$ce-<category>` with links
 *    resolved, from the start until every event arrived (what the adapter does);
 * 3. catch-up read through the EventStoreDB event source (`EventStoreDB.layer`),
 *    as the engine pulls it;
 * 4. persistent subscription (consumer group on `$ce-<category>`, Pinned,
 *    links resolved): every event received and acked one by one, buffer 500.
 *
 *   npx tsx bench/eventstore.ts       # BENCH_EVENTS=100000 BENCH_BATCH=500 BENCH_STREAMS=1000
 */
import { EventStoreDBClient, jsonEvent, PINNED, persistentSubscriptionToStreamSettingsFromDefaults, START } from "@eventstore/db-client"
import { Context, Effect, Layer, Option, Redacted, Stream } from "effect"
import { randomUUID } from "node:crypto"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import { EventSource } from "../src/EventSource.js"
import * as EventStoreDB from "../src/EventStoreDB.js"

const events = Number(process.env.BENCH_EVENTS ?? 100_000)
const batch = Number(process.env.BENCH_BATCH ?? 500)
const streams = Number(process.env.BENCH_STREAMS ?? 1000)

const now = () => performance.now()
const rate = (n: number, ms: number) => Math.round((n / ms) * 1000).toLocaleString("en-US")

const program = Effect.gen(function*() {
  const connectionString = process.env.EVENTSTORE_CONNECTION_STRING ??
    (yield* EventStoreServer.make()).connectionString
  const client = yield* Effect.acquireRelease(
    Effect.sync(() => EventStoreDBClient.connectionString(connectionString)),
    (c) => Effect.promise(() => c.dispose())
  )
  const category = `bench${randomUUID().replace(/-/g, "").slice(0, 8)}`
  console.log(`${events.toLocaleString("en-US")} events, batches of ${batch}, ${streams} streams of category ${category}`)

  // 1. append
  const appendMs = yield* Effect.promise(async () => {
    const t = now()
    for (let i = 0; i < events; i += batch) {
      const n = Math.min(batch, events - i)
      const stream = `${category}-${(i / batch) % streams}`
      await client.appendToStream(
        stream,
        Array.from({ length: n }, (_, k) => jsonEvent({ type: "Credited", data: { doc: `d${(i + k) % 997}`, amount: i + k } }))
      )
    }
    return now() - t
  })
  console.log(`append:                       ${rate(events, appendMs)} events/s (${Math.round(appendMs)} ms)`)

  // 2. catch-up read with the client
  const readMs = yield* Effect.promise(async () => {
    const t = now()
    let n = 0
    const subscription = client.subscribeToStream(`$ce-${category}`, { fromRevision: START, resolveLinkTos: true })
    for await (const _ of subscription) {
      if (++n === events) break
    }
    await subscription.unsubscribe()
    return now() - t
  })
  console.log(`catch-up read (client):       ${rate(events, readMs)} events/s (${Math.round(readMs)} ms)`)

  // 3. catch-up read through the event source
  const source = yield* Layer.build(EventStoreDB.layer({ connectionString: Redacted.make(connectionString) })).pipe(
    Effect.map(Context.get(EventSource))
  )
  const t = now()
  yield* source.subscribe({ mode: "catch-up", categories: [category], after: Option.none() }).pipe(
    Stream.take(events),
    Stream.runDrain
  )
  const sourceMs = now() - t
  console.log(`catch-up read (event source): ${rate(events, sourceMs)} events/s (${Math.round(sourceMs)} ms)`)

  // 4. persistent subscription, acked one by one
  const persistentMs = yield* Effect.promise(async () => {
    await client.createPersistentSubscriptionToStream(
      `$ce-${category}`,
      "bench",
      persistentSubscriptionToStreamSettingsFromDefaults({ startFrom: START, resolveLinkTos: true, consumerStrategyName: PINNED })
    )
    const t = now()
    let n = 0
    const subscription = client.subscribeToPersistentSubscriptionToStream(`$ce-${category}`, "bench", { bufferSize: 500 })
    for await (const e of subscription) {
      await subscription.ack(e)
      if (++n === events) break
    }
    await subscription.unsubscribe()
    return now() - t
  })
  console.log(`persistent (ack each):        ${rate(events, persistentMs)} events/s (${Math.round(persistentMs)} ms)`)
}).pipe(Effect.scoped)

Effect.runPromise(program).catch((error) => {
  console.error(error)
  process.exitCode = 1
})
