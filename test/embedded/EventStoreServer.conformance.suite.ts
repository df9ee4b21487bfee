/**
 * Conformance of the embedded EventStoreDB server, written against the client
 * API only. Runs against the embedded server by default, and against a real
 * server when EVENTSTORE_CONNECTION_STRING is set (then the tests that need to
 * restart the server are skipped).
 *
 * One suite through each official client — a matrix, not a copy:
 * EventStoreServer.conformance.test.ts runs it with `@eventstore/db-client`,
 * EventStoreServer.conformance.kurrentdb.test.ts with `@kurrent/kurrentdb-client`.
 */
import { Client as EventStoreDBClient, clientKind, clientPackage, expecting } from "../support/eventStoreClient.js"
import type { PersistentSubscriptionToStreamResolvedEvent, ResolvedEvent } from "@eventstore/db-client"
import { randomUUID } from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Effect, Exit, FastCheck as fc, Scope } from "effect"
import * as EventStoreServer from "../../src/embedded/EventStoreServer.js"
import { start as startRaw } from "../../src/embedded/eventstore/Server.js"

// this process's client package (6.x or KurrentDB, see support/eventStoreClient.ts)
const {
  BACKWARDS,
  binaryEvent,
  DISPATCH_TO_SINGLE,
  END,
  eventTypeFilter,
  jsonEvent,
  PersistentSubscriptionDoesNotExistError,
  PersistentSubscriptionExistsError,
  persistentSubscriptionToAllSettingsFromDefaults,
  persistentSubscriptionToStreamSettingsFromDefaults,
  MaxAppendSizeExceededError,
  ROUND_ROBIN,
  START,
  StreamDeletedError,
  StreamNotFoundError,
  streamNameFilter,
  UnavailableError,
  WrongExpectedVersionError,
} = clientPackage
type EventStoreDBClient = InstanceType<typeof EventStoreDBClient>
type UnavailableError = InstanceType<typeof UnavailableError>

/** A wrong expected version's actual and expected revisions (`actualVersion` in 6.x, `actualState` in KurrentDB). */
const actualOf = (e: { actualVersion?: unknown; actualState?: unknown }) => e.actualVersion ?? e.actualState
const expectedOf = (e: { expectedVersion?: unknown; expectedState?: unknown }) => e.expectedVersion ?? e.expectedState

/** Starts an embedded server through the public module; `close` shuts it down. */
const start = async (options: EventStoreServer.Options) => {
  const scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(Scope.extend(EventStoreServer.make(options), scope))
  return { ...server, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

const external = process.env.EVENTSTORE_CONNECTION_STRING
let client: EventStoreDBClient
let closeServer: (() => Promise<void>) | undefined

beforeAll(async () => {
  if (external) {
    client = EventStoreDBClient.connectionString(external)
  } else {
    const server = await start({})
    closeServer = server.close
    client = EventStoreDBClient.connectionString(server.connectionString)
  }
})

afterAll(async () => {
  await client.dispose()
  await closeServer?.()
})

/** A category unique to one test, so that runs against a real server do not collide. */
const uniqueCategory = (name: string) => `${name}${randomUUID().replace(/-/g, "").slice(0, 12)}`

const collect = async <A>(iterable: AsyncIterable<A>): Promise<Array<A>> => {
  const out: Array<A> = []
  for await (const a of iterable) out.push(a)
  return out
}

/** Polls until `check` passes, at most `attempts` times (each attempt waits for the event loop a little). */
const eventually = async (check: () => Promise<void> | void, attempts = 200): Promise<void> => {
  for (let i = 0;; i++) {
    try {
      await check()
      return
    } catch (error) {
      if (i >= attempts) throw error
      await new Promise((r) => setTimeout(r, 25))
    }
  }
}

/** Takes `n` events of an async iterable, then stops it. */
const take = async <A>(iterable: AsyncIterable<A>, n: number): Promise<Array<A>> => {
  const out: Array<A> = []
  if (n === 0) return out
  for await (const a of iterable) {
    out.push(a)
    if (out.length >= n) break
  }
  return out
}

const credited = (amount: number) => jsonEvent({ type: "Credited", data: { amount } })

/** The suite's client, for blocks that bring their own server and client. */
const sharedClient = () => client

/**
 * The append paths: a real server (21.10+) advertises `BatchAppend` and the
 * client appends over it; one that does not gets `Streams/Append`. The
 * embedded server serves each; a real server is tested on the path it offers.
 */
const appendPaths: Array<{ readonly path: string; readonly batchAppend: boolean | undefined }> = external
  ? [{ path: "the server's append path", batchAppend: undefined }]
  : [{ path: "BatchAppend", batchAppend: true }, { path: "Append (BatchAppend not advertised)", batchAppend: false }]

describe.each(appendPaths)("streams, appending over $path", ({ batchAppend }) => {
  let client: EventStoreDBClient
  let closeOwn: (() => Promise<void>) | undefined
  beforeAll(async () => {
    if (batchAppend === undefined) {
      client = sharedClient()
      return
    }
    const server = await start({ batchAppend })
    closeOwn = server.close
    client = EventStoreDBClient.connectionString(server.connectionString)
  })
  afterAll(async () => {
    if (closeOwn) {
      await client.dispose()
      await closeOwn()
    }
  })

  it("refuses an append larger than the maximum append size (1 MiB by default), storing none of it", async () => {
    const stream = `${uniqueCategory("big")}-1`
    const tooBig = await client
      .appendToStream(stream, [credited(1), binaryEvent({ type: "Blob", data: new Uint8Array(1024 * 1024 + 1) })])
      .catch((e) => e)
    expect(tooBig).toBeInstanceOf(MaxAppendSizeExceededError)
    expect(tooBig.maxAppendSize).toBe(1024 * 1024)
    expect(await collect(client.readStream(stream)).catch((e) => e)).toBeInstanceOf(StreamNotFoundError)
    // just under the limit is fine
    const fits = await client.appendToStream(stream, binaryEvent({ type: "Blob", data: new Uint8Array(1000 * 1000) }))
    expect(fits.nextExpectedRevision).toBe(0n)
  })

  it("answers deletes of a stream that never existed as a real server does", async () => {
    // soft delete: a wrong expected version whatever the expectation (KurrentDB issue 4637)
    const never = `${uniqueCategory("never")}-1`
    const soft = await client.deleteStream(never).catch((e) => e)
    expect(soft).toBeInstanceOf(WrongExpectedVersionError)
    expect(soft.streamName).toBe(never)
    expect(actualOf(soft)).toBe("no_stream")
    expect(await client.deleteStream(never, expecting("no_stream")).catch((e) => e)).toBeInstanceOf(
      WrongExpectedVersionError
    )
    // tombstone: succeeds, and the stream is deleted for good
    const gone = `${uniqueCategory("never")}-2`
    expect(await client.tombstoneStream(gone, expecting("no_stream"))).toBeDefined()
    expect(await collect(client.readStream(gone)).catch((e) => e)).toBeInstanceOf(StreamDeletedError)
    expect(await client.appendToStream(gone, credited(1)).catch((e) => e)).toBeInstanceOf(StreamDeletedError)
    // a stream that exists only through its metadata counts as existing
    const implicit = `${uniqueCategory("never")}-3`
    await client.setStreamMetadata(implicit, { maxCount: 10 })
    expect(await client.deleteStream(implicit, expecting("no_stream"))).toBeDefined()
  })

  it("appends with expected revisions and reports wrong expected versions", async () => {
    const stream = `${uniqueCategory("acc")}-1`
    const first = await client.appendToStream(stream, [credited(1), credited(2)], expecting("no_stream"))
    expect(first.success).toBe(true)
    expect(first.nextExpectedRevision).toBe(1n)
    const second = await client.appendToStream(stream, credited(3), expecting(1n))
    expect(second.nextExpectedRevision).toBe(2n)
    expect(second.position!.commit > first.position!.commit).toBe(true)
    await client.appendToStream(stream, credited(4), expecting("stream_exists"))

    const wrong = await client.appendToStream(stream, credited(5), expecting(1n)).catch((e) => e)
    expect(wrong).toBeInstanceOf(WrongExpectedVersionError)
    expect(actualOf(wrong)).toBe(3n)
    expect(expectedOf(wrong)).toBe(1n)
    const noStream = await client.appendToStream(stream, credited(5), expecting("no_stream")).catch((e) => e)
    expect(noStream).toBeInstanceOf(WrongExpectedVersionError)
    const missing = await client
      .appendToStream(`${uniqueCategory("acc")}-2`, credited(1), expecting("stream_exists"))
      .catch((e) => e)
    expect(missing).toBeInstanceOf(WrongExpectedVersionError)
    expect(actualOf(missing)).toBe("no_stream")
  })

  it("keeps ids, types, JSON and binary data, metadata and created time", async () => {
    const stream = `${uniqueCategory("doc")}-1`
    const id = randomUUID()
    const before = Date.now()
    await client.appendToStream(stream, [
      jsonEvent({ id, type: "Opened", data: { name: "a", n: 1 }, metadata: { by: "me" } }),
      binaryEvent({ type: "Blob", data: new Uint8Array([0, 1, 2, 255]), metadata: new Uint8Array([9, 9]) })
    ])
    const events = await collect(client.readStream(stream))
    expect(events.map((e) => e.event!.type)).toEqual(["Opened", "Blob"])
    const [opened, blob] = events.map((e) => e.event!)
    expect(opened!.id).toBe(id)
    expect(opened!.isJson).toBe(true)
    expect(opened!.data).toEqual({ name: "a", n: 1 })
    expect(opened!.metadata).toEqual({ by: "me" })
    expect(opened!.created.getTime()).toBeGreaterThanOrEqual(before - 1000)
    expect(blob!.isJson).toBe(false)
    expect([...(blob!.data as Uint8Array)]).toEqual([0, 1, 2, 255])
    expect(blob!.revision).toBe(1n)
  })

  it("treats a repeated append of the same event ids as done (idempotent)", async () => {
    const stream = `${uniqueCategory("idem")}-1`
    const events = [credited(1), credited(2)]
    await client.appendToStream(stream, events, expecting("no_stream"))
    const again = await client.appendToStream(stream, events, expecting("no_stream"))
    expect(again.success).toBe(true)
    expect(again.nextExpectedRevision).toBe(1n)
    expect(await collect(client.readStream(stream))).toHaveLength(2)
  })

  it("applies stream metadata: maxCount and truncateBefore", async () => {
    const stream = `${uniqueCategory("meta")}-1`
    await client.appendToStream(stream, [1, 2, 3, 4, 5].map(credited))
    await client.setStreamMetadata(stream, { maxCount: 2 })
    expect((await collect(client.readStream(stream))).map((e) => e.event!.revision)).toEqual([3n, 4n])
    await client.setStreamMetadata(stream, { truncateBefore: 4 })
    expect((await collect(client.readStream(stream))).map((e) => e.event!.revision)).toEqual([4n])
    const { metadata } = await client.getStreamMetadata(stream)
    expect(metadata).toMatchObject({ truncateBefore: 4 })
  })

  it("reads forwards, backwards, from a revision, with a max count; reports missing streams", async () => {
    const stream = `${uniqueCategory("r")}-1`
    await client.appendToStream(stream, [1, 2, 3, 4, 5].map(credited))
    const revisions = async (options: Parameters<typeof client.readStream>[1]) =>
      (await collect(client.readStream(stream, options))).map((e) => e.event!.revision)
    expect(await revisions({})).toEqual([0n, 1n, 2n, 3n, 4n])
    expect(await revisions({ fromRevision: 2n, maxCount: 2 })).toEqual([2n, 3n])
    expect(await revisions({ direction: BACKWARDS, fromRevision: END, maxCount: 2 })).toEqual([4n, 3n])
    expect(await revisions({ direction: BACKWARDS, fromRevision: 1n })).toEqual([1n, 0n])
    const missing = await collect(client.readStream(`${uniqueCategory("r")}-none`)).catch((e) => e)
    expect(missing).toBeInstanceOf(StreamNotFoundError)
  })

  it("reads $all forwards and backwards with strictly growing positions", async () => {
    const stream = `${uniqueCategory("all")}-1`
    const { position } = await client.appendToStream(stream, [credited(1), credited(2)])
    const backwards = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 50 }))
    const mine = backwards.filter((e) => e.event?.streamId === stream)
    expect(mine.map((e) => e.event!.revision)).toEqual([1n, 0n])
    const forwards = await collect(client.readAll({ fromPosition: START, maxCount: 100_000 }))
    const positions = forwards.map((e) => e.event!.position!.commit)
    expect(positions.every((p, i) => i === 0 || p > positions[i - 1]!)).toBe(true)
    expect(forwards.some((e) => e.event!.streamId === stream && e.event!.position!.commit === position!.commit)).toBe(true)
  })

  it("links every event of <category>-<id> into $ce-<category>, resolvable", async () => {
    const category = uniqueCategory("cat")
    await client.appendToStream(`${category}-a`, [credited(1), credited(2)])
    await client.appendToStream(`${category}-b`, credited(3))
    await eventually(async () => {
      const links = await collect(client.readStream(`$ce-${category}`, { resolveLinkTos: true }))
      expect(links.map((e) => [e.event!.streamId, e.event!.revision, e.link!.revision])).toEqual([
        [`${category}-a`, 0n, 0n],
        [`${category}-a`, 1n, 1n],
        [`${category}-b`, 0n, 2n]
      ])
      const raw = await collect(client.readStream(`$ce-${category}`))
      expect(raw[0]!.event!.type).toBe("$>")
      expect(raw[0]!.link).toBeUndefined()
    })
  })

  it("soft-deletes and tombstones streams; links to deleted events stay unresolved", async () => {
    const category = uniqueCategory("del")
    await client.appendToStream(`${category}-1`, credited(1))
    await client.appendToStream(`${category}-2`, credited(2))
    await client.deleteStream(`${category}-1`)
    expect(await collect(client.readStream(`${category}-1`)).catch((e) => e)).toBeInstanceOf(StreamNotFoundError)
    const again = await client.appendToStream(`${category}-1`, credited(3))
    expect(again.nextExpectedRevision).toBe(1n)
    expect((await collect(client.readStream(`${category}-1`))).map((e) => e.event!.revision)).toEqual([1n])

    await client.tombstoneStream(`${category}-2`)
    expect(await collect(client.readStream(`${category}-2`)).catch((e) => e)).toBeInstanceOf(StreamDeletedError)
    expect(await client.appendToStream(`${category}-2`, credited(4)).catch((e) => e)).toBeInstanceOf(StreamDeletedError)

    await eventually(async () => {
      const links = await collect(client.readStream(`$ce-${category}`, { resolveLinkTos: true }))
      expect(links).toHaveLength(3)
      // the first link points at a deleted event: the link comes without its event
      expect(links[0]!.event).toBeUndefined()
      expect(links[0]!.link!.type).toBe("$>")
      expect(links[1]!.event).toBeUndefined()
      expect(links[2]!.event!.streamId).toBe(`${category}-1`)
    })
  })
})

describe("catch-up subscriptions", () => {
  it("delivers history, announces caught-up, then live events, and unsubscribes cleanly", async () => {
    const category = uniqueCategory("sub")
    await client.appendToStream(`${category}-1`, [credited(1), credited(2)])
    const subscription = client.subscribeToStream(`$ce-${category}`, { resolveLinkTos: true, fromRevision: START })
    const caughtUp = new Promise<void>((resolve) => subscription.once("caughtUp", () => resolve()))
    const received: Array<ResolvedEvent> = []
    const done = (async () => {
      for await (const e of subscription) {
        received.push(e)
        if (received.length === 4) break
      }
    })()
    await caughtUp
    await client.appendToStream(`${category}-2`, [credited(3), credited(4)])
    await done
    expect(received.map((e) => e.link!.revision)).toEqual([0n, 1n, 2n, 3n])
    expect(received.map((e) => e.event!.data)).toEqual([1, 2, 3, 4].map((amount) => ({ amount })))
    await subscription.unsubscribe()
  })

  it("starts after a revision (exclusive) and from the end", async () => {
    const stream = `${uniqueCategory("from")}-1`
    await client.appendToStream(stream, [1, 2, 3].map(credited))
    const after = await take(client.subscribeToStream(stream, { fromRevision: 1n }), 1)
    expect(after[0]!.event!.revision).toBe(2n)
    const fromEnd = client.subscribeToStream(stream, { fromRevision: END })
    const caughtUp = new Promise<void>((resolve) => fromEnd.once("caughtUp", () => resolve()))
    const next = take(fromEnd, 1)
    await caughtUp
    await client.appendToStream(stream, credited(4))
    expect((await next)[0]!.event!.revision).toBe(3n)
  })

  it("subscribes to $all with a stream-name filter, after a position", async () => {
    const a = uniqueCategory("fa")
    const b = uniqueCategory("fb")
    const { position } = await client.appendToStream(`${a}-1`, credited(1))
    await client.appendToStream(`${b}-1`, credited(2))
    await client.appendToStream(`${a}-2`, credited(3))
    const filter = streamNameFilter({ regex: `^${a}-` })
    const all = await take(client.subscribeToAll({ fromPosition: START, filter }), 2)
    expect(all.map((e) => e.event!.streamId)).toEqual([`${a}-1`, `${a}-2`])
    const after = await take(client.subscribeToAll({ fromPosition: position!, filter }), 1)
    expect(after.map((e) => e.event!.streamId)).toEqual([`${a}-2`])
  })

  it("filters $all by event type prefix, and subscribes from the end", async () => {
    const stream = `${uniqueCategory("et")}-1`
    const type = `Typed${randomUUID().replace(/-/g, "").slice(0, 8)}`
    const filter = eventTypeFilter({ prefixes: [type] })
    const fromEnd = client.subscribeToAll({ fromPosition: END, filter })
    const caughtUp = new Promise<void>((resolve) => fromEnd.once("caughtUp", () => resolve()))
    const live = take(fromEnd, 2)
    await caughtUp
    await client.appendToStream(stream, [
      jsonEvent({ type: `${type}A`, data: {} }),
      jsonEvent({ type: "Other", data: {} }),
      jsonEvent({ type: `${type}B`, data: {} })
    ])
    expect((await live).map((e) => e.event!.type)).toEqual([`${type}A`, `${type}B`])
    const history = await take(client.subscribeToAll({ fromPosition: START, filter }), 2)
    expect(history.map((e) => e.event!.revision)).toEqual([0n, 2n])
  })
})

describe("persistent subscriptions", () => {
  const settings = (changes: Parameters<typeof persistentSubscriptionToStreamSettingsFromDefaults>[0] = {}) =>
    persistentSubscriptionToStreamSettingsFromDefaults({ startFrom: START, resolveLinkTos: true, ...changes })

  it("creates, reports existing and missing groups, updates, lists, deletes", async () => {
    const stream = `${uniqueCategory("grp")}-1`
    await client.createPersistentSubscriptionToStream(stream, "g", settings({ maxRetryCount: 3 }))
    const exists = await client.createPersistentSubscriptionToStream(stream, "g", settings()).catch((e) => e)
    expect(exists).toBeInstanceOf(PersistentSubscriptionExistsError)
    const info = await client.getPersistentSubscriptionToStreamInfo(stream, "g")
    expect(info.settings.maxRetryCount).toBe(3)
    expect(info.settings.resolveLinkTos).toBe(true)
    await client.updatePersistentSubscriptionToStream(stream, "g", settings({ maxRetryCount: 7, consumerStrategyName: DISPATCH_TO_SINGLE }))
    const updated = await client.getPersistentSubscriptionToStreamInfo(stream, "g")
    expect(updated.settings.maxRetryCount).toBe(7)
    expect(updated.settings.consumerStrategyName).toBe(DISPATCH_TO_SINGLE)
    const listed = await client.listPersistentSubscriptionsToStream(stream)
    expect(listed.map((g) => g.groupName)).toEqual(["g"])
    await client.deletePersistentSubscriptionToStream(stream, "g")
    const missing = await client.getPersistentSubscriptionToStreamInfo(stream, "g").catch((e) => e)
    expect(missing).toBeInstanceOf(PersistentSubscriptionDoesNotExistError)
    const missingDelete = await client.deletePersistentSubscriptionToStream(stream, "g").catch((e) => e)
    expect(missingDelete).toBeInstanceOf(PersistentSubscriptionDoesNotExistError)
  })

  it("delivers resolved $ce links; ack by link id; nack retry redelivers with a growing retry count", async () => {
    const category = uniqueCategory("ps")
    await client.appendToStream(`${category}-1`, [credited(1), credited(2)])
    await client.createPersistentSubscriptionToStream(`$ce-${category}`, "g", settings())
    const subscription = client.subscribeToPersistentSubscriptionToStream(`$ce-${category}`, "g")
    const seen: Array<[number, number]> = []
    for await (const e of subscription) {
      const amount = (e.event!.data as { amount: number }).amount
      seen.push([amount, e.retryCount])
      expect(e.link!.streamId).toBe(`$ce-${category}`)
      if (amount === 1 && e.retryCount < 2) await subscription.nack("retry", "again", e)
      else await subscription.ack(e)
      if (seen.filter(([a]) => a === 1).length === 3 && seen.some(([a]) => a === 2)) break
    }
    expect(seen.filter(([a]) => a === 1).map(([, r]) => r)).toEqual([0, 1, 2])
    await subscription.unsubscribe()
    await eventually(async () => {
      const info = await client.getPersistentSubscriptionToStreamInfo(`$ce-${category}`, "g")
      expect(info.stats.totalInFlightMessages).toBe(0)
      expect(info.connections).toHaveLength(0)
    })
  })

  it("parks on nack park and beyond maxRetryCount; parked messages carry the reason and replay", async () => {
    const category = uniqueCategory("park")
    const stream = `$ce-${category}`
    await client.appendToStream(`${category}-1`, [credited(1), credited(2), credited(3)])
    await client.createPersistentSubscriptionToStream(stream, "g", settings({ maxRetryCount: 1 }))
    const subscription = client.subscribeToPersistentSubscriptionToStream(stream, "g")
    const parkedStream = `$persistentsubscription-${stream}::g-parked`
    const replayed: Array<number> = []
    let replaying = false
    let retriedOut = false
    let acked = false
    for await (const e of subscription) {
      const amount = (e.event!.data as { amount: number }).amount
      if (replaying) {
        replayed.push(amount)
        expect(e.link!.streamId).toBe(parkedStream)
        await subscription.ack(e)
        if (replayed.length === 2) break
        continue
      }
      if (amount === 1) await subscription.nack("park", "poison", e)
      else if (amount === 2) await subscription.nack("retry", "flaky", e)
      else await subscription.ack(e)
      // settled: 1 parked, 2 retried up to maxRetryCount (then parked), 3 acked
      if (amount === 2 && e.retryCount >= 1) retriedOut = true
      if (amount === 3) acked = true
      if (!retriedOut || !acked) continue
      // reads may take another connection (the KurrentDB client's): wait for the nacks to land
      await eventually(async () => {
        const parked = await collect(client.readStream(parkedStream, { resolveLinkTos: true }))
        expect(parked.map((p) => (p.event!.data as { amount: number }).amount).sort()).toEqual([1, 2])
        const reasons = parked.map((p) => JSON.stringify(p.link!.metadata))
        expect(reasons.some((r) => r.includes("poison"))).toBe(true)
        expect(reasons.some((r) => r.includes("flaky"))).toBe(true)
        const info = await client.getPersistentSubscriptionToStreamInfo(stream, "g")
        expect(info.stats.parkedMessageCount).toBe(2n)
      })
      replaying = true
      await client.replayParkedMessagesToStream(stream, "g")
    }
    expect(replayed.sort()).toEqual([1, 2])
    await subscription.unsubscribe()
  })

  it("retries messages that time out, with a growing retry count", async () => {
    const stream = `${uniqueCategory("timeout")}-1`
    await client.appendToStream(stream, credited(1))
    await client.createPersistentSubscriptionToStream(stream, "g", settings({ messageTimeout: 200, maxRetryCount: 5 }))
    const subscription = client.subscribeToPersistentSubscriptionToStream(stream, "g")
    const counts: Array<number> = []
    for await (const e of subscription) {
      counts.push(e.retryCount)
      if (counts.length === 3) {
        await subscription.ack(e)
        break
      }
    }
    expect(counts).toEqual([0, 1, 2])
    await subscription.unsubscribe()
  })

  it("shares a group between two subscribers (round robin): every event once", async () => {
    const stream = `${uniqueCategory("rr")}-1`
    await client.createPersistentSubscriptionToStream(stream, "g", settings({ consumerStrategyName: ROUND_ROBIN }))
    const seen = new Map<number, number>()
    const subscribers = [0, 1].map(() => client.subscribeToPersistentSubscriptionToStream(stream, "g", { bufferSize: 2 }))
    const perSubscriber = [0, 0]
    let finish!: () => void
    const finished = new Promise<void>((resolve) => (finish = resolve))
    const loops = subscribers.map(async (s, i) => {
      for await (const e of s) {
        const amount = (e.event!.data as { amount: number }).amount
        seen.set(amount, (seen.get(amount) ?? 0) + 1)
        perSubscriber[i]!++
        await s.ack(e)
        if (seen.size === 20) finish()
      }
    })
    // both are connected before the events arrive
    await eventually(async () => {
      expect((await client.getPersistentSubscriptionToStreamInfo(stream, "g")).connections).toHaveLength(2)
    })
    await client.appendToStream(stream, Array.from({ length: 20 }, (_, i) => credited(i)))
    await finished
    await Promise.all(subscribers.map((s) => s.unsubscribe()))
    await Promise.all(loops)
    expect([...seen.values()].every((n) => n === 1)).toBe(true)
    expect(perSubscriber.every((n) => n > 0)).toBe(true)
  })

  it("skips on nack skip: neither redelivered nor parked", async () => {
    const stream = `${uniqueCategory("skip")}-1`
    await client.appendToStream(stream, [credited(1), credited(2)])
    await client.createPersistentSubscriptionToStream(stream, "g", settings())
    const subscription = client.subscribeToPersistentSubscriptionToStream(stream, "g")
    const seen: Array<number> = []
    for await (const e of subscription) {
      const amount = (e.event!.data as { amount: number }).amount
      seen.push(amount)
      if (amount === 1) await subscription.nack("skip", "not mine", e)
      else {
        await subscription.ack(e)
        break
      }
    }
    expect(seen).toEqual([1, 2])
    await eventually(async () => {
      const info = await client.getPersistentSubscriptionToStreamInfo(stream, "g")
      expect(info.stats.totalInFlightMessages).toBe(0)
      expect(info.stats.parkedMessageCount).toBe(0n)
    })
  })

  it("limits subscribers to maxSubscriberCount", async () => {
    const stream = `${uniqueCategory("max")}-1`
    await client.appendToStream(stream, credited(1))
    await client.createPersistentSubscriptionToStream(stream, "g", settings({ maxSubscriberCount: 1 }))
    const first = client.subscribeToPersistentSubscriptionToStream(stream, "g")
    const [e] = await take(first, 1)
    await first.ack(e!)
    const second = client.subscribeToPersistentSubscriptionToStream(stream, "g")
    const error = await take(second, 1).catch((error) => error)
    expect(error?.type).toBe("maximum-subscribers-reached")
    await first.unsubscribe()
  })

  it("dispatches to a single subscriber while it has room (DispatchToSingle)", async () => {
    const stream = `${uniqueCategory("single")}-1`
    await client.appendToStream(stream, Array.from({ length: 6 }, (_, i) => credited(i)))
    await client.createPersistentSubscriptionToStream(stream, "g", settings({ consumerStrategyName: DISPATCH_TO_SINGLE }))
    const first = client.subscribeToPersistentSubscriptionToStream(stream, "g", { bufferSize: 100 })
    const got: Array<number> = []
    let second: ReturnType<typeof client.subscribeToPersistentSubscriptionToStream> | undefined
    for await (const e of first) {
      got.push((e.event!.data as { amount: number }).amount)
      await first.ack(e)
      if (got.length === 1) {
        // a second subscriber joins; the first still has room, so it gets everything
        second = client.subscribeToPersistentSubscriptionToStream(stream, "g", { bufferSize: 100 })
        second.on("data", () => {})
        await eventually(async () => {
          expect((await client.getPersistentSubscriptionToStreamInfo(stream, "g")).connections).toHaveLength(2)
        })
        await client.appendToStream(stream, Array.from({ length: 6 }, (_, i) => credited(6 + i)))
      }
      if (got.length === 12) break
    }
    expect(got).toEqual(Array.from({ length: 12 }, (_, i) => i))
    const info = await client.getPersistentSubscriptionToStreamInfo(stream, "g")
    expect(info.connections.map((c) => c.totalItems).sort()).toEqual([0n, 12n])
    await second!.unsubscribe()
  })

  it("checkpoints and resumes from the checkpoint when the group restarts", async () => {
    const stream = `${uniqueCategory("cp")}-1`
    await client.appendToStream(stream, Array.from({ length: 5 }, (_, i) => credited(i)))
    await client.createPersistentSubscriptionToStream(
      stream,
      "g",
      settings({ checkPointLowerBound: 1, checkPointUpperBound: 2, checkPointAfter: 100 })
    )
    const first = client.subscribeToPersistentSubscriptionToStream(stream, "g")
    let n = 0
    for await (const e of first) {
      await first.ack(e)
      if (++n === 4) break
    }
    await first.unsubscribe()
    await eventually(async () => {
      const info = await client.getPersistentSubscriptionToStreamInfo(stream, "g")
      expect(info.stats.lastCheckpointedEventRevision).toBe(3n)
    })
    const checkpoints = await collect(client.readStream(`$persistentsubscription-${stream}::g-checkpoint`, { direction: BACKWARDS, fromRevision: END, maxCount: 1 }))
    expect(checkpoints).toHaveLength(1)
    // updating the group restarts it from its checkpoint
    await client.updatePersistentSubscriptionToStream(stream, "g", settings({ checkPointLowerBound: 1, checkPointUpperBound: 2 }))
    const second = client.subscribeToPersistentSubscriptionToStream(stream, "g")
    const [next] = await take(second, 1)
    expect((next!.event!.data as { amount: number }).amount).toBe(4)
    await second.ack(next!)
    await second.unsubscribe()
  })

  it("lists all groups and restarts the subsystem; groups survive a restart", async () => {
    const stream = `${uniqueCategory("list")}-1`
    await client.createPersistentSubscriptionToStream(stream, "a", settings())
    await client.createPersistentSubscriptionToStream(stream, "b", settings())
    const all = await client.listAllPersistentSubscriptions()
    expect(all.filter((g) => g.eventSource === stream).map((g) => g.groupName).sort()).toEqual(["a", "b"])
    await client.restartPersistentSubscriptionSubsystem()
    await eventually(async () => {
      const info = await client.getPersistentSubscriptionToStreamInfo(stream, "a")
      expect(info.groupName).toBe("a")
    })
  })

  it("runs groups on $all with a filter, positioned by commit position", async () => {
    const category = uniqueCategory("pall")
    const group = `g${randomUUID().slice(0, 8)}`
    const { position } = await client.appendToStream(`${category}-1`, [credited(1), credited(2)])
    await client.appendToStream(`${uniqueCategory("other")}-1`, credited(99))
    await client.createPersistentSubscriptionToAll(
      group,
      persistentSubscriptionToAllSettingsFromDefaults({ startFrom: START }),
      { filter: streamNameFilter({ prefixes: [`${category}-`] }) }
    )
    const subscription = client.subscribeToPersistentSubscriptionToAll(group)
    const got: Array<[number, bigint]> = []
    for await (const e of subscription) {
      got.push([(e.event!.data as { amount: number }).amount, e.event!.position!.commit])
      await subscription.ack(e)
      if (got.length === 1) await client.appendToStream(`${category}-2`, credited(3))
      if (got.length === 3) break
    }
    expect(got.map(([amount]) => amount)).toEqual([1, 2, 3])
    expect(got[1]![1]).toBe(position!.commit)
    const info = await client.getPersistentSubscriptionToAllInfo(group)
    expect(info.settings.startFrom).toBe(START)
    expect(info.eventSource).toBe("$all")
    await client.deletePersistentSubscriptionToAll(group)
    expect(await client.getPersistentSubscriptionToAllInfo(group).catch((e) => e)).toBeInstanceOf(
      PersistentSubscriptionDoesNotExistError
    )
  })

  it("settles by the book: every delivery decision (ack, retry, park, skip) against a model", async () => {
    type Decision = "ack" | "retry" | "park" | "skip"
    const decision = fc.constantFrom<Decision>("ack", "retry", "park", "skip")
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(decision, { maxLength: 4 }), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 0, max: 3 }),
        async (plans, maxRetryCount) => {
          // the model: attempt k of event i follows plans[i][k] (ack when the plan runs out)
          const expected = plans.map((plan) => {
            for (let k = 0;; k++) {
              const d = plan[k] ?? "ack"
              if (d === "retry" && k < maxRetryCount) continue
              return { attempts: k + 1, outcome: d === "retry" ? "park" : d }
            }
          })
          const stream = `${uniqueCategory("model")}-1`
          await client.appendToStream(stream, plans.map((_, i) => credited(i)))
          await client.createPersistentSubscriptionToStream(stream, "g", settings({ maxRetryCount, consumerStrategyName: ROUND_ROBIN }))
          const subscription = client.subscribeToPersistentSubscriptionToStream(stream, "g", { bufferSize: 3 })
          const attempts = plans.map(() => [] as Array<number>)
          let final = 0
          let sentinel = false
          for await (const e of subscription) {
            const i = (e.event!.data as { amount: number }).amount
            if (i === -1) {
              sentinel = true
              await subscription.ack(e)
              break
            }
            attempts[i]!.push(e.retryCount)
            const k = attempts[i]!.length - 1
            const d = plans[i]![k] ?? "ack"
            if (d === "ack") await subscription.ack(e)
            else await subscription.nack(d, `decision ${k}`, e)
            if (k + 1 === expected[i]!.attempts) final++
            // once every event is final, nothing but the sentinel may come
            if (final === plans.length) await client.appendToStream(stream, credited(-1))
          }
          await subscription.unsubscribe()
          expect(sentinel).toBe(true)
          expect(attempts).toEqual(expected.map(({ attempts }) => Array.from({ length: attempts }, (_, k) => k)))
          const parked = await collect(
            client.readStream(`$persistentsubscription-${stream}::g-parked`, { resolveLinkTos: true })
          ).catch(() => [])
          const parkedIds = parked.map((p) => (p.event!.data as { amount: number }).amount).sort((a, b) => a - b)
          expect(parkedIds).toEqual(expected.flatMap(({ outcome }, i) => (outcome === "park" ? [i] : [])))
        }
      ),
      { numRuns: 25 }
    )
  })

  it("rejects subscribing to a missing group", async () => {
    const subscription = client.subscribeToPersistentSubscriptionToStream(`${uniqueCategory("none")}-1`, "nope")
    const error = await take(subscription, 1).catch((e) => e)
    expect(error).toBeInstanceOf(PersistentSubscriptionDoesNotExistError)
  })
})

/** The server version the client learned from ServerFeatures (the client keeps it to itself). */
const serverVersion = async (c: EventStoreDBClient): Promise<string> =>
  (await (c as unknown as { capabilities: Promise<{ serverVersion: string }> }).capabilities).serverVersion

/** Whether a version (`major.minor…`) is at least `major.minor`. */
const atLeast = (version: string, major: number, minor: number) => {
  const [a = 0, b = 0] = version.split(".").map(Number)
  return a > major || (a === major && b >= minor)
}

describe("categories", () => {
  it("links by the $by_category rule: the text before the first dash; none without one, at the start, or for system streams", async () => {
    const category = uniqueCategory("rule")
    const streams = [`${category}-1`, `${category}-a-b`, category, `-${category}`]
    for (const stream of streams) await client.appendToStream(stream, credited(1))
    await eventually(async () => {
      const links = await collect(client.readStream(`$ce-${category}`, { resolveLinkTos: true }))
      expect(links.map((e) => e.event!.streamId)).toEqual([`${category}-1`, `${category}-a-b`])
    })
    // a stream without a dash is in no category: its own name is not one
    expect(await collect(client.readStream(`$ce-${category}`, { fromRevision: 2n })).catch((e) => e)).toEqual([])
  })

  it("reads and subscribes to a category through the $idx-ce- secondary index (KurrentDB 25.1+): events, not links, by log position", async (ctx) => {
    if (!atLeast(await serverVersion(client), 25, 1)) return ctx.skip()
    const category = uniqueCategory("idx")
    await client.appendToStream(`${category}-1`, [credited(1), credited(2)])
    await client.appendToStream(`other${category}-1`, credited(9))
    await client.appendToStream(`${category}-2`, credited(3))
    // the 6.x client reads $all without filters; a filtered subscription reads the index (KurrentDB clients read it too)
    const filter = streamNameFilter({ prefixes: [`$idx-ce-${category}`] })
    const subscription = client.subscribeToAll({ fromPosition: START, filter })
    const seen: Array<ResolvedEvent> = []
    const done = (async () => {
      for await (const e of subscription) {
        seen.push(e)
        if (seen.length === 4) break
      }
    })()
    await client.appendToStream(`${category}-3`, credited(4))
    await done
    expect(seen.map((e) => [e.event!.streamId, e.event!.revision, (e.event!.data as { amount: number }).amount])).toEqual([
      [`${category}-1`, 0n, 1],
      [`${category}-1`, 1n, 2],
      [`${category}-2`, 0n, 3],
      [`${category}-3`, 0n, 4]
    ])
    expect(seen.every((e) => e.link === undefined && e.event!.type === "Credited")).toBe(true)
    const positions = seen.map((e) => e.event!.position!.commit)
    expect(positions.every((p, i) => i === 0 || p > positions[i - 1]!)).toBe(true)
    if (clientKind === "kurrentdb") {
      // the KurrentDB client also reads $all with a filter: the index reads like a stream, forwards and backwards
      const read = (options: object) =>
        collect(client.readAll({ fromPosition: START, maxCount: 100, ...options, filter } as Parameters<typeof client.readAll>[0]))
      expect((await read({})).map((e) => e.event!.position!.commit)).toEqual(positions)
      expect((await read({ direction: BACKWARDS, fromPosition: END, maxCount: 2 })).map((e) => e.event!.position!.commit)).toEqual(
        positions.slice(2).reverse()
      )
    }
  })
})

describe.skipIf(external !== undefined)("embedded server only", () => {
  it("appends over BatchAppend when it advertises it, and over Append when it does not", async () => {
    for (const batchAppend of [true, false]) {
      const running = await startRaw({ batchAppend })
      const c = EventStoreDBClient.connectionString(`esdb://127.0.0.1:${running.port}?tls=false`)
      try {
        await c.appendToStream("order-1", [credited(1), credited(2)])
        await c.appendToStream("order-1", credited(3), expecting(1n))
        expect(running.store.stats).toMatchObject(batchAppend ? { batchAppends: 2, appends: 0 } : { batchAppends: 0, appends: 2 })
      } finally {
        await c.dispose()
        await running.close()
      }
    }
  })

  it("takes a configured maximum append size", async () => {
    const server = await start({ maxAppendSize: 100 })
    const c = EventStoreDBClient.connectionString(server.connectionString)
    try {
      const e = await c.appendToStream("blob-1", binaryEvent({ type: "B", data: new Uint8Array(101) })).catch((e) => e)
      expect(e).toBeInstanceOf(MaxAppendSizeExceededError)
      expect(e.maxAppendSize).toBe(100)
    } finally {
      await c.dispose()
      await server.close()
    }
  })

  it("ends catch-up and persistent subscriptions with UNAVAILABLE when it stops, as a real server's clients see it", async () => {
    const server = await start({})
    const c = EventStoreDBClient.connectionString(server.connectionString)
    try {
      await c.appendToStream("order-1", credited(1))
      await c.createPersistentSubscriptionToStream("$ce-order", "g", settings())
      const catchUp = c.subscribeToStream("order-1", { fromRevision: START })
      const persistent = c.subscribeToPersistentSubscriptionToStream("$ce-order", "g")
      // read without stopping the subscriptions (leaving a for-await loop would unsubscribe)
      const first = (s: { once(event: "data", f: () => void): unknown }) => new Promise<void>((resolve) => s.once("data", () => resolve()))
      const failed = (s: { once(event: "error", f: (e: Error) => void): unknown }) =>
        new Promise<Error>((resolve) => s.once("error", resolve))
      const catchUpError = failed(catchUp)
      const persistentError = failed(persistent)
      await Promise.all([first(catchUp), first(persistent)])
      await server.close()
      const errors = await Promise.all([catchUpError, persistentError])
      for (const e of errors) {
        expect(e).toBeInstanceOf(UnavailableError)
        expect((e as UnavailableError).code).toBe(14)
      }
    } finally {
      await c.dispose()
      await server.close()
    }
  })

  it("cuts a torn last journal line (a kill mid-write): what came before survives, and so does what comes after", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "esdb-torn-"))
    try {
      const life = async (f: (c: EventStoreDBClient) => Promise<void>) => {
        const server = await start({ dataDir })
        const c = EventStoreDBClient.connectionString(server.connectionString)
        try {
          await f(c)
        } finally {
          await c.dispose()
          await server.close()
        }
      }
      await life((c) => c.appendToStream("torn-1", [credited(1), credited(2)]).then(() => {}))
      // half of a line, as a process killed during its write leaves it
      fs.appendFileSync(path.join(dataDir, "journal.jsonl"), '{"k":"a","r":[{"s":"torn-1","i":"')
      await life(async (c) => {
        expect((await collect(c.readStream("torn-1"))).map((e) => e.event!.revision)).toEqual([0n, 1n])
        await c.appendToStream("torn-1", credited(3), expecting(1n))
      })
      await life(async (c) => {
        expect((await collect(c.readStream("torn-1"))).map((e) => (e.event!.data as { amount: number }).amount)).toEqual([1, 2, 3])
      })
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  })

  it("keeps events, groups and checkpoints in a data directory across restarts", async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "esdb-"))
    try {
      const first = await start({ dataDir })
      const c1 = EventStoreDBClient.connectionString(`esdb://127.0.0.1:${first.port}?tls=false`)
      await c1.appendToStream("order-1", [credited(1), credited(2)])
      await c1.createPersistentSubscriptionToStream(
        "$ce-order",
        "g",
        settings({ checkPointLowerBound: 1, checkPointAfter: 0 })
      )
      const sub = c1.subscribeToPersistentSubscriptionToStream("$ce-order", "g", { bufferSize: 1 })
      for await (const e of sub) {
        await sub.ack(e)
        break
      }
      // acks are asynchronous: wait until the server has checkpointed it
      await eventually(async () => {
        const info = await c1.getPersistentSubscriptionToStreamInfo("$ce-order", "g")
        expect(info.stats.lastCheckpointedEventRevision).toBe(0n)
      })
      await sub.unsubscribe()
      await c1.dispose()
      await first.close()

      const second = await start({ dataDir })
      const c2 = EventStoreDBClient.connectionString(`esdb://127.0.0.1:${second.port}?tls=false`)
      try {
        const events = await collect(c2.readStream("$ce-order", { resolveLinkTos: true }))
        expect(events.map((e) => (e.event!.data as { amount: number }).amount)).toEqual([1, 2])
        const again = c2.subscribeToPersistentSubscriptionToStream("$ce-order", "g")
        const [next] = await take(again, 1)
        expect((next!.event!.data as { amount: number }).amount).toBe(2)
        await again.ack(next!)
        await again.unsubscribe()
        const appended = await c2.appendToStream("order-1", credited(3), expecting(1n))
        expect(appended.nextExpectedRevision).toBe(2n)
      } finally {
        await c2.dispose()
        await second.close()
      }
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  })
})

function settings(changes: Parameters<typeof persistentSubscriptionToStreamSettingsFromDefaults>[0] = {}) {
  return persistentSubscriptionToStreamSettingsFromDefaults({ startFrom: START, resolveLinkTos: true, ...changes })
}

export type { PersistentSubscriptionToStreamResolvedEvent }
