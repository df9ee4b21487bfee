/**
 * The tellers' process (forked by examples/tellers.ts): appends the bank's
 * events to EventStoreDB, as a real bank's write side would. It loads only the
 * client and the simulation (examples/bank.ts), so it is ready by the time the
 * servers are.
 *
 * How the tellers append: the plan is the simulation's events in order. A
 * window of the oldest not-yet-appended events is open at any time; within it,
 * each stream's next events are appended together in one `appendToStream`
 * (with the stream's true expected revision), many streams at once. An event
 * waits for what it depends on: its own stream's earlier events, and the first
 * event of the stream it refers to (the owner's registration for an account's
 * opening, the credited account's opening for a transfer). The window keeps
 * the appends close to the simulation's order of time; batching is what lets
 * the bank append at the server's pace rather than one round trip per event.
 */
import { EventStoreDBClient, jsonEvent, NO_STREAM } from "@eventstore/db-client"
import type { BankEvent } from "./openbank.js"
import { simulate } from "./bank.js"
import type { Plan, Reply, Request } from "./tellers.js"

/** Appends in flight at once (each one stream's batch). */
const CONCURRENCY = 32
/** Events in one append at most. */
const BATCH = 50
/**
 * Oldest not-yet-appended events considered at once. The client spends about
 * 0.4 ms of CPU per append whatever its size, so the fewer appends the better:
 * 10,000 gives 5.5 events per append at 20,000 events (1,000: 2.3; the whole
 * plan: 5.9, where the order rules above set the floor).
 */
const WINDOW = 10_000

interface Pending {
  readonly stream: string
  readonly event: BankEvent
  /** The streams whose first event must be appended before this one. */
  readonly after: ReadonlyArray<string>
}

const tellers = async (plan: Plan, send: (reply: Reply) => void) => {
  const client = EventStoreDBClient.connectionString(plan.connectionString)
  let positions: Array<bigint> = []
  const flush = () => {
    if (positions.length === 0) return
    send({ type: "appended", positions })
    positions = []
  }
  const timer = setInterval(flush, 50)
  try {
    const all: Array<Pending> = []
    for (const [stream, event] of simulate(plan.events, plan.seed)) {
      const next = plan.run === "" ? { stream, event } : prefix(plan.run, stream, event)
      all.push({ ...next, after: dependencies(next.event) })
    }
    await appendAll(all, (stream, events, revision) =>
      client.appendToStream(stream, events.map((e) => jsonEvent(e)), {
        expectedRevision: revision === undefined ? NO_STREAM : revision
      }).then((result) => {
        // One position per event for the demo's progress: the batch's (its last event's)
        // prepare position bounds each of its events, so a checkpoint at or past it covers them all.
        const position = result.position?.prepare ?? result.nextExpectedRevision
        for (let i = 0; i < events.length; i++) positions.push(position)
      }))
  } finally {
    clearInterval(timer)
    flush()
    await client.dispose()
  }
}

/**
 * Appends every event of `all` through `append` (one stream's consecutive
 * events, with the revision its last appended event has, `undefined` for a new
 * stream), keeping the order rules above.
 */
const appendAll = (
  all: ReadonlyArray<Pending>,
  append: (stream: string, events: ReadonlyArray<BankEvent>, revision: bigint | undefined) => Promise<void>
): Promise<void> =>
  new Promise((resolve, reject) => {
    /** Each stream's events not yet handed to an append, oldest first (indices into `all`). */
    const queued = new Map<string, Array<number>>()
    /** Streams with an append in flight. */
    const busy = new Set<string>()
    /** Streams whose first event is acknowledged, and each stream's revision. */
    const revisions = new Map<string, bigint>()
    /** Events acknowledged, by index; `oldest`: the first one not acknowledged. */
    const acknowledged = new Uint8Array(all.length)
    let oldest = 0
    /** Events entered into the window so far. */
    let entered = 0
    let inFlight = 0
    let failed = false

    const ready = (stream: string): Array<number> => {
      const queue = queued.get(stream)
      if (queue === undefined || busy.has(stream)) return []
      const batch: Array<number> = []
      for (const index of queue) {
        if (batch.length === BATCH || !all[index]!.after.every((s) => revisions.has(s))) break
        batch.push(index)
      }
      return batch
    }

    const pump = () => {
      if (failed) return
      while (entered < all.length && entered < oldest + WINDOW) {
        const { stream } = all[entered]!
        const queue = queued.get(stream)
        if (queue === undefined) queued.set(stream, [entered])
        else queue.push(entered)
        entered++
      }
      for (const stream of queued.keys()) {
        if (inFlight >= CONCURRENCY) break
        const batch = ready(stream)
        if (batch.length === 0) continue
        const queue = queued.get(stream)!
        queue.splice(0, batch.length)
        if (queue.length === 0) queued.delete(stream)
        busy.add(stream)
        inFlight++
        append(stream, batch.map((i) => all[i]!.event), revisions.get(stream)).then(
          () => {
            inFlight--
            busy.delete(stream)
            revisions.set(stream, (revisions.get(stream) ?? -1n) + BigInt(batch.length))
            for (const i of batch) acknowledged[i] = 1
            while (oldest < all.length && acknowledged[oldest] === 1) oldest++
            if (oldest === all.length) resolve()
            else pump()
          },
          (error) => {
            failed = true
            reject(error)
          }
        )
      }
      if (inFlight === 0 && oldest < all.length) reject(new Error("the tellers are stuck: no event can be appended"))
    }
    if (all.length === 0) resolve()
    else pump()
  })

/** The streams whose first event an event depends on (besides its own stream's earlier events). */
const dependencies = (event: BankEvent): ReadonlyArray<string> =>
  event.type === "BankAccountCreated"
    ? [`person-${event.data.ownerId}`]
    : event.type === "BankAccountTransactionRecorded" && event.data.transaction.kind === "transfer"
    ? [`account-${event.data.transaction.to}`]
    : []

/** The same event with this run's ids (a real EventStoreDB keeps earlier runs' streams). */
const prefix = (run: string, stream: string, event: BankEvent): { stream: string; event: BankEvent } => {
  const id = (s: string) => `${run}${s}`
  const dash = stream.indexOf("-")
  const renamed = `${stream.slice(0, dash + 1)}${id(stream.slice(dash + 1))}`
  switch (event.type) {
    case "PersonRegistered":
      return { stream: renamed, event: { ...event, data: { ...event.data, personId: id(event.data.personId) } } }
    case "BankAccountCreated":
      return {
        stream: renamed,
        event: { ...event, data: { ...event.data, accountId: id(event.data.accountId), ownerId: id(event.data.ownerId) } }
      }
    case "BankAccountTransactionRecorded": {
      const t = event.data.transaction
      return {
        stream: renamed,
        event: {
          ...event,
          data: {
            accountId: id(event.data.accountId),
            ownerId: id(event.data.ownerId),
            transaction: t.kind === "transfer" ? { ...t, to: id(t.to), toOwnerId: id(t.toOwnerId) } : t
          }
        }
      }
    }
  }
}

if (process.send !== undefined) {
  const send = (reply: Reply) => void process.send!(reply)
  // Ctrl-C reaches the whole process group: the parent decides when the tellers stop.
  process.on("SIGINT", () => {})
  process.on("disconnect", () => process.exit(0))
  process.on("message", (request: Request) => {
    if (request.type !== "append") return
    tellers(request.plan, send).then(
      () => send({ type: "done" }),
      (error) => send({ type: "failed", message: error instanceof Error ? error.message : String(error) })
    )
  })
  send({ type: "loaded" })
}
