/**
 * The EventStoreDB event source, through the real client, against the embedded
 * server (or a real one when EVENTSTORE_CONNECTION_STRING is set; tests that
 * restart the server or write raw protocol messages are then skipped).
 *
 * One suite, run through each official client — a matrix, not a copy:
 * EventStoreDB.test.ts runs it with `@eventstore/db-client`,
 * EventStoreDB.kurrentdb.test.ts with `@kurrent/kurrentdb-client` (one client
 * package per process: their generated protocol code shares a global namespace).
 */
import type { AppendResult, EventData } from "@eventstore/db-client"
import { binaryEvent, Client as EventStoreDBClient, clientKind, jsonEvent, persistentSubscriptionToStreamSettingsFromDefaults } from "./support/eventStoreClient.js"
import { describe, expect, it } from "@effect/vitest"
import * as grpc from "@grpc/grpc-js"
import {
  ConfigProvider,
  Context,
  Deferred,
  Effect,
  Exit,
  Fiber,
  Layer,
  Metric,
  Option,
  Queue,
  Redacted,
  Schedule,
  Schema,
  Scope,
  Stream,
  TestClock
} from "effect"
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as EventStoreServer from "../src/embedded/EventStoreServer.js"
import { start as startServer } from "../src/embedded/eventstore/Server.js"
import type { Delivery, Subscription } from "../src/EventSource.js"
import { ack, EventSource, EventSourceError, nack } from "../src/EventSource.js"
import * as EventStoreDB from "../src/EventStoreDB.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import { InMemory, Projection, Reconciler } from "../src/index.js"
import * as protocol from "../src/embedded/eventstore/proto.js"

const external = process.env.EVENTSTORE_CONNECTION_STRING
/** Tests that restart the server or write raw protocol messages run against the embedded server only. */
const skipExternal = external !== undefined

/** Quick resubscription for tests (real time: the gRPC calls need it). */
const fast = Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(500)))

const uniqueCategory = (name: string) => `${name}${randomUUID().replace(/-/g, "").slice(0, 10)}`
const credited = (doc: string, amount: number) => jsonEvent({ type: "Credited", data: { doc, amount } })

/** A client for appending, disposed with the scope. */
const makeClient = (connectionString: string) =>
  Effect.acquireRelease(
    Effect.sync(() => EventStoreDBClient.connectionString(connectionString)),
    (client) => Effect.promise(() => client.dispose())
  )

/** Which official client the source talks through (and how it reads one category). */
type Via = Pick<EventStoreDB.Options, "client" | "categoryReads">

/**
 * How the source is run in this process: through this process's client,
 * reading `$ce-` (the KurrentDB client's `$idx-ce-` index path has its own
 * tests, and runs the engine end to end as well).
 */
const clients: ReadonlyArray<{ readonly name: string; readonly via: Via }> = [
  clientKind === "kurrentdb"
    ? { name: "@kurrent/kurrentdb-client", via: { client: "kurrentdb", categoryReads: "links" } }
    : { name: "@eventstore/db-client", via: { client: "esdb" } }
]
/** The engine end to end also through the index path, where the client can read it. */
const engineClients: ReadonlyArray<{ readonly name: string; readonly via: Via }> = clientKind === "kurrentdb"
  ? [...clients, { name: "@kurrent/kurrentdb-client (categories from $idx-ce- where the server has it)", via: { client: "kurrentdb" } }]
  : clients

/** An embedded server (or the external one), a source over it, and a client. */
const setup = (via: Via, options: { readonly dataDir?: string; readonly port?: number } = {}) =>
  Effect.gen(function*() {
    const connectionString = external ?? (yield* EventStoreServer.make(options)).connectionString
    const source = yield* Layer.build(
      EventStoreDB.layer({ ...via, connectionString: Redacted.make(connectionString), resubscribe: fast })
    ).pipe(Effect.map(Context.get(EventSource)))
    const client = yield* makeClient(connectionString)
    const append = (stream: string, events: EventData | Array<EventData>) =>
      Effect.promise((): Promise<AppendResult> => client.appendToStream(stream, events))
    return { connectionString, source, client, append }
  })

/** Runs a subscription into a queue in the background (scoped). */
const collectInto = (stream: Stream.Stream<Delivery, EventSourceError>) =>
  Effect.gen(function*() {
    const queue = yield* Queue.unbounded<Delivery>()
    const fiber = yield* stream.pipe(Stream.runForEach((d) => Queue.offer(queue, d)), Effect.forkScoped)
    return { queue, fiber, take: (n: number) => Effect.forEach(Array.from({ length: n }), () => Queue.take(queue)) }
  })

const json = (d: Delivery) => JSON.parse(new TextDecoder().decode(d.data))

/** Polls an effect until it succeeds, at most `attempts` times. */
const eventually = <A, E, R>(effect: Effect.Effect<A, E, R>, attempts = 200) =>
  effect.pipe(Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.intersect(Schedule.recurs(attempts)))))

const catchUp = (categories: ReadonlyArray<string>, after: Option.Option<bigint> = Option.none()): Subscription => ({
  mode: "catch-up",
  categories,
  after
})

describe.each(clients)("EventStoreDB event source through $name", ({ via }) => {
  describe("catch-up", () => {
    it.scopedLive("one category: $ce links resolved, positioned by link revision, resumes after a position, then live", () =>
      Effect.gen(function*() {
        const { append, source } = yield* setup(via)
        const category = uniqueCategory("acc")
        yield* append(`${category}-1`, [credited("a", 1), credited("a", 2)])
        yield* append(`${category}-2`, credited("b", 3))
        const all = yield* collectInto(source.subscribe(catchUp([category])))
        const first = yield* all.take(3)
        expect(first.map((d) => [d.streamId, d.revision, d.position, d.type])).toEqual([
          [`${category}-1`, 0n, 0n, "Credited"],
          [`${category}-1`, 1n, 1n, "Credited"],
          [`${category}-2`, 0n, 2n, "Credited"]
        ])
        expect(first.map(json)).toEqual([{ doc: "a", amount: 1 }, { doc: "a", amount: 2 }, { doc: "b", amount: 3 }])
        expect(first.every((d) => d.isJson && d.retryCount === 0 && d.created.getTime() > 0)).toBe(true)
        yield* append(`${category}-3`, credited("c", 4))
        const [live] = yield* all.take(1)
        expect(live!.position).toBe(3n)

        const resumed = yield* collectInto(source.subscribe(catchUp([category], Option.some(1n))))
        const again = yield* resumed.take(2)
        expect(again.map((d) => d.position)).toEqual([2n, 3n])
        // settling a catch-up delivery is a no-op ack (the engine checkpoints)
        yield* again[0]!.settle(ack)
      }))

    it.scopedLive("several categories: filtered $all, positioned by prepare position", () =>
      Effect.gen(function*() {
        const { append, source } = yield* setup(via)
        const a = uniqueCategory("ca")
        const b = uniqueCategory("cb")
        const other = uniqueCategory("co")
        yield* append(`${a}-1`, credited("a", 1))
        yield* append(`${other}-1`, credited("x", 0))
        const rb = yield* append(`${b}-1`, credited("b", 2))
        yield* append(`${a}-2`, credited("a", 3))
        const sub = yield* collectInto(source.subscribe(catchUp([a, b])))
        const got = yield* sub.take(3)
        expect(got.map((d) => d.streamId)).toEqual([`${a}-1`, `${b}-1`, `${a}-2`])
        expect(got[0]!.position < got[1]!.position && got[1]!.position < got[2]!.position).toBe(true)
        // The prepare position: events appended together keep distinct positions.
        expect(got[1]!.position).toBe(rb.position!.prepare)
        const after = yield* collectInto(source.subscribe(catchUp([a, b], Option.some(got[1]!.position))))
        const [next] = yield* after.take(1)
        expect(next!.streamId).toBe(`${a}-2`)
        const head = yield* source.head([a, b])
        expect(head).toEqual(Option.some(got[2]!.position))
      }))

    it.scopedLive("head: none for an empty category, else the newest link revision", () =>
      Effect.gen(function*() {
        const { append, source } = yield* setup(via)
        const category = uniqueCategory("head")
        expect(yield* source.head([category])).toEqual(Option.none())
        yield* append(`${category}-1`, [credited("a", 1), credited("a", 2)])
        yield* append(`${category}-2`, credited("b", 1))
        yield* eventually(source.head([category]).pipe(Effect.filterOrFail(Option.isSome)))
        expect(yield* source.head([category])).toEqual(Option.some(2n))
      }))

    it.scopedLive("bad input becomes deliveries: binary data, garbage metadata, links to deleted events", () =>
      Effect.gen(function*() {
        const { append, client, source } = yield* setup(via)
        const category = uniqueCategory("bad")
        yield* append(`${category}-1`, binaryEvent({ type: "Blob", data: new Uint8Array([0, 159, 146, 150]), metadata: new Uint8Array([255, 0]) }))
        yield* append(`${category}-2`, credited("gone", 1))
        yield* Effect.promise(() => client.deleteStream(`${category}-2`))
        yield* append(`${category}-3`, credited("ok", 2))
        const sub = yield* collectInto(source.subscribe(catchUp([category])))
        const [blob, gone, ok] = yield* sub.take(3)
        expect(blob!.isJson).toBe(false)
        expect([...blob!.data]).toEqual([0, 159, 146, 150])
        expect([...blob!.metadata]).toEqual([255, 0])
        // the link survives its deleted event: handed over as the link itself, for the engine to skip
        expect(gone!.type).toBe("$>")
        expect(gone!.position).toBe(1n)
        expect(gone!.streamId).toBe(`$ce-${category}`)
        expect(ok!.position).toBe(2n)
        expect(json(ok!)).toEqual({ doc: "ok", amount: 2 })
      }))

    it.scopedLive.skipIf(skipExternal)("malformed JSON and garbage metadata reach the engine as recorded", () =>
      Effect.gen(function*() {
        const { connectionString, source } = yield* setup(via)
        const category = uniqueCategory("raw")
        yield* appendRaw(connectionString, `${category}-1`, [
          { type: "Credited", contentType: "application/json", data: "{not json", metadata: "" },
          { type: "Credited", contentType: "application/json", data: "{\"doc\":\"a\",\"amount\":1}", metadata: "{garbage" }
        ])
        // without an event type the server refuses the append, as a real one does
        const refused = yield* appendRaw(connectionString, `${category}-1`, [
          { contentType: "application/json", data: "{}", metadata: "" }
        ]).pipe(Effect.flip)
        expect(String(refused)).toContain("type")
        const sub = yield* collectInto(source.subscribe(catchUp([category])))
        const [broken, garbage] = yield* sub.take(2)
        expect(broken!.isJson).toBe(true)
        expect(new TextDecoder().decode(broken!.data)).toBe("{not json")
        expect(broken!.metadata.length).toBe(0)
        expect(new TextDecoder().decode(garbage!.metadata)).toBe("{garbage")
        expect(json(garbage!)).toEqual({ doc: "a", amount: 1 })
      }))

    it.scopedLive.skipIf(skipExternal)("resubscribes after the server restarts: no loss, no duplicates", () =>
      Effect.gen(function*() {
        const dataDir = yield* tempDir
        const category = uniqueCategory("rs")
        const serverScope = yield* Scope.make()
        const first = yield* EventStoreServer.make({ dataDir }).pipe(Scope.extend(serverScope))
        const source = yield* Layer.build(
          EventStoreDB.layer({ ...via, connectionString: Redacted.make(first.connectionString), resubscribe: fast })
        ).pipe(Effect.map(Context.get(EventSource)))
        const client = yield* makeClient(first.connectionString)
        const append = (stream: string, amount: number) =>
          eventually(Effect.tryPromise(() => client.appendToStream(stream, credited("a", amount))))
        yield* append(`${category}-1`, 1)
        yield* append(`${category}-1`, 2)
        const sub = yield* collectInto(source.subscribe(catchUp([category])))
        yield* sub.take(2)
        const before = (yield* Metric.value(EventStoreDB.resubscriptions)).count
        yield* Scope.close(serverScope, Exit.void)
        yield* EventStoreServer.make({ dataDir, port: first.port })
        yield* append(`${category}-2`, 3)
        yield* append(`${category}-2`, 4)
        const rest = yield* sub.take(2)
        expect(rest.map((d) => d.position)).toEqual([2n, 3n])
        yield* append(`${category}-3`, 5)
        const [sentinel] = yield* sub.take(1)
        expect(sentinel!.position).toBe(4n)
        expect((yield* Metric.value(EventStoreDB.resubscriptions)).count).toBeGreaterThan(before)
      }))

    it.scopedLive.skipIf(skipExternal)("backpressure: a subscription nobody pulls holds the server back", () =>
      Effect.gen(function*() {
        const server = yield* Effect.acquireRelease(
          Effect.promise(() => startServer({})),
          (s) => Effect.promise(() => s.close())
        )
        const connectionString = `esdb://127.0.0.1:${server.port}?tls=false`
        const source = yield* Layer.build(EventStoreDB.layer({ ...via, connectionString: Redacted.make(connectionString) })).pipe(
          Effect.map(Context.get(EventSource))
        )
        const client = yield* makeClient(connectionString)
        const category = uniqueCategory("bp")
        const total = 5_000
        for (let i = 0; i < total; i += 1000) {
          yield* Effect.promise(() =>
            client.appendToStream(`${category}-${i}`, Array.from({ length: 1000 }, (_, k) => credited("a", i + k)))
          )
        }
        const pull = yield* Stream.toPull(source.subscribe(catchUp([category])))
        yield* pull
        // wait until the server stops sending (its writes are held by flow control), within bounds
        const realWait = Effect.promise(() => new Promise((r) => setTimeout(r, 20)))
        let last = -1
        for (let i = 0; i < 100 && server.store.stats.eventsRead !== last; i++) {
          last = server.store.stats.eventsRead
          yield* realWait
          yield* realWait
        }
        const held = server.store.stats.eventsRead
        expect(held).toBeLessThan(total / 2)
        // pulling resumes the flow (a pull takes a chunk of what is buffered: pull until the server reads on)
        for (let i = 0; i < held + 100 && server.store.stats.eventsRead <= held; i++) yield* pull
        expect(server.store.stats.eventsRead).toBeGreaterThan(held)
      }))

    it.scoped("resubscribes on the schedule's clock (TestClock): no new attempt before the backoff elapses", () =>
      Effect.gen(function*() {
        // A TCP endpoint that counts connection attempts and drops them: the server is "unavailable".
        const attempts = { n: 0 }
        const endpoint = yield* Effect.acquireRelease(
          Effect.async<net.Server>((resume) => {
            const server = net.createServer((socket) => {
              attempts.n++
              socket.destroy()
            })
            server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
          }),
          (server) => Effect.async<void>((resume) => {
            server.close(() => resume(Effect.void))
          })
        )
        const port = (endpoint.address() as net.AddressInfo).port
        const source = yield* Layer.build(
          EventStoreDB.layer({ ...via,
            connectionString: Redacted.make(`esdb://127.0.0.1:${port}?tls=false`),
            resubscribe: Schedule.spaced("1 minute").pipe(Schedule.intersect(Schedule.recurs(1)))
          })
        ).pipe(Effect.map(Context.get(EventSource)))
        const fiber = yield* source.subscribe(catchUp(["down"])).pipe(Stream.runDrain, Effect.fork)
        // real time passes for the IO; the schedule waits on the TestClock
        const realWait = Effect.promise(() => new Promise((r) => setTimeout(r, 20)))
        const until = (done: () => boolean) =>
          Effect.gen(function*() {
            for (let i = 0; i < 250 && !done(); i++) yield* realWait
            expect(done()).toBe(true)
          })
        yield* until(() => attempts.n >= 1)
        // however long we wait in real time, the next attempt waits for the clock
        for (let i = 0; i < 10; i++) yield* realWait
        expect(attempts.n).toBe(1)
        expect(fiber.unsafePoll()).toBeNull()
        yield* TestClock.adjust("1 minute")
        yield* until(() => fiber.unsafePoll() !== null)
        expect(attempts.n).toBeGreaterThanOrEqual(2)
        const exit = yield* Fiber.await(fiber)
        expect(Exit.isFailure(exit)).toBe(true)
      }))

    it.scopedLive("fails with a retryable error once resubscribing gives up", () =>
      Effect.gen(function*() {
        const serverScope = yield* Scope.make()
        const server = yield* EventStoreServer.make().pipe(Scope.extend(serverScope))
        yield* Scope.close(serverScope, Exit.void)
        const source = yield* Layer.build(
          EventStoreDB.layer({ ...via,
            connectionString: Redacted.make(server.connectionString),
            resubscribe: Schedule.spaced("10 millis").pipe(Schedule.intersect(Schedule.recurs(2)))
          })
        ).pipe(Effect.map(Context.get(EventSource)))
        const exit = yield* source.subscribe(catchUp(["nothing"])).pipe(Stream.runDrain, Effect.exit)
        expect(Exit.isFailure(exit)).toBe(true)
        const error = Exit.isFailure(exit) ? exit.cause : undefined
        const failure = error && (yield* Effect.flip(Effect.failCause(error)))
        expect(failure).toBeInstanceOf(EventSourceError)
        expect((failure as EventSourceError).retryable).toBe(true)
        expect((failure as EventSourceError).message).not.toContain("tls=false")
      }))
  })

  describe("persistent", () => {
    const persistent = (categories: ReadonlyArray<string>, group: string, bufferSize = 10): Subscription => ({
      mode: "persistent",
      categories,
      group,
      bufferSize
    })

    it.scopedLive("creates the group (Pinned, links resolved, from the start), acks, retries, idempotent settle", () =>
      Effect.gen(function*() {
        const { append, client, source } = yield* setup(via)
        const category = uniqueCategory("ps")
        yield* append(`${category}-1`, [credited("a", 1), credited("a", 2)])
        const sub = yield* collectInto(source.subscribe(persistent([category], "g")))
        const [one, two] = yield* sub.take(2)
        expect([one!.streamId, one!.revision, json(one!)]).toEqual([`${category}-1`, 0n, { doc: "a", amount: 1 }])
        const info = yield* Effect.promise(() => client.getPersistentSubscriptionToStreamInfo(`$ce-${category}`, "g"))
        expect(info.settings.consumerStrategyName).toBe("Pinned")
        expect(info.settings.resolveLinkTos).toBe(true)
        yield* one!.settle(ack)
        yield* one!.settle(nack("retry", "ignored: already settled"))
        yield* two!.settle(nack("retry", "transient"))
        const [again] = yield* sub.take(1)
        expect(again!.id).toBe(two!.id)
        expect(again!.retryCount).toBe(1)
        yield* again!.settle(ack)
        yield* eventually(
          Effect.promise(() => client.getPersistentSubscriptionToStreamInfo(`$ce-${category}`, "g")).pipe(
            Effect.filterOrFail((i) => i.stats.totalInFlightMessages === 0 && i.stats.retryBufferCount === 0)
          )
        )
        // an existing group is fine: a second subscription joins it
        const second = yield* collectInto(source.subscribe(persistent([category], "g")))
        yield* append(`${category}-1`, credited("a", 3))
        const next = yield* Effect.race(sub.take(1), second.take(1))
        expect(json(next[0]!)).toEqual({ doc: "a", amount: 3 })
      }))

    it.scopedLive("parks poison events with their reason; parked events replay", () =>
      Effect.gen(function*() {
        const { append, client, source } = yield* setup(via)
        const category = uniqueCategory("park")
        yield* append(`${category}-1`, [credited("a", 1), credited("a", 2)])
        const sub = yield* collectInto(source.subscribe(persistent([category], "g")))
        const [poison, good] = yield* sub.take(2)
        yield* poison!.settle(nack("park", "cannot decode Credited: amount is missing"))
        yield* good!.settle(ack)
        const parkedStream = `$persistentsubscription-$ce-${category}::g-parked`
        const parked = yield* eventually(
          Effect.tryPromise(async () => {
            const out = []
            for await (const e of client.readStream(parkedStream, { resolveLinkTos: true })) out.push(e)
            return out
          }).pipe(Effect.filterOrFail((p) => p.length === 1))
        )
        expect(parked[0]!.event!.id).toBe(poison!.id)
        expect((parked[0]!.link!.metadata as { reason: string }).reason).toContain("cannot decode Credited: amount is missing")
        yield* Effect.promise(() => client.replayParkedMessagesToStream(`$ce-${category}`, "g"))
        const [replayed] = yield* sub.take(1)
        expect(replayed!.id).toBe(poison!.id)
        expect(json(replayed!)).toEqual({ doc: "a", amount: 1 })
        yield* replayed!.settle(ack)
      }))

    it.scopedLive("nack skip drops an event on purpose: not redelivered, not parked", () =>
      Effect.gen(function*() {
        const { append, client, source } = yield* setup(via)
        const category = uniqueCategory("skip")
        yield* append(`${category}-1`, credited("a", 1))
        const sub = yield* collectInto(source.subscribe(persistent([category], "g")))
        const [first] = yield* sub.take(1)
        yield* first!.settle(nack("skip", "not ours"))
        yield* append(`${category}-1`, credited("a", 2))
        const [second] = yield* sub.take(1)
        expect(json(second!)).toEqual({ doc: "a", amount: 2 })
        yield* second!.settle(ack)
        const info = yield* eventually(
          Effect.promise(() => client.getPersistentSubscriptionToStreamInfo(`$ce-${category}`, "g")).pipe(
            Effect.filterOrFail((i) => i.stats.totalInFlightMessages === 0)
          )
        )
        expect(info.stats.parkedMessageCount).toBe(0n)
        expect(info.stats.retryBufferCount).toBe(0)
      }))

    it.scopedLive("two subscribers in one group (Pinned): every event once, per-stream order kept", () =>
      Effect.gen(function*() {
        const { append, client, source } = yield* setup(via)
        const category = uniqueCategory("two")
        const seen = new Map<string, Array<number>>()
        const revisionsOf = new Map<string, Array<bigint>>()
        const done = yield* Deferred.make<void>()
        const consume = (who: number) =>
          source.subscribe(persistent([category], "g", 2)).pipe(
            Stream.runForEach((d) =>
              Effect.gen(function*() {
                seen.set(d.id, [...(seen.get(d.id) ?? []), who])
                revisionsOf.set(d.streamId, [...(revisionsOf.get(d.streamId) ?? []), d.revision])
                yield* d.settle(ack)
                if (seen.size === 24) yield* Deferred.succeed(done, undefined)
              })
            ),
            Effect.forkScoped
          )
        yield* consume(0)
        yield* consume(1)
        // both are connected before the events arrive
        yield* eventually(
          Effect.tryPromise(() => client.getPersistentSubscriptionToStreamInfo(`$ce-${category}`, "g")).pipe(
            Effect.filterOrFail((info) => info.connections.length === 2)
          )
        )
        for (let s = 0; s < 8; s++) yield* append(`${category}-${s}`, [credited("a", 1), credited("a", 2), credited("a", 3)])
        yield* Deferred.await(done)
        expect([...seen.values()].every((who) => who.length === 1)).toBe(true)
        // Pinned: both subscribers work, and a stream moves between them only when idle, so its order holds
        const bySubscriber = [0, 1].map((who) => [...seen.values()].filter((w) => w[0] === who).length)
        expect(bySubscriber.every((n) => n > 0)).toBe(true)
        expect([...revisionsOf.values()].every((r) => r.join() === "0,1,2")).toBe(true)
      }))

    it.scopedLive("several categories: one group per category stream, merged", () =>
      Effect.gen(function*() {
        const { append, source } = yield* setup(via)
        const a = uniqueCategory("pa")
        const b = uniqueCategory("pb")
        yield* append(`${a}-1`, credited("a", 1))
        yield* append(`${b}-1`, credited("b", 2))
        const sub = yield* collectInto(source.subscribe(persistent([a, b], "g")))
        const got = yield* sub.take(2)
        expect(got.map((d) => d.streamId).sort()).toEqual([`${a}-1`, `${b}-1`].sort())
        yield* Effect.forEach(got, (d) => d.settle(ack))
      }))

    it.scopedLive("interruption unsubscribes: the group sees its subscriber leave", () =>
      Effect.gen(function*() {
        const { append, client, source } = yield* setup(via)
        const category = uniqueCategory("leave")
        yield* append(`${category}-1`, credited("a", 1))
        const sub = yield* collectInto(source.subscribe(persistent([category], "g")))
        yield* sub.take(1)
        const connections = Effect.promise(() => client.getPersistentSubscriptionToStreamInfo(`$ce-${category}`, "g")).pipe(
          Effect.map((i) => i.connections.length)
        )
        expect(yield* connections).toBe(1)
        yield* Fiber.interrupt(sub.fiber)
        yield* eventually(connections.pipe(Effect.filterOrFail((n) => n === 0)))
      }))
  })

  describe("category reads", () => {
    it.scopedLive.skipIf(clientKind !== "kurrentdb")("one category from the $idx-ce- index on a 25.1 server: events (no links), by log position; resumes; head", () =>
      Effect.gen(function*() {
        const indexed = { client: "kurrentdb" } as const
        const { append, source } = yield* setup(indexed)
        const category = uniqueCategory("idx")
        const first = yield* append(`${category}-1`, [credited("a", 1), credited("a", 2)])
        yield* append(`other${category}-1`, credited("z", 9))
        const second = yield* append(`${category}-2`, credited("b", 3))
        const all = yield* collectInto(source.subscribe(catchUp([category])))
        const got = yield* all.take(3)
        expect(got.map((d) => [d.streamId, d.revision, json(d).amount])).toEqual([
          [`${category}-1`, 0n, 1],
          [`${category}-1`, 1n, 2],
          [`${category}-2`, 0n, 3]
        ])
        expect(got.every((d) => d.type === "Credited")).toBe(true)
        // positioned by log (prepare) position, as in $all
        expect(got[1]!.position).toBe(first.position!.prepare)
        expect(got[2]!.position).toBe(second.position!.prepare)
        expect(yield* source.head([category])).toEqual(Option.some(second.position!.prepare))
        const resumed = yield* collectInto(source.subscribe(catchUp([category], Option.some(got[1]!.position))))
        expect((yield* resumed.take(1)).map((d) => json(d).amount)).toEqual([3])
      }))

    it.scopedLive.skipIf(clientKind !== "kurrentdb" || skipExternal)("falls back to $ce- links on a server without secondary indexes", () =>
      Effect.gen(function*() {
        const server = yield* EventStoreServer.make({ secondaryIndexes: false })
        const source = yield* Layer.build(
          EventStoreDB.layer({ client: "kurrentdb", connectionString: Redacted.make(server.connectionString), resubscribe: fast })
        ).pipe(Effect.map(Context.get(EventSource)))
        const client = yield* makeClient(server.connectionString)
        const category = uniqueCategory("old")
        yield* Effect.promise(() => client.appendToStream(`${category}-1`, [credited("a", 1), credited("a", 2)]))
        const all = yield* collectInto(source.subscribe(catchUp([category])))
        // positions are the links' revisions in $ce-<category>
        expect((yield* all.take(2)).map((d) => d.position)).toEqual([0n, 1n])
        expect(yield* source.head([category])).toEqual(Option.some(1n))
      }))

    it.scopedLive("reading $ce- links, a checkpoint beyond the end of the stream (another path wrote it) fails typed instead of skipping", () =>
      Effect.gen(function*() {
        const { append, source } = yield* setup(via)
        const category = uniqueCategory("beyond")
        yield* append(`${category}-1`, [credited("a", 1), credited("a", 2)])
        yield* eventually(source.head([category]).pipe(Effect.filterOrFail(Option.isSome)))
        const error = yield* source.subscribe(catchUp([category], Option.some(1_000_000n))).pipe(Stream.runDrain, Effect.flip)
        expect(error).toBeInstanceOf(EventSourceError)
        expect(error.retryable).toBe(false)
        expect(error.message).toContain("beyond the end")
      }))

    it.scoped.skipIf(clientKind !== "esdb")("the index path needs the KurrentDB client: categoryReads index with the 6.x client fails typed", () =>
      Effect.gen(function*() {
        const error = yield* Layer.build(
          EventStoreDB.layer({ client: "esdb", categoryReads: "index", connectionString: Redacted.make("esdb://127.0.0.1:1?tls=false") })
        ).pipe(Effect.flip)
        expect(error).toBeInstanceOf(EventSourceError)
        expect((error as EventSourceError).retryable).toBe(false)
      }))

    it.scoped("the client follows the connection string's scheme; the other package cannot join this process (typed error)", () =>
      Effect.gen(function*() {
        // this process uses one package (see support/eventStoreClient.ts); the other scheme asks for the other one
        const other = clientKind === "esdb" ? "kurrentdb://127.0.0.1:1?tls=false" : "esdb://127.0.0.1:1?tls=false"
        const error = yield* Layer.build(
          EventStoreDB.layer({ ...(clientKind === "esdb" ? {} : { client: "esdb" as const }), connectionString: Redacted.make(other) })
        ).pipe(Effect.flip)
        expect(error).toBeInstanceOf(EventSourceError)
        expect((error as EventSourceError).message).toContain("cannot share a process")
      }))
  })

  describe("lifetime", () => {
    it.scopedLive("a subscription that outlives the layer fails (not retryable) instead of hanging", () =>
      Effect.gen(function*() {
        const connectionString = external ?? (yield* EventStoreServer.make()).connectionString
        const layerScope = yield* Scope.make()
        const source = yield* Layer.buildWithScope(
          EventStoreDB.layer({ ...via, connectionString: Redacted.make(connectionString), resubscribe: fast }),
          layerScope
        ).pipe(Effect.map(Context.get(EventSource)))
        const client = yield* makeClient(connectionString)
        const category = uniqueCategory("outlive")
        yield* Effect.promise(() => client.appendToStream(`${category}-1`, credited("a", 1)))
        const sub = yield* collectInto(source.subscribe(catchUp([category])))
        yield* sub.take(1)
        yield* Scope.close(layerScope, Exit.void)
        const exit = yield* Fiber.await(sub.fiber)
        expect(Exit.isFailure(exit)).toBe(true)
        const error = Exit.isFailure(exit) ? yield* Effect.flip(Effect.failCause(exit.cause)) : undefined
        expect((error as EventSourceError).retryable).toBe(false)
        const again = yield* source.subscribe(catchUp([category])).pipe(Stream.runDrain, Effect.flip)
        expect(again.retryable).toBe(false)
      }))
  })

  describe("configuration", () => {
    it.scopedLive("layerConfig reads EVENTSTORE_CONNECTION_STRING, redacted", () =>
      Effect.gen(function*() {
        const connectionString = external ?? (yield* EventStoreServer.make()).connectionString
        const source = yield* Layer.build(EventStoreDB.layerConfig()).pipe(
          Effect.map(Context.get(EventSource)),
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([
            ["EVENTSTORE_CONNECTION_STRING", connectionString],
            ["EVENTSTORE_CLIENT", via.client!],
            ...(via.categoryReads === undefined ? [] : [["EVENTSTORE_CATEGORY_READS", via.categoryReads] as [string, string]])
          ])))
        )
        expect(yield* source.head([uniqueCategory("none")])).toEqual(Option.none())
        const config = yield* EventStoreDB.config.pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["EVENTSTORE_CONNECTION_STRING", "esdb://secret@h:1"]])))
        )
        expect(String(config.connectionString)).not.toContain("secret")
      }))

    it.scoped("an invalid connection string fails the layer, not retryable", () =>
      Effect.gen(function*() {
        const error = yield* Layer.build(
          EventStoreDB.layer({ ...via, connectionString: Redacted.make("esdb://admin:s3cret@host:2113?tls=fals") })
        ).pipe(Effect.flip)
        expect(error).toBeInstanceOf(EventSourceError)
        expect((error as EventSourceError).retryable).toBe(false)
        // the secret shows nowhere in the error
        expect(JSON.stringify(error)).not.toContain("s3cret")
        expect(String(error)).not.toContain("s3cret")
        expect((error as EventSourceError).message).toContain("position")
      }))
  })
})

// ---- engine end to end -----------------------------------------------------------

const Account = Schema.Struct({ total: Schema.Number, applied: Schema.Array(Schema.String) })

const accounts = (category: string) =>
  Projection.make({
    name: `accounts_${category}`,
    categories: [category],
    document: Account,
    events: { Credited: Schema.Struct({ doc: Schema.String, amount: Schema.Number }) },
    key: (event) => event.data.doc,
    evolve: (doc, event) => ({ total: (doc?.total ?? 0) + event.data.amount, applied: [...(doc?.applied ?? []), event.id] })
  })

/** Ids applied to the projection's documents, in document order (a double apply shows twice). */
const appliedIds = (store: InMemory.MemoryStore, collection: string) =>
  [...store.documents(collection).values()].flatMap((d) => (d.body?.applied as Array<string> | undefined) ?? [])

/** Waits until `ids.length` applications show, then checks they are exactly `ids`. */
const expectAppliedOnce = (store: InMemory.MemoryStore, collection: string, ids: ReadonlyArray<string>) =>
  eventually(
    Effect.try(() => {
      const applied = appliedIds(store, collection)
      if (applied.length < ids.length) throw new Error(`applied ${applied.length} of ${ids.length}`)
      return applied
    }),
    400
  ).pipe(Effect.map((applied) => expect([...applied].sort()).toEqual([...ids].sort())))

const runEngine = (
  projection: ReturnType<typeof accounts>,
  source: EventSource["Type"],
  store: InMemory.MemoryStore,
  options: Parameters<typeof Reconciler.run>[1]
) =>
  Reconciler.run(projection, { lanes: 3, batchSize: 4, commitInterval: "20 millis", ...options }).pipe(
    Effect.provideService(EventSource, source),
    Effect.provideService(ReadModelStore, store.port),
    Effect.forkScoped
  )

describe.each(engineClients)("engine end to end (in-memory store) through $name", ({ via }) => {
  for (const mode of ["catch-up", "persistent"] as const) {
    it.scopedLive(`${mode}: every event applied once; the poison event ${mode === "catch-up" ? "dead-lettered" : "parked with its reason, replayable"}`, () =>
      Effect.gen(function*() {
        const { append, client, source } = yield* setup(via)
        const category = uniqueCategory(mode === "catch-up" ? "e2ec" : "e2ep")
        const store = yield* InMemory.makeStore()
        const ids: Array<string> = []
        for (let i = 0; i < 30; i++) {
          const event = credited(`d${i % 4}`, i)
          ids.push(event.id)
          yield* append(`${category}-${i % 5}`, event)
        }
        const poison = jsonEvent({ type: "Credited", data: { doc: "d0" } })
        yield* append(`${category}-9`, poison)
        const projection = accounts(category)
        yield* runEngine(projection, source, store, { mode })
        yield* expectAppliedOnce(store, projection.collection, ids)
        if (mode === "catch-up") {
          const letters = yield* eventually(
            Effect.sync(() => store.letters()).pipe(Effect.filterOrFail((l) => l.length === 1))
          )
          expect(letters[0]!.eventId).toBe(poison.id)
          expect(new TextDecoder().decode(letters[0]!.data)).toBe(JSON.stringify({ doc: "d0" }))
          return
        }
        const group = `${projection.name}@${projection.version}`
        const parkedStream = `$persistentsubscription-$ce-${category}::${group}-parked`
        const readParked = Effect.tryPromise(async () => {
          const out = []
          for await (const e of client.readStream(parkedStream, { resolveLinkTos: true })) out.push(e)
          return out
        })
        const parked = yield* eventually(readParked.pipe(Effect.filterOrFail((p) => p.length === 1)))
        expect(parked[0]!.event!.id).toBe(poison.id)
        expect(JSON.stringify(parked[0]!.link!.metadata)).toContain("amount")
        // replayed, it is delivered again: the engine parks it again, with its reason
        yield* Effect.promise(() => client.replayParkedMessagesToStream(`$ce-${category}`, group))
        yield* eventually(
          readParked.pipe(Effect.filterOrFail((p) => p.length === 1 && p[0]!.link!.revision === 1n))
        )
        yield* expectAppliedOnce(store, projection.collection, ids)
      }))

    it.scopedLive.skipIf(skipExternal)(`${mode}: the server stops and restarts; the engine resubscribes and converges`, () =>
      Effect.gen(function*() {
        const dataDir = yield* tempDir
        const serverScope = yield* Scope.make()
        const first = yield* EventStoreServer.make({ dataDir }).pipe(Scope.extend(serverScope))
        const source = yield* Layer.build(
          EventStoreDB.layer({ ...via, connectionString: Redacted.make(first.connectionString), resubscribe: fast })
        ).pipe(Effect.map(Context.get(EventSource)))
        const client = yield* makeClient(first.connectionString)
        const category = uniqueCategory("restart")
        const ids: Array<string> = []
        const appendSome = (from: number, n: number) =>
          Effect.forEach(Array.from({ length: n }, (_, k) => from + k), (i) => {
            const event = credited(`d${i % 3}`, i)
            ids.push(event.id)
            return eventually(Effect.tryPromise(() => client.appendToStream(`${category}-${i % 4}`, event)))
          })
        const store = yield* InMemory.makeStore()
        const projection = accounts(category)
        yield* runEngine(projection, source, store, { mode, resubscribeSchedule: fast })
        yield* appendSome(0, 10)
        yield* expectAppliedOnce(store, projection.collection, ids)
        yield* Scope.close(serverScope, Exit.void)
        yield* EventStoreServer.make({ dataDir, port: first.port })
        yield* appendSome(10, 10)
        yield* expectAppliedOnce(store, projection.collection, ids)
      }))
  }

  it.scopedLive("persistent: the subscription is dropped mid-way (group updated); no loss, no double apply", () =>
    Effect.gen(function*() {
      const { append, client, source } = yield* setup(via)
      const category = uniqueCategory("drop")
      const store = yield* InMemory.makeStore()
      const projection = accounts(category)
      const ids: Array<string> = []
      const appendSome = (from: number, n: number) =>
        Effect.forEach(Array.from({ length: n }, (_, k) => from + k), (i) => {
          const event = credited(`d${i % 3}`, i)
          ids.push(event.id)
          return append(`${category}-${i % 4}`, event)
        })
      yield* runEngine(projection, source, store, { mode: "persistent", group: "g", resubscribeSchedule: fast })
      yield* appendSome(0, 15)
      yield* expectAppliedOnce(store, projection.collection, ids)
      // updating a group drops its subscribers; they resubscribe
      yield* Effect.promise(() =>
        client.updatePersistentSubscriptionToStream(
          `$ce-${category}`,
          "g",
          persistentSubscriptionToStreamSettingsFromDefaults({ ...EventStoreDB.defaultPersistentSettings, maxRetryCount: 20 })
        )
      )
      yield* appendSome(15, 15)
      yield* expectAppliedOnce(store, projection.collection, ids)
    }))

  it.scopedLive("persistent: two engines in one consumer group apply every event once", () =>
    Effect.gen(function*() {
      const { append, source } = yield* setup(via)
      const category = uniqueCategory("pair")
      const store = yield* InMemory.makeStore()
      const projection = accounts(category)
      const ids: Array<string> = []
      for (let i = 0; i < 40; i++) {
        const event = credited(`d${i % 6}`, i)
        ids.push(event.id)
        yield* append(`${category}-${i % 8}`, event)
      }
      yield* runEngine(projection, source, store, { mode: "persistent", group: "shared", bufferSize: 4 })
      yield* runEngine(projection, source, store, { mode: "persistent", group: "shared", bufferSize: 4 })
      yield* expectAppliedOnce(store, projection.collection, ids)
    }))
})

// ---- helpers ---------------------------------------------------------------------

const tempDir = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "esdb-adapter-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

/** Appends raw protocol messages (what other clients may write), bypassing the client's encoding. */
const appendRaw = (
  connectionString: string,
  stream: string,
  events: ReadonlyArray<{ readonly type?: string; readonly contentType: string; readonly data: string; readonly metadata: string }>
) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      protocol.load()
      const address = new URL(connectionString.replace(/^esdb:/, "http:")).host
      return new protocol.streamsGrpc.StreamsClient(address, grpc.credentials.createInsecure())
    }),
    (raw) =>
      Effect.async<void, Error>((resume) => {
        const call = raw.append((error) => resume(error ? Effect.fail(error) : Effect.void))
        const header = new protocol.streams.AppendReq()
        const options = new protocol.streams.AppendReq.Options()
        const id = new protocol.shared.StreamIdentifier()
        id.setStreamName(Buffer.from(stream))
        options.setStreamIdentifier(id)
        options.setAny(new protocol.shared.Empty())
        header.setOptions(options)
        call.write(header)
        for (const e of events) {
          const req = new protocol.streams.AppendReq()
          const m = new protocol.streams.AppendReq.ProposedMessage()
          const uuid = new protocol.shared.UUID()
          uuid.setString(randomUUID())
          m.setId(uuid)
          if (e.type !== undefined) m.getMetadataMap().set("type", e.type)
          m.getMetadataMap().set("content-type", e.contentType)
          m.setData(Buffer.from(e.data))
          m.setCustomMetadata(Buffer.from(e.metadata))
          req.setProposedMessage(m)
          call.write(req)
        }
        call.end()
      }),
    (raw) => Effect.sync(() => raw.close())
  )
