/**
 * The catch-up checkpoint: the highest position below which every delivery is
 * settled. Deliveries are tracked in arrival order (which is position order for a
 * catch-up subscription) and may complete out of order across lanes.
 */
export class Watermark {
  private readonly positions: Array<bigint> = []
  private readonly done: Array<boolean> = []
  private head = 0
  /** Tickets of compacted-away entries: ticket = offset + index. */
  private offset = 0
  private mark: bigint | undefined

  constructor(start: bigint | undefined) {
    this.mark = start
  }

  /** Starts tracking a delivery; returns its ticket for {@link complete}. */
  track(position: bigint): number {
    this.positions.push(position)
    this.done.push(false)
    return this.offset + this.positions.length - 1
  }

  /** Marks a tracked delivery as settled and advances the watermark past every settled prefix. */
  complete(ticket: number): void {
    this.done[ticket - this.offset] = true
    while (this.head < this.done.length && this.done[this.head]) {
      this.mark = this.positions[this.head]
      this.head++
    }
    // Compact now and then so memory follows the deliveries in flight, not the history.
    if (this.head > 1024 && this.head * 2 > this.done.length) {
      this.positions.splice(0, this.head)
      this.done.splice(0, this.head)
      this.offset += this.head
      this.head = 0
    }
  }

  /** The checkpoint to commit: every delivery at or below it is settled. */
  get current(): bigint | undefined {
    return this.mark
  }
}
