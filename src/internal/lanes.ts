/**
 * Lanes and the in-flight gate: the engine's hot path, kept to plain arrays and
 * counters with a Deferred only for the rare wait. An Effect `Queue` per lane and
 * a `Semaphore` per delivery cost more than the work they guard (measured in
 * bench/engine.ts); the bound they give is kept by {@link Gate}.
 */
import { Deferred, Effect, FiberId } from "effect"

/**
 * The lane of a document key: FNV-1a over the key's UTF-16 code units, so one key
 * always lands in the same lane and keys spread evenly.
 */
export const laneOf = (key: string, lanes: number): number => {
  let hash = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    hash ^= key.charCodeAt(i)
    hash = Math.imul(hash, 0x01000193)
  }
  return (hash >>> 0) % lanes
}

/** A wake-up signal made only when somebody waits. */
class Signal {
  private deferred: Deferred.Deferred<void> | undefined
  wait(): Effect.Effect<void> {
    this.deferred ??= Deferred.unsafeMake<void>(FiberId.none)
    return Deferred.await(this.deferred)
  }
  wake(): void {
    const deferred = this.deferred
    if (deferred === undefined) return
    this.deferred = undefined
    Deferred.unsafeDone(deferred, Effect.void)
  }
}

/**
 * A FIFO lane: pushed synchronously, taken in batches by one fiber. The taker
 * waits for an item ({@link ready}) or for a batch to fill ({@link fill});
 * `flush` and `end` wake it whatever it waits for.
 */
export class Lane<A> {
  private items: Array<A> = []
  private head = 0
  private ended = false
  private waiter: (() => void) | undefined
  /** While the taker fills a batch, pushes wake it only once this many items are queued. */
  private fillTo = 0

  push(item: A): void {
    this.items.push(item)
    if (this.waiter !== undefined && this.items.length - this.head >= this.fillTo) this.wake()
  }

  /** Wakes the taker: take what there is now. */
  flush(): void {
    this.wake()
  }

  /** No more items will come; {@link takeNow} returns `undefined` once the lane is empty. */
  end(): void {
    this.ended = true
    this.wake()
  }

  private wake(): void {
    const waiter = this.waiter
    this.waiter = undefined
    this.fillTo = 0
    waiter?.()
  }

  /** Items waiting. */
  get size(): number {
    return this.items.length - this.head
  }

  get isEnded(): boolean {
    return this.ended
  }

  /** Waits until the lane holds an item or has ended. */
  readonly ready: Effect.Effect<void> = Effect.suspend(() =>
    this.size > 0 || this.ended ? Effect.void : Effect.zipRight(this.waitFor(1, undefined), this.ready)
  )

  /**
   * Waits until `target` items are queued, the lane is flushed or ended, or
   * `ms` of real time passed (a latency bound, not a deadline: not the Clock).
   */
  fill(target: number, ms: number): Effect.Effect<void> {
    return Effect.suspend(() => (this.size >= target || this.ended ? Effect.void : this.waitFor(target, ms)))
  }

  private waitFor(target: number, ms: number | undefined): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      let timer: ReturnType<typeof setTimeout> | undefined
      this.fillTo = target
      this.waiter = () => {
        if (timer !== undefined) clearTimeout(timer)
        resume(Effect.void)
      }
      if (ms !== undefined) timer = setTimeout(() => this.wake(), ms)
      return Effect.sync(() => {
        if (timer !== undefined) clearTimeout(timer)
        this.waiter = undefined
        this.fillTo = 0
      })
    })
  }

  /**
   * Up to `max` items in order, without waiting; `undefined` when ended and
   * empty. Items `together` with the last one taken come along past `max`.
   */
  takeNow(max: number, together?: (a: A, b: A) => boolean): Array<A> | undefined {
    const available = this.size
    if (available === 0) return this.ended ? undefined : []
    let end = this.head + Math.min(max, available)
    if (together !== undefined) {
      while (end < this.items.length && together(this.items[end - 1]!, this.items[end]!)) end++
    }
    const batch = this.items.slice(this.head, end)
    this.head = end
    if (this.head === this.items.length) {
      this.items = []
      this.head = 0
    } else if (this.head > 4096 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
    return batch
  }

  /** Up to `max` items in order, waiting for at least one; `undefined` when ended and empty. */
  take(max: number, together?: (a: A, b: A) => boolean): Effect.Effect<Array<A> | undefined> {
    return Effect.map(this.ready, () => this.takeNow(max, together))
  }
}

/**
 * One turn of the event loop: I/O that is ready gets handled before this
 * resumes, and nothing else waits on it (a timer would add a millisecond).
 */
export const nextTurn: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

/** Counts deliveries in flight and holds the source back at the bound. */
export class Gate {
  private count = 0
  private readonly signal = new Signal()
  /** Called when the source is about to be held back: whoever holds deliveries should move them on. */
  onBlocked: (() => void) | undefined
  constructor(readonly bound: number) {}

  get inFlight(): number {
    return this.count
  }

  /** Waits until there is room for one more delivery. */
  readonly room: Effect.Effect<void> = Effect.suspend(() => {
    if (this.count < this.bound) return Effect.void
    this.onBlocked?.()
    return Effect.zipRight(this.signal.wait(), this.room)
  })

  enter(): void {
    this.count++
  }

  leave(n: number): void {
    this.count -= n
    if (n > 0) this.signal.wake()
  }
}
