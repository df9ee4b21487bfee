/**
 * Embedded EventStoreDB throughput, through the project's client interface
 * (src/internal/eventStoreClient.ts, the package chosen by the connection
 * string) and through the event source, or against a real server with
 * EVENTSTORE_CONNECTION_STRING:
 *
 * 1. append: BENCH_EVENTS JSON events in batches of BENCH_BATCH (one
 *    append per batch, BENCH_STREAMS streams of one category);
 * 2. catch-up read through the client: a subscription to `$ce-<category>`
 *    with links resolved, from the start until every event arrived, converted
 *    by the client itself (JSON parsed), Node's default read-ahead (16);
 * 3. catch-up read through the EventStoreDB event source (`EventStoreDB.layer`),
 *    the same subscription as the engine pulls it;
 *    (2 and 3 alternate BENCH_REPS times, so that warm-up and load fall on both);
 * 4. persistent subscription through the client (consumer group on
 *    `$ce-<category>`, Pinned, links resolved): every event received and acked
 *    one by one, buffer 500;
 * 5. the same through the event source (another group): each delivery settled
 *    (acked) before the next is taken.
 * Medians, and the event source's rate as a share of the client's.
 *
 *   npm run bench:eventstore       # BENCH_EVENTS=100000 BENCH_BATCH=500 BENCH_STREAMS=1000 BENCH_REPS=3
 */
import { Context, Effect, Layer, Option, Redacted, Stream } from "effect"
import { randomUUID } from "node:crypto"
import os from "node:os"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import { ack, EventSource } from "../src/EventSource.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import { esdb, kindOf, kurrentdb } from "../src/internal/eventStoreClient.js"

const events = Number(process.env.BENCH_EVENTS ?? 100_000)
const batch = Number(process.env.BENCH_BATCH ?? 500)
const streams = Number(process.env.BENCH_STREAMS ?? 1000)
const reps = Number(process.env.BENCH_REPS ?? 3)

/** Node's default high-water mark of an object-mode readable: what the client's own subscriptions use. */
const CLIENT_DEFAULT_READ_AHEAD = 16

const now = () => performance.now()
const perSecond = (n: number, ms: number) => Math.round((n / ms) * 1000)
const show = (n: number) => n.toLocaleString("en-US")
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const line = (label: string, rates: ReadonlyArray<number>) =>
  console.log(`${label.padEnd(34)}${show(median(rates)).padStart(8)} events/s  (runs: ${rates.map(show).join(", ")})`)

const program = Effect.gen(function*() {
  const connectionString = process.env.EVENTSTORE_CONNECTION_STRING ??
    (yield* EventStoreServer.make()).connectionString
  const client = yield* Effect.acquireRelease(
    Effect.promise(() => (kindOf(connectionString) === "kurrentdb" ? kurrentdb(connectionString) : esdb(connectionString))),
    (c) => Effect.promise(() => c.dispose())
  )
  const category = `bench${randomUUID().replace(/-/g, "").slice(0, 8)}`
  console.log(
    `${show(events)} events, batches of ${batch}, ${streams} streams of category ${category}; ${client.kind} client; ` +
      `${reps} alternating reads each; load ${os.loadavg().map((l) => l.toFixed(1)).join(" ")}`
  )

  // 1. append
  const appendMs = yield* Effect.promise(async () => {
    const t = now()
    for (let i = 0; i < events; i += batch) {
      const n = Math.min(batch, events - i)
      const stream = `${category}-${(i / batch) % streams}`
      await client.appendToStream(
        stream,
        Array.from({ length: n }, (_, k) => ({ type: "Credited", data: { doc: `d${(i + k) % 997}`, amount: i + k } }))
      )
    }
    return now() - t
  })
  line("append:", [perSecond(events, appendMs)])

  // 2. catch-up read with the client, as it converts events itself
  const clientRead = Effect.promise(async () => {
    const t = now()
    let n = 0
    const subscription = client.subscribeToStream(
      `$ce-${category}`,
      { after: undefined, resolveLinkTos: true },
      CLIENT_DEFAULT_READ_AHEAD
    )
    for await (const _ of subscription) {
      if (++n === events) break
    }
    await subscription.unsubscribe()
    return perSecond(events, now() - t)
  })

  // 3. catch-up read through the event source
  const source = yield* Layer.build(EventStoreDB.layer({ connectionString: Redacted.make(connectionString) })).pipe(
    Effect.map(Context.get(EventSource))
  )
  const sourceRead = Effect.suspend(() => {
    const t = now()
    return source.subscribe({ mode: "catch-up", categories: [category], after: Option.none() }).pipe(
      Stream.take(events),
      Stream.runDrain,
      Effect.map(() => perSecond(events, now() - t))
    )
  })

  const clientRates: Array<number> = []
  const sourceRates: Array<number> = []
  for (let rep = 0; rep < reps; rep++) {
    clientRates.push(yield* clientRead)
    sourceRates.push(yield* sourceRead)
  }
  line("catch-up read (client):", clientRates)
  line("catch-up read (event source):", sourceRates)
  console.log(`  event source / client:           ${(median(sourceRates) / median(clientRates)).toFixed(2)}`)

  // 4. persistent subscription through the client, acked one by one
  const clientGroup = yield* Effect.promise(async () => {
    await client.createGroup(`$ce-${category}`, "bench", EventStoreDB.defaultPersistentSettings)
    const t = now()
    let n = 0
    const subscription = client.subscribeToGroup(`$ce-${category}`, "bench", 500)
    for await (const e of subscription) {
      await subscription.ack(e)
      if (++n === events) break
    }
    await subscription.unsubscribe()
    return perSecond(events, now() - t)
  })
  line("persistent, ack each (client):", [clientGroup])

  // 5. the same through the event source (it creates its group)
  const t = now()
  yield* source.subscribe({ mode: "persistent", categories: [category], group: "bench-source", bufferSize: 500 }).pipe(
    Stream.take(events),
    Stream.runForEach((delivery) => delivery.settle(ack))
  )
  const sourceGroup = perSecond(events, now() - t)
  line("persistent, ack each (event source):", [sourceGroup])
  console.log(`  event source / client:           ${(sourceGroup / clientGroup).toFixed(2)}`)
}).pipe(Effect.scoped)

Effect.runPromise(program).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
