/**
 * Settlement: what happens to a delivery once all its parts are done. Owns the
 * in-flight bookkeeping of one projection: the watermark (catch-up), the
 * unsettled set (persistent), the in-flight gate and the settled counters.
 *
 * Poison is dead-lettered (catch-up) or parked (persistent) before the delivery
 * counts as settled, so the watermark never passes an event that is neither
 * applied nor durably quarantined.
 */
import type { Clock } from "effect"
import { Effect, Metric } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { Delivery } from "../EventSource.js"
import { ack, nack } from "../EventSource.js"
import type { Context } from "./context.js"
import { Gate } from "./lanes.js"
import { fromDelivery, letterFor } from "./quarantine.js"
import type { StreamOrder } from "./streamOrder.js"
import type { Tracked } from "./tracked.js"
import { Watermark } from "./watermark.js"

const clean = (tracked: Tracked): boolean => tracked.poison === undefined

export class Settlement {
  /** Catch-up only: the contiguous prefix of settled deliveries. */
  readonly watermark: Watermark
  /** Persistent only: received and not settled, nacked for retry on drain. */
  readonly unsettled = new Set<Tracked>()
  readonly gate: Gate
  /** Deliveries settled so far. */
  settled = 0
  /** Clock millis of the last settlement. */
  lastSettledAt = 0
  /** The newest position taken in. */
  received: bigint | undefined
  /** Persistent mode: per-stream order and progress; it settles what completes. */
  order: StreamOrder | undefined
  /** Called when nothing is in flight any more (the committer commits then, not a tick later). */
  onIdle: (() => void) | undefined

  constructor(private readonly ctx: Context, start: bigint | undefined, private readonly clock: Clock.Clock) {
    this.watermark = new Watermark(start)
    this.gate = new Gate(ctx.options.bound)
  }

  /** Takes a delivery in: counted in flight until settled. */
  track(delivery: Delivery): Tracked {
    this.gate.enter()
    this.received = delivery.position
    const catchUp = this.ctx.options.mode === "catch-up"
    const tracked: Tracked = {
      delivery,
      ticket: catchUp ? this.watermark.track(delivery.position) : 0,
      remaining: 1,
      poison: undefined
    }
    if (!catchUp) this.unsettled.add(tracked)
    return tracked
  }

  /**
   * An event whose documents cannot be known (it does not decode, `key` fails), or
   * one read from its stream that the group cannot park: a letter of its own, keyed by position.
   */
  deadLetter(delivery: Delivery, reason: string) {
    const { durably, id, store } = this.ctx
    return durably(store.deadLetter(letterFor(id, undefined, fromDelivery(delivery), reason, new Date())), "dead-lettering")
  }

  /**
   * Settles deliveries whose parts are all done: poison first (dead letter or
   * park), then each is acked (persistent), then the watermark moves and the
   * gate lets more in.
   */
  settle(finished: ReadonlyArray<Tracked>): Effect.Effect<void, ReconcilerError> {
    if (finished.length === 0) return Effect.void
    const catchUp = this.ctx.options.mode === "catch-up"
    // The usual case, catch-up with nothing poisoned: plain bookkeeping, no effect to run.
    if (catchUp && this.order === undefined && finished.every(clean)) {
      this.release(finished)
      return Effect.void
    }
    const self = this
    return Effect.gen(function*() {
      let poisoned = 0
      for (const tracked of finished) {
        if (tracked.poison === undefined) continue
        poisoned++
        if (catchUp) yield* self.deadLetter(tracked.delivery, tracked.poison)
      }
      if (poisoned > 0) {
        self.ctx.totals.deadLettered += poisoned
        yield* Metric.incrementBy(self.ctx.metrics.deadLettered, poisoned)
      }
      if (self.order !== undefined) return yield* self.order.settle(finished)
      // Catch-up deliveries are not settled one by one: the checkpoint is their acknowledgement.
      if (!catchUp) {
        yield* Effect.forEach(
          finished,
          (tracked) =>
            tracked.delivery.settle(tracked.poison !== undefined ? nack("park", tracked.poison) : ack).pipe(
              // What the source could not take is redelivered later; the markers make that harmless.
              Effect.catchAll((error) => Effect.logWarning("settling a delivery failed", error.message))
            ),
          { discard: true }
        )
      }
      self.release(finished)
    })
  }

  /** Settled deliveries leave: the watermark moves (catch-up) and the gate lets more in. */
  private release(finished: ReadonlyArray<Tracked>): void {
    const catchUp = this.ctx.options.mode === "catch-up"
    for (const tracked of finished) {
      if (catchUp) this.watermark.complete(tracked.ticket)
      else this.unsettled.delete(tracked)
    }
    this.gate.leave(finished.length)
    if (this.gate.inFlight === 0) this.onIdle?.()
    this.settled += finished.length
    this.lastSettledAt = this.clock.unsafeCurrentTimeMillis()
  }

  /** Hands back what was received and not applied (persistent), for redelivery. */
  get nackUnsettled(): Effect.Effect<void> {
    return Effect.zipRight(this.order?.finish ?? Effect.void, Effect.suspend(() => Effect.forEach(
      [...this.unsettled],
      (tracked) => tracked.delivery.settle(nack("retry", "the reconciler stopped before applying it")).pipe(Effect.ignore),
      { concurrency: "unbounded", discard: true }
    )))
  }
}
