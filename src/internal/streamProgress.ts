/**
 * Per-stream progress of a persistent-mode projection, as one engine sees it.
 *
 * For each source stream it knows the *durable* revision (every event up to it
 * is applied, parked or skipped by decision, and recorded in the store), what
 * it dispatched to its lanes, and what completed. From that it decides, per
 * delivery: a duplicate (at or below the durable revision: acknowledge it), the
 * next one (dispatch it), or one that overtook its predecessors (hold it until
 * they arrive, are applied by another consumer, or are read from the stream).
 * A completed delivery is acknowledged only once the durable revision covers
 * it, so that an acknowledged event is always below the recorded progress.
 *
 * Pure and synchronous: the engine does the I/O (loading and committing
 * progress, reading the stream) and feeds the results back.
 */

/** What to do with an offered delivery. */
export type Offer = "duplicate" | "dispatch" | "held" | "replayed"

/** A revision range skipped by decision, not yet recorded. */
export interface Gap {
  readonly from: bigint
  readonly to: bigint
  readonly reason: string
}

/** What a stream owes the store: its progress, and gaps to record with it. */
export interface Due {
  readonly stream: string
  readonly revision: bigint
  readonly gaps: ReadonlyArray<Gap>
  /** Revisions parked as poison, to record. */
  readonly parked: ReadonlyArray<bigint>
}

/** A stream whose held deliveries have waited since `since` for `expected`…`before - 1`. */
export interface Waiting {
  readonly stream: string
  readonly expected: bigint
  readonly before: bigint
  readonly since: number
}

interface State<T> {
  /** Every revision up to this one is recorded in the store (-1: none). */
  durable: bigint
  /** The highest revision dispatched (≥ durable); everything in (durable, dispatched] is ours to complete. */
  dispatched: bigint
  /** Every revision in (durable, completed] has completed here (or was skipped). */
  completed: bigint
  readonly done: Set<bigint>
  /** Skipped ranges beyond `completed`, by first revision. */
  readonly skipped: Map<bigint, Gap>
  /** Skipped ranges to record with the next progress commit. */
  unrecorded: Array<Gap>
  /** Revisions parked as poison (recorded or not). */
  readonly parked: Set<bigint>
  unrecordedParked: Array<bigint>
  readonly held: Map<bigint, Array<T>>
  heldSince: number | undefined
  /** Completed deliveries waiting for the durable revision to cover them. */
  waiting: Array<{ readonly revision: bigint; readonly item: T }>
  inFlight: number
}

/** The released deliveries of a stream: to dispatch, in order, and duplicates to acknowledge. */
export interface Released<T> {
  readonly dispatch: ReadonlyArray<T>
  readonly duplicates: ReadonlyArray<T>
}

const none: Released<never> = { dispatch: [], duplicates: [] }

export class StreamProgress<T> {
  private readonly streams = new Map<string, State<T>>()
  private heldCount = 0

  constructor(
    /** Streams kept in memory while idle; beyond it idle streams are forgotten (and reloaded when seen again). */
    private readonly capacity = 10_000
  ) {}

  /** Deliveries held now. */
  get held(): number {
    return this.heldCount
  }

  /** Whether the stream's progress has been loaded. */
  knows(stream: string): boolean {
    return this.streams.has(stream)
  }

  /** The durable revision of a known stream (-1 when nothing is recorded), `undefined` for an unknown one. */
  durable(stream: string): bigint | undefined {
    return this.streams.get(stream)?.durable
  }

  /**
   * Learns the stored progress of a stream (`undefined`: no record). Never moves
   * backwards. Revisions another consumer applied count as dispatched and done.
   */
  learn(stream: string, revision: bigint | undefined, parked: ReadonlyArray<bigint> = []): Released<T> {
    let state = this.streams.get(stream)
    const r = revision ?? -1n
    if (state === undefined) {
      state = {
        durable: r,
        dispatched: r,
        completed: r,
        done: new Set(),
        skipped: new Map(),
        unrecorded: [],
        parked: new Set(parked),
        unrecordedParked: [],
        held: new Map(),
        heldSince: undefined,
        waiting: [],
        inFlight: 0
      }
      this.streams.set(stream, state)
      this.passParked(state)
      this.advanceCompleted(state)
      return none
    }
    for (const p of parked) state.parked.add(p)
    if (r > state.durable) this.advanceDurable(state, r)
    this.passParked(state)
    this.advanceCompleted(state)
    return this.release(state)
  }

  /** Whether a revision of a known stream was parked as poison (as far as learned). */
  isParked(stream: string, revision: bigint): boolean {
    return this.streams.get(stream)?.parked.has(revision) === true
  }

  /** Offers a delivery of a known stream. `dispatch` also covers a copy of one in flight here (the fold skips it). */
  offer(stream: string, revision: bigint, item: T, now: number): Offer {
    const state = this.state(stream)
    // A copy of a parked event is parked again, not applied (its successors may be) nor acknowledged as applied.
    if (state.parked.has(revision)) return "replayed"
    if (revision <= state.durable) return "duplicate"
    if (revision <= state.dispatched + 1n) {
      if (revision === state.dispatched + 1n) {
        state.dispatched = revision
        this.passParked(state)
      }
      state.inFlight++
      return "dispatch"
    }
    const copies = state.held.get(revision)
    if (copies === undefined) state.held.set(revision, [item])
    else copies.push(item)
    state.heldSince ??= now
    this.heldCount++
    return "held"
  }

  /** Held deliveries that may go now, after an offer was dispatched. */
  released(stream: string): Released<T> {
    const state = this.streams.get(stream)
    return state === undefined ? none : this.release(state)
  }

  /** A dispatched delivery is done (applied, skipped, or `parked` as poison). */
  complete(stream: string, revision: bigint, item: T, parked = false): void {
    const state = this.state(stream)
    if (parked && !state.parked.has(revision)) {
      state.parked.add(revision)
      state.unrecordedParked.push(revision)
    }
    state.inFlight--
    state.waiting.push({ revision, item })
    if (revision > state.completed) state.done.add(revision)
    this.advanceCompleted(state)
  }

  /** Decides that revisions `from`…`to` of a stream will never come: they count as done. */
  skip(stream: string, gap: Gap): Released<T> {
    const state = this.state(stream)
    if (gap.to <= state.dispatched) return this.release(state)
    const from = gap.from > state.dispatched ? gap.from : state.dispatched + 1n
    const effective = { ...gap, from }
    state.skipped.set(from, effective)
    state.unrecorded.push(effective)
    state.dispatched = gap.to
    this.passParked(state)
    this.advanceCompleted(state)
    return this.release(state)
  }

  /** What to commit: streams whose completed revision is beyond their durable one. */
  due(): ReadonlyArray<Due> {
    const out: Array<Due> = []
    for (const [stream, state] of this.streams) {
      if (state.completed > state.durable || state.unrecordedParked.length > 0) {
        out.push({ stream, revision: state.completed, gaps: state.unrecorded, parked: state.unrecordedParked })
      }
    }
    return out
  }

  /** Some stream has something to commit. */
  get hasDue(): boolean {
    for (const state of this.streams.values()) if (state.completed > state.durable || state.unrecordedParked.length > 0) return true
    return false
  }

  /** The store recorded a {@link Due}: returns the stream's deliveries that may now be acknowledged. */
  committed({ parked, revision, stream }: Due): ReadonlyArray<T> {
    const state = this.streams.get(stream)
    if (state === undefined) return []
    if (parked.length > 0) state.unrecordedParked = state.unrecordedParked.filter((r) => !parked.includes(r))
    if (revision > state.durable) this.advanceDurable(state, revision)
    return this.settleable(state)
  }

  /** Completed deliveries the durable revision already covers (copies of applied ones). */
  settleableOf(stream: string): ReadonlyArray<T> {
    const state = this.streams.get(stream)
    return state === undefined ? [] : this.settleable(state)
  }

  /** Streams with held deliveries, and since when they wait. */
  waiting(): ReadonlyArray<Waiting> {
    const out: Array<Waiting> = []
    for (const [stream, state] of this.streams) {
      if (state.heldSince === undefined) continue
      let before: bigint | undefined
      for (const r of state.held.keys()) if (before === undefined || r < before) before = r
      out.push({ stream, expected: state.dispatched + 1n, before: before!, since: state.heldSince })
    }
    return out
  }

  /** Takes the held deliveries (of one stream, or all) out, to hand them back to the source. */
  takeHeld(stream?: string): ReadonlyArray<T> {
    const out: Array<T> = []
    for (const [name, state] of this.streams) {
      if (stream !== undefined && name !== stream) continue
      for (const copies of state.held.values()) out.push(...copies)
      state.held.clear()
      state.heldSince = undefined
    }
    this.heldCount -= out.length
    return out
  }

  private state(stream: string): State<T> {
    const state = this.streams.get(stream)
    if (state === undefined) throw new Error(`stream progress of ${stream} used before it was loaded`)
    return state
  }

  /**
   * Revisions parked elsewhere (recorded in the store by an earlier run or another
   * consumer) are settled for good and never come back from the group: the stream
   * moves past them as if this engine had dispatched and completed them.
   */
  private passParked(state: State<T>): void {
    for (;;) {
      const next = state.dispatched + 1n
      if (!state.parked.has(next)) return
      state.dispatched = next
      if (next > state.completed) state.done.add(next)
    }
  }

  private advanceDurable(state: State<T>, revision: bigint): void {
    state.durable = revision
    if (state.dispatched < revision) state.dispatched = revision
    this.passParked(state)
    if (state.completed < revision) {
      state.completed = revision
      for (const r of state.done) if (r <= revision) state.done.delete(r)
      for (const [from, gap] of state.skipped) if (from <= revision) state.skipped.delete(from)
    }
    state.unrecorded = state.unrecorded.filter((gap) => gap.to > revision)
    this.advanceCompleted(state)
  }

  private advanceCompleted(state: State<T>): void {
    for (;;) {
      const next = state.completed + 1n
      if (state.done.delete(next)) {
        state.completed = next
        continue
      }
      const gap = state.skipped.get(next)
      if (gap !== undefined) {
        state.skipped.delete(next)
        state.completed = gap.to
        continue
      }
      return
    }
  }

  private release(state: State<T>): Released<T> {
    if (state.held.size === 0) return none
    const dispatch: Array<T> = []
    const duplicates: Array<T> = []
    for (;;) {
      const next = state.dispatched + 1n
      const copies = state.held.get(next)
      if (copies === undefined) break
      state.held.delete(next)
      state.dispatched = next
      state.inFlight += copies.length
      dispatch.push(...copies)
      this.passParked(state)
    }
    // What the durable or dispatched revision passed without it (covered, or parked elsewhere):
    // duplicates, acknowledged (or, parked, parked again).
    for (const [revision, copies] of state.held) {
      if (revision > state.durable && !(revision <= state.dispatched && state.parked.has(revision))) continue
      duplicates.push(...copies)
      state.held.delete(revision)
    }
    this.heldCount -= dispatch.length + duplicates.length
    if (state.held.size === 0) state.heldSince = undefined
    return { dispatch, duplicates }
  }

  private settleable(state: State<T>): ReadonlyArray<T> {
    if (state.waiting.length === 0) return []
    const ready: Array<T> = []
    const rest: Array<{ readonly revision: bigint; readonly item: T }> = []
    for (const w of state.waiting) {
      if (w.revision <= state.durable) ready.push(w.item)
      else rest.push(w)
    }
    state.waiting = rest
    return ready
  }

  /** Keeps memory bounded: beyond the capacity, forgets streams with nothing in flight, held, waiting or owed. */
  forget(): void {
    if (this.streams.size < this.capacity) return
    for (const [stream, state] of this.streams) {
      if (
        state.inFlight === 0 && state.held.size === 0 && state.waiting.length === 0 && state.unrecordedParked.length === 0 &&
        state.completed === state.durable && state.dispatched === state.durable
      ) this.streams.delete(stream)
      if (this.streams.size < this.capacity / 2) return
    }
  }
}
