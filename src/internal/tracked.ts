/**
 * Deliveries in flight: a delivery is split into one part per document it
 * touches and is settled once every part is done.
 */
import type { Delivery } from "../EventSource.js"
import type { Event } from "../Projection.js"

/** A delivery being worked on: settled once all its parts are done. */
export interface Tracked {
  readonly delivery: Delivery
  /** Its ticket in the watermark (catch-up), 0 otherwise. */
  readonly ticket: number
  remaining: number
  /** Why it is poison, once a part found out. */
  poison: string | undefined
}

/** One document's share of a delivery: routed to the lane of its partition. */
export interface Part {
  readonly tracked: Tracked
  readonly event: Event
  readonly key: string
}

/** Parts of one delivery (kept together in a batch, so that `read` sees its partners). */
export const samePart = (a: Part, b: Part): boolean => a.tracked === b.tracked

/** Marks one part of its delivery done; returns the delivery when that was the last part. */
export const partDone = (tracked: Tracked, poison: string | undefined): Tracked | undefined => {
  if (poison !== undefined && tracked.poison === undefined) tracked.poison = poison
  return --tracked.remaining === 0 ? tracked : undefined
}
