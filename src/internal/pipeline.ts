/**
 * One projection's (or handler's) pipeline behind an intake: routing of each
 * delivery to the lanes of its documents, the lanes' batch loops, settlement and
 * the committer. A pipeline owns its state; the intake only hands it deliveries.
 *
 * Batching: a lane takes a full batch when one is queued. While the intake is
 * behind the source's head (a backlog, catch-up mode) a lane waits for its
 * batch to fill; the intake flushes the lanes when it reaches the head or when
 * it is held back by the in-flight bound or by the source itself (a pull that
 * yields nothing for a few ms: live, the head read is often ahead of what the
 * subscription delivered yet), and a lane never waits more than 1 s (a safety
 * net). Caught up
 * (or in persistent mode, with no head to compare with) a lane takes what it
 * has after one turn of the event loop. Batches fill under a backlog and flush
 * at once when there is none.
 */
import type { Clock } from "effect"
import { Effect, Metric } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { Delivery, EventSource } from "../EventSource.js"
import type { Event } from "../Projection.js"
import { decoderOf } from "../Projection.js"
import * as Batches from "./batches.js"
import { Committer } from "./committer.js"
import type { Context } from "./context.js"
import { describe } from "./fold.js"
import { Lane, laneOf, nextTurn } from "./lanes.js"
import { Settlement } from "./settlement.js"
import { StreamOrder } from "./streamOrder.js"
import type { Part, Tracked } from "./tracked.js"
import { partDone, samePart } from "./tracked.js"

/**
 * How far the intake got, and whether it is behind the source's head: lanes
 * fill their batches only while there is a backlog.
 */
export class Activity {
  /** Deliveries taken in so far. */
  received = 0
  /** The position of the newest delivery taken in. */
  position: bigint | undefined
  /** The source's head as last read (catch-up), if known. */
  head: bigint | undefined
  /**
   * The intake has waited on the source for a while (see intake.ts, `StallWatch`):
   * whatever the head says, nothing more is at hand, so lanes must not wait.
   */
  stalled = false

  /**
   * More is ready at the source than the intake took in: behind the head as last
   * read, and the source keeps delivering. The head is only re-read now and then,
   * and live it is often ahead of what the subscription has delivered yet (new
   * appends): a stalled intake is not behind, whatever the head says.
   */
  get backlog(): boolean {
    return !this.stalled && this.head !== undefined && (this.position === undefined || this.position < this.head)
  }
}

/** The longest a lane waits for its batch to fill under a backlog, in ms (a safety net: see nextBatch). */
const LINGER_MS = 1000

export class Pipeline {
  readonly settlement: Settlement
  readonly committer: Committer
  readonly lanes: ReadonlyArray<Lane<Part>>
  /** Persistent mode: restores each stream's order before routing. */
  readonly order: StreamOrder | undefined
  private readonly decode: ReturnType<typeof decoderOf>
  private readonly partition: (event: Event, key: string) => string
  private skips = 0

  constructor(
    readonly ctx: Context,
    readonly start: bigint | undefined,
    private readonly activity: Activity,
    clock: Clock.Clock,
    readStream?: EventSource["Type"]["readStream"]
  ) {
    this.settlement = new Settlement(ctx, start, clock)
    this.order = ctx.options.mode === "persistent"
      ? new StreamOrder(ctx, this.settlement, (tracked) => this.dispatch(tracked), readStream)
      : undefined
    this.settlement.order = this.order
    // Persistent quarantine: copies of events their stream's progress covers are not held again.
    if (this.order !== undefined && ctx.quarantine !== undefined) ctx.quarantine.progress = this.order.durable
    this.committer = new Committer(ctx, this.settlement, start)
    this.lanes = Array.from({ length: ctx.options.lanes }, () => new Lane<Part>())
    this.settlement.gate.onBlocked = () => this.flushLanes()
    this.decode = decoderOf(ctx.runnable)
    const runnable = ctx.runnable
    this.partition = runnable._tag === "Projection" && runnable.partition !== undefined ? runnable.partition : (_, key) => key
  }

  /**
   * Takes a delivery in and routes its parts to their lanes; returns it when it
   * is already done (skipped or poison). A delivery at or below the checkpoint
   * the pipeline started from (a shared subscription started further back for
   * another projection) is not taken in: this projection has it.
   */
  route(delivery: Delivery): Tracked | undefined {
    if (this.start !== undefined && this.ctx.options.mode === "catch-up" && delivery.position <= this.start) return undefined
    return this.dispatch(this.settlement.track(delivery))
  }

  /** Routes a delivery taken in to its lanes; returns it when it is already done (skipped or poison). */
  dispatch(tracked: Tracked): Tracked | undefined {
    const delivery = tracked.delivery
    const event = this.decode(delivery)
    if (event === undefined) {
      this.skips++
      return partDone(tracked, undefined)
    }
    if (typeof event === "string") return partDone(tracked, event)
    const runnable = this.ctx.runnable
    const laneCount = this.lanes.length
    let key: string | ReadonlyArray<string>
    let lane: number
    try {
      key = runnable.key(event as never)
      // One document (the usual case): no arrays on the way.
      if (typeof key === "string") lane = laneOf(this.partition(event, key), laneCount)
      else if (!Array.isArray(key)) throw new TypeError(`key returned ${String(key)}`)
    } catch (error) {
      return partDone(tracked, `key or partition failed on ${delivery.type}: ${describe(error)}`)
    }
    if (typeof key === "string") {
      this.lanes[lane!]!.push({ tracked, event, key })
      return undefined
    }
    let keys: ReadonlyArray<string>
    let lanesOf: ReadonlyArray<number>
    try {
      keys = [...new Set(key)]
      for (const k of keys) if (typeof k !== "string") throw new TypeError(`key returned a non-string: ${String(k)}`)
      lanesOf = keys.map((k) => laneOf(this.partition(event, k), laneCount))
    } catch (error) {
      return partDone(tracked, `key or partition failed on ${delivery.type}: ${describe(error)}`)
    }
    if (keys.length === 0) return partDone(tracked, undefined)
    tracked.remaining = keys.length
    for (let i = 0; i < keys.length; i++) this.lanes[lanesOf[i]!]!.push({ tracked, event, key: keys[i]! })
    return undefined
  }

  /** Persistent mode: takes a chunk in through the stream order (which routes it). */
  offer(chunk: Iterable<Delivery>): Effect.Effect<void, ReconcilerError> {
    return this.order!.offer(chunk).pipe(Effect.zipRight(this.afterChunk([])))
  }

  /** Settles what routing finished at once, and counts the skips of the chunk. */
  afterChunk(done: ReadonlyArray<Tracked>): Effect.Effect<void, ReconcilerError> {
    const skips = this.skips
    this.skips = 0
    if (skips === 0) return this.settlement.settle(done)
    this.ctx.totals.skipped += skips
    return Metric.incrementBy(this.ctx.metrics.skipped, skips).pipe(Effect.zipRight(this.settlement.settle(done)))
  }

  /** The next batch of a lane (see the module's note on batching); `undefined` once ended and empty. */
  private nextBatch(lane: Lane<Part>): Effect.Effect<Array<Part> | undefined> {
    const { batchSize } = this.ctx.options
    const activity = this.activity
    const gate = this.settlement.gate
    return Effect.gen(function*() {
      yield* lane.ready
      if (lane.size < batchSize && !lane.isEnded && gate.inFlight < gate.bound) {
        // Behind the head: the batch fills as the intake brings more (the intake
        // flushes the lanes when it reaches the head or is held back).
        if (activity.backlog) yield* lane.fill(batchSize, LINGER_MS)
        // Caught up: what arrives in the same burst of I/O comes along.
        else yield* nextTurn
      }
      return lane.takeNow(batchSize, samePart)
    })
  }

  /** Every lane takes what it holds now. */
  flushLanes(): void {
    for (const lane of this.lanes) lane.flush()
  }

  /** A lane's loop: batches until the lane ends and is empty. */
  laneLoop(lane: Lane<Part>): Effect.Effect<void, ReconcilerError> {
    const self = this
    return Effect.gen(function*() {
      const process = Batches.make(self.ctx, self.settlement.watermark, self.order)
      while (true) {
        const parts = yield* self.nextBatch(lane)
        if (parts === undefined) return
        if (parts.length === 0) continue
        yield* self.settlement.settle(yield* process(parts))
      }
    })
  }

  /** No more deliveries come: lanes finish what they hold and stop. */
  endLanes(): void {
    for (const lane of this.lanes) lane.end()
  }
}
