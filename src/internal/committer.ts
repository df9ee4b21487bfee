/**
 * The committer: the only writer of a projection's checkpoint. Every
 * `commitInterval` it commits the watermark (never ahead of durable writes:
 * the watermark only passes settled deliveries), watches for "running but not
 * moving", and reports progress.
 */
import { Clock, Duration, Effect, Metric } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { Context } from "./context.js"
import type { Settlement } from "./settlement.js"

/** The least time between two commits triggered by the pipeline going idle. */
const IDLE_COMMIT_SPACING = Duration.millis(100)

export class Committer {
  /** The checkpoint as last committed (or read at start). */
  committed: bigint | undefined
  private lastSettled = -1
  private lastMove = 0

  constructor(private readonly ctx: Context, private readonly settlement: Settlement, start: bigint | undefined) {
    this.committed = start
  }

  /** Commits the watermark if it moved (catch-up); a no-op in persistent mode. */
  readonly commit: Effect.Effect<void, ReconcilerError> = Effect.suspend(() => {
    const position = this.settlement.watermark.current
    const { durably, id, options, store } = this.ctx
    if (options.mode !== "catch-up" || position === undefined || (this.committed !== undefined && position <= this.committed)) {
      return Effect.void
    }
    return durably(store.commitCheckpoint({ projection: id, position }), "committing the checkpoint").pipe(
      Effect.tap(() => {
        if (this.committed === undefined || position > this.committed) this.committed = position
      }),
      Effect.zipRight(this.report),
      Effect.withSpan("Reconciler.commit", { attributes: { projection: this.ctx.runnable.name } })
    )
  })

  /** The watermark is ahead of the checkpoint as committed (catch-up). */
  private behind(): boolean {
    const position = this.settlement.watermark.current
    return this.ctx.options.mode === "catch-up" && position !== undefined &&
      (this.committed === undefined || position > this.committed)
  }

  /** Flags work in flight that stopped settling for `stallAfter`. */
  private readonly watchdog: Effect.Effect<void> = Effect.suspend(() => {
    const { gate } = this.settlement
    return Effect.flatMap(Clock.currentTimeMillis, (now) => {
      if (this.settlement.settled !== this.lastSettled || gate.inFlight === 0) {
        this.lastSettled = this.settlement.settled
        this.lastMove = now
        return Metric.set(this.ctx.metrics.stalled, 0)
      }
      if (now - this.lastMove < this.ctx.options.stallAfter) return Effect.void
      return Metric.set(this.ctx.metrics.stalled, 1).pipe(
        Effect.zipRight(Effect.logWarning(
          `${this.ctx.runnable.name}: ${gate.inFlight} deliveries in flight and none settled for ${now - this.lastMove} ms`
        ))
      )
    })
  })

  /** Hands the current progress to `onProgress`, if given. */
  readonly report: Effect.Effect<void> = Effect.suspend(() => {
    const onProgress = this.ctx.options.onProgress
    if (onProgress === undefined) return Effect.void
    const { totals } = this.ctx
    return onProgress({
      projection: this.ctx.id,
      mode: this.ctx.options.mode,
      checkpoint: this.committed,
      received: this.settlement.received,
      inFlight: this.settlement.gate.inFlight,
      processed: totals.processed,
      skipped: totals.skipped,
      duplicates: totals.duplicates,
      deadLettered: totals.deadLettered,
      lastSettledAt: this.settlement.lastSettledAt
    })
  })

  /** One tick: commit (which reports when it commits), otherwise report; then the watchdog. */
  private readonly tick: Effect.Effect<void, ReconcilerError> = Effect.suspend(() => {
    const before = this.committed
    return this.commit.pipe(
      Effect.zipRight(Effect.suspend(() => (this.committed === before ? this.report : Effect.void))),
      Effect.zipRight(this.watchdog)
    )
  })

  /**
   * Resumes when the pipeline has nothing in flight any more — at once when it went
   * idle while this committer was committing and the watermark moved past the
   * checkpoint since (else the last batches of a catch-up waited a whole interval).
   */
  private readonly idle: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (this.settlement.gate.inFlight === 0 && this.behind()) return resume(Effect.void)
    this.settlement.onIdle = () => {
      this.settlement.onIdle = undefined
      resume(Effect.void)
    }
    return Effect.sync(() => {
      this.settlement.onIdle = undefined
    })
  })

  /**
   * Ticks every `commitInterval` until interrupted, and also soon after the
   * pipeline goes idle (caught up: the checkpoint follows at once rather than a
   * tick later), at most every {@link IDLE_COMMIT_SPACING}.
   */
  readonly loop: Effect.Effect<never, ReconcilerError> = Effect.suspend(() => {
    const interval = this.ctx.options.commitInterval
    const spacing = Duration.min(interval, IDLE_COMMIT_SPACING)
    const wait = Effect.raceFirst(Effect.sleep(interval), Effect.zipRight(this.idle, Effect.sleep(spacing)))
    return this.tick.pipe(Effect.zipRight(wait), Effect.forever)
  })
}
