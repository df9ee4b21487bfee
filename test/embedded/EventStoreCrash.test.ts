/**
 * Durability of the embedded EventStoreDB with a data directory, as a real
 * server keeps it: subscribers (catch-up and persistent) see only what is in
 * the journal. The standalone server (`reconciler embedded --data-dir`) is
 * SIGKILLed, twice, while five writers append and two subscribers read;
 * restarted on the same directory, it must still hold every event a subscriber
 * saw, at the same position, and every acknowledged append, and must not hand
 * a position out twice. (Against a journal written behind the deliveries, as
 * before, one crash in about three lost events a subscriber had seen.)
 */
import {
  EventStoreDBClient,
  jsonEvent,
  persistentSubscriptionToStreamSettingsFromDefaults,
  START,
  streamNameFilter
} from "@eventstore/db-client"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { spawn } from "../support/child.js"

const WRITERS = 5
/** Kill once the catch-up subscriber has seen this many events. */
const KILL_AFTER = 200
/** Crashes: each life but the last ends with a SIGKILL under load. */
const LIVES = 3
/** Large enough events that journal writes take time under load (a late journal would show). */
const PAD = "x".repeat(32_000)

interface Seen {
  readonly streamId: string
  readonly revision: bigint
  readonly id: string
}

/** Starts `reconciler embedded` on `dataDir` and returns its EventStoreDB connection string. */
const startServer = (dataDir: string) =>
  Effect.gen(function*() {
    const child = yield* spawn("src/bin/reconciler.ts", [
      "embedded",
      "--eventstore-port",
      "0",
      "--mongo-port",
      "0",
      "--data-dir",
      dataDir
    ])
    // generous: a loaded machine takes many seconds to start a tsx process
    const [, connectionString] = yield* child.line(/embedded EventStoreDB listening on (esdb:\/\/\S+)/, "120 seconds")
    return { child, connectionString: connectionString! }
  })

/** Every crash-test event in the store, by position and by id. */
const readBack = (client: EventStoreDBClient) =>
  Effect.promise(async () => {
    const byPosition = new Map<bigint, Seen>()
    const byId = new Map<string, Seen>()
    for await (const e of client.readAll({ fromPosition: START, maxCount: 10_000_000 })) {
      const event = e.event!
      if (!event.streamId.startsWith("crash-")) continue
      const seen = { streamId: event.streamId, revision: event.revision, id: event.id }
      byPosition.set(event.position!.commit, seen)
      byId.set(event.id, seen)
    }
    return { byPosition, byId }
  })

const max = (values: Iterable<bigint>, floor: bigint) => {
  let m = floor
  for (const v of values) if (v > m) m = v
  return m
}

describe("embedded EventStoreDB killed mid-append", () => {
  it.scopedLive("keeps what subscribers saw and every acknowledged append; reuses no position", () =>
    Effect.gen(function*() {
      const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "esdb-crash-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dataDir, { recursive: true, force: true })))
      const seenByPosition = new Map<bigint, Seen>()
      const seenByGroup = new Map<string, Seen>()
      const acknowledged: Array<Seen> = []

      for (let life = 0; life < LIVES; life++) {
        const server = yield* startServer(dataDir)
        const client = EventStoreDBClient.connectionString(server.connectionString)
        yield* Effect.addFinalizer(() => Effect.promise(() => client.dispose()))

        // ---- after a crash: nothing a subscriber saw is gone, nor moved; every acknowledged append is there
        const stored = yield* readBack(client)
        for (const [position, seen] of seenByPosition) expect(stored.byPosition.get(position)).toEqual(seen)
        for (const seen of seenByGroup.values()) expect(stored.byId.get(seen.id)).toEqual(seen)
        for (const a of acknowledged) expect(stored.byId.get(a.id)).toEqual(a)
        const highest = max([...seenByPosition.keys(), ...stored.byPosition.keys()], 0n)

        if (life === LIVES - 1) {
          // new appends take new positions and continue the stream's revisions
          const again = yield* Effect.promise(() => client.appendToStream("crash-0-0", jsonEvent({ type: "Tick", data: {} })))
          expect(again.position!.commit > highest).toBe(true)
          const revisions = [...stored.byId.values()].filter((s) => s.streamId === "crash-0-0").map((s) => s.revision)
          expect(again.nextExpectedRevision).toBe(max(revisions, -1n) + 1n)
          break
        }

        // ---- load: writers, a catch-up subscriber and a consumer group; SIGKILL once enough new events were seen
        if (life === 0) {
          yield* Effect.promise(() =>
            client.createPersistentSubscriptionToStream(
              "$ce-crash",
              "g",
              persistentSubscriptionToStreamSettingsFromDefaults({ startFrom: START, resolveLinkTos: true })
            )
          )
        }
        let killed = false
        let fresh = 0
        let reachedKillPoint: () => void = () => {}
        const killPoint = new Promise<void>((resolve) => (reachedKillPoint = resolve))
        const catchUp = client.subscribeToAll({ fromPosition: START, filter: streamNameFilter({ prefixes: ["crash-"] }) })
        catchUp.on("data", (e) => {
          const event = e.event!
          const position = event.position!.commit
          seenByPosition.set(position, { streamId: event.streamId, revision: event.revision, id: event.id })
          if (position > highest) fresh++
          if (fresh >= KILL_AFTER && !killed) {
            // kill right here, while the server is busy: a journal lagging behind deliveries would lose what was just seen
            killed = true
            server.child.process.kill("SIGKILL")
            reachedKillPoint()
          }
        })
        catchUp.on("error", () => {})
        const group = client.subscribeToPersistentSubscriptionToStream("$ce-crash", "g")
        group.on("data", (e) => {
          const event = e.event!
          seenByGroup.set(event.id, { streamId: event.streamId, revision: event.revision, id: event.id })
          group.ack(e).catch(() => {})
        })
        group.on("error", () => {})

        const writer = async (w: number) => {
          for (let n = 0; !killed; n++) {
            const stream = `crash-${w}-${n % 7}`
            const events = Array.from({ length: 1 + (n % 4) }, (_, i) => jsonEvent({ type: "Tick", data: { life, w, n, i, pad: PAD } }))
            try {
              const result = await client.appendToStream(stream, events)
              const last = result.nextExpectedRevision
              events.forEach((e, i) => acknowledged.push({ streamId: stream, revision: last - BigInt(events.length - 1 - i), id: e.id }))
            } catch {
              return // the server is gone
            }
          }
        }
        const writers = Array.from({ length: WRITERS }, (_, w) => writer(w))
        yield* Effect.promise(() => killPoint)
        yield* server.child.exit()
        yield* Effect.promise(() => Promise.all(writers))
        catchUp.unsubscribe().catch(() => {})
        group.unsubscribe().catch(() => {})
      }
    }), { timeout: 400_000 })
})
