/**
 * Liveness against the head: a projection is stalled when it is behind the
 * head of its source and has not moved for `stallAfter`, whatever the cause
 * (a subscription gone silent, a stuck lane, the store down). Pure: the caller
 * feeds it the clock, the position it observed and whether it is behind.
 *
 * The detector asks for one resubscription when a stall begins, and another
 * each `stallAfter` it lasts; it calls the projection unhealthy only when a
 * stall has outlived a resubscription (resolved by resubscribing first,
 * reported second).
 */

/** What the detector was shown at one instant. */
export interface Observation {
  /** Clock millis. */
  readonly now: number
  /**
   * Marks of movement that only grow while the projection makes progress
   * (e.g. its committed checkpoint, the clock time of its last settlement):
   * a mark above its high-water mark is movement. A restarted run starting
   * its totals again moves nothing.
   */
  readonly marks: ReadonlyArray<bigint | number | undefined>
  /** Whether the source has events the projection has not applied. */
  readonly behind: boolean
}

/** The detector's reading after an observation. */
export interface Verdict {
  /** Behind and not moving for at least stallAfter. */
  readonly stalled: boolean
  /** How long it has not moved while behind (0 when moving or caught up). */
  readonly stalledForMs: number
  /** A stall began with this observation (log it, count it). */
  readonly began: boolean
  /** A stall ended with this observation. */
  readonly ended: boolean
  /** Resubscribe now (restart the run: drain, resume from the checkpoint). */
  readonly resubscribe: boolean
  /** Stalled through at least one resubscription: report it unhealthy. */
  readonly unhealthy: boolean
  /** Resubscriptions asked for during the current stall. */
  readonly resubscriptions: number
}

/** A stall detector for one projection. */
export class StallDetector {
  private readonly highWater: Array<bigint | number | undefined> = []
  private lastMoveAt: number
  private stalled = false
  private lastResubscribeAt: number | undefined = undefined
  private resubscriptions = 0
  private unhealthy = false

  constructor(readonly stallAfterMs: number, startedAt: number) {
    this.lastMoveAt = startedAt
  }

  observe(observation: Observation): Verdict {
    const { behind, marks, now } = observation
    let moved = false
    marks.forEach((mark, i) => {
      const seen = this.highWater[i]
      if (mark !== undefined && (seen === undefined || mark > seen)) {
        this.highWater[i] = mark
        moved = true
      }
    })
    if (moved || !behind) {
      const ended = this.stalled
      this.lastMoveAt = now
      this.stalled = false
      this.lastResubscribeAt = undefined
      this.resubscriptions = 0
      this.unhealthy = false
      return { stalled: false, stalledForMs: 0, began: false, ended, resubscribe: false, unhealthy: false, resubscriptions: 0 }
    }
    const stalledForMs = Math.max(0, now - this.lastMoveAt)
    if (stalledForMs < this.stallAfterMs) {
      return { stalled: false, stalledForMs, began: false, ended: false, resubscribe: false, unhealthy: false, resubscriptions: 0 }
    }
    const began = !this.stalled
    this.stalled = true
    const resubscribe = this.lastResubscribeAt === undefined || now - this.lastResubscribeAt >= this.stallAfterMs
    // Unhealthy once a resubscription has had stallAfter to help and did not (until it moves).
    if (this.lastResubscribeAt !== undefined && now - this.lastResubscribeAt >= this.stallAfterMs) this.unhealthy = true
    if (resubscribe) {
      this.lastResubscribeAt = now
      this.resubscriptions++
    }
    return {
      stalled: true,
      stalledForMs,
      began,
      ended: false,
      resubscribe,
      unhealthy: this.unhealthy,
      resubscriptions: this.resubscriptions
    }
  }
}

/** Positions a committed checkpoint is behind a head (0 once it has reached it; head + 1 without a checkpoint). */
export const distance = (checkpoint: bigint | undefined, head: bigint | undefined): bigint =>
  head === undefined ? 0n : checkpoint === undefined ? head + 1n : checkpoint >= head ? 0n : head - checkpoint
