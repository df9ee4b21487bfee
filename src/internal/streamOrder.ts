/**
 * Persistent mode: each source stream applies in order, whatever the consumer
 * group's strategy and however many consumers compete.
 *
 * - A delivery at or below its stream's recorded progress is a duplicate:
 *   acknowledged at once.
 * - The next revision is dispatched to the lanes (and, after it, any held
 *   successors).
 * - One that overtook its stream is held (it stays in flight, under the bound)
 *   after the progress is re-read from the store (another consumer may have
 *   applied its predecessors). Held streams re-read their progress every
 *   `holdCheck`; after `fillAfter` the engine reads the missing events from the
 *   stream and applies them itself, and skips — recording the decision — those
 *   that are gone (deleted, truncated by `$maxCount`/`$maxAge`). No wait is
 *   forever, and none depends on the group redelivering.
 * - A revision recorded as parked (by an earlier run, or another consumer) is
 *   settled for good and the group does not hand it over again: the stream moves
 *   past it at once, its successors do not wait for it, and a copy (a replay) is
 *   parked again rather than applied out of order.
 * - A completed delivery is acknowledged only once its stream's progress,
 *   recorded after the documents it covers, covers it; poison is parked (or,
 *   read from the stream, dead-lettered) before the progress passes it. So what
 *   was acknowledged can never be redelivered into a gap, and a crash can only
 *   make the progress lag (the documents' markers then recognise redeliveries).
 */
import { Clock, Effect, Metric, Option } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { Delivery, EventSource } from "../EventSource.js"
import { ack, nack } from "../EventSource.js"
import type { Context } from "./context.js"
import { metrics } from "./metrics.js"
import type { Settlement } from "./settlement.js"
import type { Released } from "./streamProgress.js"
import { StreamProgress } from "./streamProgress.js"
import type { Tracked } from "./tracked.js"

/** Most events read from a stream at once to fill a gap. */
const FILL_COUNT = 256n

const replayReason = (delivery: Delivery) =>
  `replayed after ${delivery.streamId} moved past it (parked before): applying it now could break ` +
  "the stream's order (rebuild the projection to include it)"

/** A record of a system stream (`$…`): a link handed over as itself because its event is gone. */
const isSystem = (delivery: Delivery) => delivery.streamId.startsWith("$")

export class StreamOrder {
  readonly progress = new StreamProgress<Tracked>()
  /** Deliveries read from their stream by the engine: nothing to settle with the group. */
  private readonly fetched = new WeakSet<Tracked>()
  /**
   * Deliveries outside any stream's order: a link whose event is gone comes as
   * the link itself (a system stream's record, skipped by decision).
   */
  private readonly unordered = new WeakSet<Tracked>()
  private readonly held: Metric.Metric.Gauge<number>
  private readonly gaps: Metric.Metric.Counter<number>
  private readonly reads: Metric.Metric.Counter<number>

  constructor(
    private readonly ctx: Context,
    private readonly settlement: Settlement,
    /** Routes a delivery to its lanes; returns it when it is done at once. */
    private readonly dispatch: (tracked: Tracked) => Tracked | undefined,
    private readonly readStream: EventSource["Type"]["readStream"]
  ) {
    const tag = <A extends Metric.Metric<any, any, any>>(metric: A): A =>
      Metric.tagged(metric, "projection", ctx.runnable.name) as A
    this.held = tag(metrics.held)
    this.gaps = tag(metrics.gaps)
    this.reads = tag(metrics.streamReads)
  }

  /** The recorded progress of a stream as known here, for the fold. */
  readonly durable = (stream: string): bigint | undefined => this.progress.durable(stream)

  /** Counts document loads: a stream's progress read at or after a load is known to whoever folds onto that document. */
  private epoch = 0
  /** Per stream, the load count when its progress was last read. */
  private readonly learnedAt = new Map<string, number>()

  /** Documents were loaded: returns the load's mark, to compare with {@link refreshSince}. */
  loaded(): number {
    return ++this.epoch
  }

  /**
   * Re-reads the progress of the parts' streams not read since their documents
   * were loaded: a document keeps a marker only for streams whose progress had
   * not reached it, so the progress must be at least as recent as the document.
   */
  refreshSince(
    parts: ReadonlyArray<{ readonly event: { readonly streamId: string }; readonly key: string }>,
    loadedAt: (key: string) => number
  ): Effect.Effect<void, ReconcilerError> {
    const stale = new Set<string>()
    for (const part of parts) {
      if ((this.learnedAt.get(part.event.streamId) ?? -1) < loadedAt(part.key)) stale.add(part.event.streamId)
    }
    return this.refresh([...stale])
  }

  /** Re-reads streams' progress from the store (before folding, and for held streams). */
  readonly refresh = (streams: ReadonlyArray<string>): Effect.Effect<void, ReconcilerError> =>
    streams.length === 0 ? Effect.void : Effect.gen(this, function*() {
      const at = this.epoch
      const stored = yield* this.ctx.durably(this.ctx.store.loadProgress(this.ctx.id, streams), "loading stream progress")
      // Another consumer moved a stream on: it may have quarantined documents meanwhile. Their letters
      // are read before anything this progress releases is dispatched (the letter is durable before
      // the progress that passes its event), so no consumer applies a blocked document's later events.
      const quarantine = this.ctx.quarantine
      if (quarantine !== undefined) {
        let moved = false
        for (const [stream, record] of stored) {
          const known = this.progress.durable(stream)
          if (record.revision > (known ?? -1n)) moved = true
        }
        if (moved) {
          const letters = yield* this.ctx.durably(this.ctx.store.deadLetters(this.ctx.id), "reading the dead letters")
          for (const letter of letters) if (letter.document !== undefined) quarantine.documents.add(letter.document)
        }
      }
      if (this.learnedAt.size > 100_000) this.learnedAt.clear()
      for (const stream of streams) {
        if ((this.learnedAt.get(stream) ?? -1) < at) this.learnedAt.set(stream, at)
        const record = stored.get(stream)
        yield* this.apply(this.progress.learn(stream, record?.revision, record?.parked))
      }
    })

  /** Offers deliveries in order: dispatched, acknowledged as duplicates, or held. */
  offer(deliveries: Iterable<Delivery>, fetched = false): Effect.Effect<void, ReconcilerError> {
    return Effect.gen(this, function*() {
      const p = this.progress
      const unknown = new Set<string>()
      for (const delivery of deliveries) {
        if (!p.knows(delivery.streamId) && !isSystem(delivery)) unknown.add(delivery.streamId)
      }
      yield* this.refresh([...unknown])
      const done: Array<Tracked> = []
      const duplicates: Array<Tracked> = []
      const held = new Set<string>()
      const replayed: Array<Tracked> = []
      const passed: Array<Tracked> = []
      const candidates: Array<Tracked> = []
      const now = yield* Clock.currentTimeMillis
      for (const delivery of deliveries) {
        const tracked = this.settlement.track(delivery)
        if (fetched) this.fetched.add(tracked)
        if (isSystem(delivery)) {
          this.unordered.add(tracked)
          const finished = this.dispatch(tracked)
          if (finished !== undefined) done.push(finished)
          continue
        }
        if (!p.knows(delivery.streamId)) p.learn(delivery.streamId, undefined)
        const outcome = p.offer(delivery.streamId, delivery.revision, tracked, now)
        if (outcome === "duplicate") candidates.push(tracked)
        // Read from the stream to fill a gap: already parked, there is nothing to settle with the group.
        else if (outcome === "replayed" && fetched) passed.push(tracked)
        else if (outcome === "replayed") replayed.push(tracked)
        else if (outcome === "held") held.add(delivery.streamId)
        else {
          const finished = this.dispatch(tracked)
          if (finished !== undefined) done.push(finished)
          this.collect(p.released(delivery.streamId), done, duplicates)
        }
      }
      // Before a duplicate is acknowledged, its stream's progress is read again: it may be a
      // replay of an event another consumer parked (acknowledging it would drop it).
      yield* this.refresh([...new Set(candidates.map((t) => t.delivery.streamId))])
      yield* this.acknowledgeDuplicates([...duplicates, ...candidates])
      yield* this.parkReplayed(replayed)
      yield* this.acknowledge(passed)
      yield* this.settlement.settle(done)
      // Another consumer may have applied the missing events: look before waiting.
      yield* this.refresh([...held])
      yield* Metric.set(this.held, p.held)
    })
  }

  /** Completed deliveries: poison set aside, progress recorded, then acknowledged. */
  settle(finished: ReadonlyArray<Tracked>): Effect.Effect<void, ReconcilerError> {
    return Effect.gen(this, function*() {
      const quarantine = this.ctx.quarantine
      // Deliveries whose event quarantined a document (its letter is durable): parked in the group,
      // where `dead-letters retry`/`skip` replay it from; the stream's progress records it parked.
      const blocking = new Set<Tracked>()
      if (quarantine !== undefined) {
        for (const tracked of finished) {
          if (tracked.poison !== undefined || this.unordered.has(tracked)) continue
          const reason = quarantine.takeBlocking(tracked.delivery.streamId, tracked.delivery.revision)
          if (reason === undefined) continue
          blocking.add(tracked)
          if (this.fetched.has(tracked)) continue
          yield* tracked.delivery.settle(nack("park", reason)).pipe(
            Effect.catchAll((error) => Effect.logWarning("parking a delivery failed", error.message))
          )
        }
      }
      for (const tracked of finished) {
        if (blocking.has(tracked)) continue
        // A copy of a parked event the fold found covered by the progress: it was never applied, so
        // it is parked again rather than acknowledged (which, for a replay, would drop it).
        if (
          tracked.poison === undefined && !this.fetched.has(tracked) && !this.unordered.has(tracked) &&
          this.progress.isParked(tracked.delivery.streamId, tracked.delivery.revision)
        ) tracked.poison = replayReason(tracked.delivery)
        if (tracked.poison === undefined) continue
        if (this.fetched.has(tracked)) yield* this.settlement.deadLetter(tracked.delivery, tracked.poison)
        else {
          yield* tracked.delivery.settle(nack("park", tracked.poison)).pipe(
            Effect.catchAll((error) => Effect.logWarning("parking a delivery failed", error.message))
          )
        }
      }
      const streams = new Set<string>()
      const unordered: Array<Tracked> = []
      for (const tracked of finished) {
        if (this.unordered.has(tracked)) {
          unordered.push(tracked)
          continue
        }
        const parked = tracked.poison !== undefined || blocking.has(tracked)
        this.progress.complete(tracked.delivery.streamId, tracked.delivery.revision, tracked, parked)
        streams.add(tracked.delivery.streamId)
      }
      // Copies of deliveries the progress already covered go at once, and what no stream orders.
      yield* this.acknowledge([...unordered, ...[...streams].flatMap((stream) => this.progress.settleableOf(stream))])
      yield* this.commit
    })
  }

  /** Records what the streams owe (gaps first), then acknowledges what that covers. */
  readonly commit: Effect.Effect<void, ReconcilerError> = Effect.suspend(() => {
    const due = this.progress.due()
    if (due.length === 0) return Effect.void
    const { durably, id, store } = this.ctx
    const at = new Date()
    return durably(
      store.commitProgress(
        id,
        due.map(({ parked, revision, stream }) => ({ stream, revision, parked })),
        due.flatMap(({ gaps, stream }) => gaps.map((gap) => ({ projection: id, stream, ...gap, at })))
      ),
      "committing stream progress"
    ).pipe(
      Effect.zipRight(Effect.suspend(() => this.acknowledge(due.flatMap((d) => this.progress.committed(d)))))
    )
  })

  /** Re-reads held streams' progress every `holdCheck`; fills what waited `fillAfter`. */
  readonly loop: Effect.Effect<never, ReconcilerError> = Effect.suspend(() =>
    Effect.gen(this, function*() {
      const p = this.progress
      if (p.held === 0) {
        p.forget()
        return
      }
      yield* this.refresh(p.waiting().map((w) => w.stream))
      const now = yield* Clock.currentTimeMillis
      for (const w of p.waiting()) {
        if (now - w.since >= this.ctx.options.fillAfter) yield* this.fill(w.stream, w.expected, w.before)
      }
      yield* Metric.set(this.held, p.held)
    }).pipe(Effect.zipRight(Effect.sleep(this.ctx.options.holdCheck)), Effect.forever)
  )

  /** On drain: records what completed, and lets go of what is held (nacked with the rest). */
  readonly finish: Effect.Effect<void> = Effect.suspend(() =>
    this.commit.pipe(
      Effect.catchAll((error) => Effect.logError("final stream progress commit failed", error)),
      Effect.zipRight(Effect.sync(() => this.progress.takeHeld())),
      Effect.zipRight(Metric.set(this.held, 0))
    )
  )

  /**
   * Reads revisions `expected`…`before - 1` of a stream and applies them; skips,
   * recorded, the ones that are gone. Without a source that reads streams, the
   * held deliveries go back to the group for redelivery.
   */
  private fill(stream: string, expected: bigint, before: bigint): Effect.Effect<void, ReconcilerError> {
    return Effect.gen(this, function*() {
      const read = this.readStream
      if (read === undefined) {
        const back = this.progress.takeHeld(stream)
        yield* Effect.forEach(
          back,
          (tracked) => tracked.delivery.settle(nack("retry", `held: waiting for revision ${expected} of ${stream}`)).pipe(Effect.ignore),
          { discard: true }
        )
        this.release(back)
        return
      }
      const count = before - expected < FILL_COUNT ? before - expected : FILL_COUNT
      const found = yield* read(stream, expected, Number(count)).pipe(
        Effect.tapError((error) => Effect.logWarning(`reading the missing events of ${stream} failed`, error.message)),
        Effect.option
      )
      if (Option.isNone(found)) return
      const events = found.value.filter((d) => d.revision >= expected && d.revision < before)
      const first = events[0]?.revision ?? before
      if (first > expected) {
        const reason = `revisions ${expected}…${first - 1n} of ${stream} are gone (deleted or truncated): skipped`
        yield* Effect.logWarning(`${this.ctx.runnable.name}: ${reason}`)
        yield* Metric.increment(this.gaps)
        yield* this.apply(this.progress.skip(stream, { from: expected, to: first - 1n, reason }))
        yield* this.commit
      }
      if (events.length > 0) {
        yield* Metric.incrementBy(this.reads, events.length)
        yield* this.offer(events, true)
      }
    })
  }

  /**
   * A parked event replayed after its stream's progress passed it. One whose
   * letters all ended (retried or skipped, see `dead-letters`) is done: it is
   * acknowledged as a duplicate, never applied again. Any other is parked
   * again, saying why: applying it now would break the stream's order.
   */
  private parkReplayed(all: ReadonlyArray<Tracked>): Effect.Effect<void, ReconcilerError> {
    if (all.length === 0) return Effect.void
    return Effect.flatMap(this.ended(all), (ended) => {
      const items = all.filter((tracked) => !ended.has(tracked))
      const done = all.filter((tracked) => ended.has(tracked))
      this.ctx.totals.duplicates += done.length
      const acknowledged = done.length === 0
        ? Effect.void
        : Metric.incrementBy(this.ctx.metrics.duplicates, done.length).pipe(Effect.zipRight(this.acknowledge(done)))
      return Effect.zipRight(acknowledged, this.parkAgain(items))
    })
  }

  /** The replayed deliveries whose event has a resolved letter and no open one (read from the store). */
  private ended(items: ReadonlyArray<Tracked>): Effect.Effect<ReadonlySet<Tracked>, ReconcilerError> {
    const { durably, id, store } = this.ctx
    return Effect.gen(function*() {
      const at = (streamId: string, revision: bigint) => `${revision}@${streamId}`
      const open = new Set((yield* durably(store.deadLetters(id), "reading the dead letters")).map((l) => at(l.streamId, l.revision)))
      const resolved = new Set(
        (yield* durably(store.resolutions(id), "reading the resolved letters")).map((r) => at(r.letter.streamId, r.letter.revision))
      )
      return new Set(items.filter((t) => {
        const key = at(t.delivery.streamId, t.delivery.revision)
        return resolved.has(key) && !open.has(key)
      }))
    })
  }

  /** Parks replayed deliveries again, saying why. */
  private parkAgain(items: ReadonlyArray<Tracked>): Effect.Effect<void> {
    if (items.length === 0) return Effect.void
    this.ctx.totals.deadLettered += items.length
    return Effect.forEach(
      items,
      (tracked) =>
        tracked.delivery.settle(nack("park", replayReason(tracked.delivery))).pipe(Effect.catchAll((error) => Effect.logWarning("parking a delivery failed", error.message))),
      { discard: true }
    ).pipe(
      Effect.zipRight(Metric.incrementBy(this.ctx.metrics.deadLettered, items.length)),
      Effect.zipRight(Effect.sync(() => this.release(items)))
    )
  }

  private collect(released: Released<Tracked>, done: Array<Tracked>, duplicates: Array<Tracked>): void {
    duplicates.push(...released.duplicates)
    for (const tracked of released.dispatch) {
      const finished = this.dispatch(tracked)
      if (finished !== undefined) done.push(finished)
    }
  }

  /** Dispatches released deliveries and acknowledges released duplicates. */
  private apply(released: Released<Tracked>): Effect.Effect<void, ReconcilerError> {
    if (released.dispatch.length === 0 && released.duplicates.length === 0) return Effect.void
    const done: Array<Tracked> = []
    const duplicates: Array<Tracked> = []
    this.collect(released, done, duplicates)
    return this.acknowledgeDuplicates(duplicates).pipe(Effect.zipRight(this.settlement.settle(done)))
  }

  /** Acknowledges duplicates; those of parked events (replays, or copies of them) are parked again instead. */
  private acknowledgeDuplicates(items: ReadonlyArray<Tracked>): Effect.Effect<void, ReconcilerError> {
    if (items.length === 0) return Effect.void
    const parked: Array<Tracked> = []
    const applied: Array<Tracked> = []
    for (const tracked of items) {
      if (this.progress.isParked(tracked.delivery.streamId, tracked.delivery.revision) && !this.fetched.has(tracked)) parked.push(tracked)
      else applied.push(tracked)
    }
    this.ctx.totals.duplicates += applied.length
    return this.parkReplayed(parked).pipe(
      Effect.zipRight(applied.length === 0 ? Effect.void : Metric.incrementBy(this.ctx.metrics.duplicates, applied.length)),
      Effect.zipRight(this.acknowledge(applied))
    )
  }

  /** Settles for good: acknowledges (a no-op for what was parked) and frees the slots. */
  private acknowledge(items: ReadonlyArray<Tracked>): Effect.Effect<void> {
    if (items.length === 0) return Effect.void
    return Effect.forEach(
      items,
      (tracked) =>
        tracked.delivery.settle(ack).pipe(
          // What the source could not take is redelivered later, and recognised as applied.
          Effect.catchAll((error) => Effect.logWarning("settling a delivery failed", error.message))
        ),
      { discard: true }
    ).pipe(Effect.zipRight(Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.sync(() => {
        this.release(items)
        this.settlement.lastSettledAt = now
      })
    )))
  }

  private release(items: ReadonlyArray<Tracked>): void {
    for (const tracked of items) this.settlement.unsettled.delete(tracked)
    this.settlement.gate.leave(items.length)
    if (this.settlement.gate.inFlight === 0) this.settlement.onIdle?.()
    this.settlement.settled += items.length
  }
}
