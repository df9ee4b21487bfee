/**
 * The per-stream progress on its own: whatever the order deliveries arrive in
 * (overtaking, copies), whenever they complete and the progress is committed,
 * and whatever another consumer records meanwhile, each stream is dispatched in
 * order, nothing is settled before the recorded progress covers it, gaps skip
 * by decision, and in the end everything is settled and nothing is held.
 */
import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { StreamProgress } from "../src/internal/streamProgress.js"
import { propertySeed } from "./support/ledger.js"

interface Item {
  readonly stream: string
  readonly revision: bigint
  readonly copy: number
}

const scheduleArbitrary = fc.record({
  /** Events per stream. */
  lengths: fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 5 }),
  /** Deliveries: which event, in which order, with copies. */
  order: fc.array(fc.nat(), { minLength: 1, maxLength: 120 }),
  /** What happens between deliveries: 0 deliver, 1 complete one in flight, 2 commit, 3 another consumer records, 4 skip a gap. */
  actions: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 300 }),
  picks: fc.array(fc.nat(), { minLength: 1, maxLength: 300 })
})

describe("StreamProgress", () => {
  const seed = propertySeed("stream progress")
  it.prop(
    "streams dispatch in order; settling never runs ahead of the recorded progress; all settles in the end",
    [scheduleArbitrary],
    ([schedule]) => {
      const progress = new StreamProgress<Item>()
      const streams = schedule.lengths.map((_, i) => `s-${i}`)
      const recorded = new Map<string, bigint>(streams.map((s) => [s, -1n]))
      // Another consumer applies a stream's events in order too: up to where it got.
      const otherApplied = new Map<string, bigint>(streams.map((s) => [s, -1n]))
      const dispatched = new Map<string, bigint>(streams.map((s) => [s, -1n]))
      const gone = new Map<string, bigint>(streams.map((s) => [s, -1n]))
      const inFlight: Array<Item> = []
      const settled: Array<Item> = []
      const violations: Array<string> = []
      let pick = 0
      const next = (n: number) => schedule.picks[pick++ % schedule.picks.length]! % Math.max(1, n)

      const onDispatch = (item: Item) => {
        const last = dispatched.get(item.stream)!
        const floor = recorded.get(item.stream)!
        if (item.revision > last + 1n && item.revision > floor + 1n) {
          violations.push(`${item.stream}@${item.revision} dispatched after ${last} (recorded ${floor})`)
        }
        if (item.revision > last) dispatched.set(item.stream, item.revision)
        inFlight.push(item)
      }
      const onSettle = (items: ReadonlyArray<Item>) => {
        for (const item of items) {
          if (item.revision > recorded.get(item.stream)!) {
            violations.push(`${item.stream}@${item.revision} settled above the recorded ${recorded.get(item.stream)}`)
          }
          settled.push(item)
        }
      }
      const release = (stream: string, released: { dispatch: ReadonlyArray<Item>; duplicates: ReadonlyArray<Item> }) => {
        for (const item of released.dispatch) onDispatch(item)
        onSettle(released.duplicates)
        void stream
      }
      const commit = () => {
        for (const due of progress.due()) {
          const stored = recorded.get(due.stream)!
          if (due.revision > stored) recorded.set(due.stream, due.revision)
          onSettle(progress.committed(due))
        }
      }
      for (const stream of streams) progress.learn(stream, undefined)
      let copies = 0
      const deliveries: Array<Item> = schedule.order.map((n) => {
        const s = n % streams.length
        const revision = BigInt(Math.floor(n / streams.length) % schedule.lengths[s]!)
        return { stream: streams[s]!, revision, copy: copies++ }
      })
      // Every event is delivered at least once, after the random order.
      streams.forEach((stream, s) => {
        for (let r = 0; r < schedule.lengths[s]!; r++) deliveries.push({ stream, revision: BigInt(r), copy: copies++ })
      })
      let d = 0
      const deliver = () => {
        const item = deliveries[d++]!
        if (item.revision <= gone.get(item.stream)!) {
          // gone from the stream: never delivered
          settled.push(item)
          return
        }
        const outcome = progress.offer(item.stream, item.revision, item, 0)
        if (outcome === "duplicate") onSettle([item])
        else if (outcome === "dispatch") {
          onDispatch(item)
          release(item.stream, progress.released(item.stream))
        }
      }
      for (const action of schedule.actions) {
        if (action === 0 && d < deliveries.length) deliver()
        else if (action === 1 && inFlight.length > 0) {
          const [item] = inFlight.splice(next(inFlight.length), 1)
          progress.complete(item!.stream, item!.revision, item!)
          onSettle(progress.settleableOf(item!.stream))
        } else if (action === 2) commit()
        else if (action === 3) {
          // Another consumer records a prefix of a stream it applied.
          const stream = streams[next(streams.length)]!
          const length = BigInt(schedule.lengths[streams.indexOf(stream)]!)
          const upTo = otherApplied.get(stream)! + 1n
          if (upTo < length && upTo <= recorded.get(stream)! + 1n) {
            otherApplied.set(stream, upTo)
            if (upTo > recorded.get(stream)!) recorded.set(stream, upTo)
            release(stream, progress.learn(stream, recorded.get(stream)!))
            onSettle(progress.settleableOf(stream))
          }
        } else if (action === 4) {
          // The next expected revisions of a waiting stream turn out to be gone.
          const waiting = progress.waiting()
          if (waiting.length > 0) {
            const w = waiting[next(waiting.length)]!
            if (w.expected > dispatched.get(w.stream)!) {
              gone.set(w.stream, w.before - 1n)
              dispatched.set(w.stream, w.before - 1n)
              release(w.stream, progress.skip(w.stream, { from: w.expected, to: w.before - 1n, reason: "gone" }))
            }
          }
        }
      }
      // Then everything runs to its end.
      while (d < deliveries.length || inFlight.length > 0 || progress.hasDue) {
        if (d < deliveries.length) deliver()
        while (inFlight.length > 0) {
          const item = inFlight.shift()!
          progress.complete(item.stream, item.revision, item)
          onSettle(progress.settleableOf(item.stream))
        }
        commit()
      }
      expect(violations).toEqual([])
      expect(progress.held).toBe(0)
      expect(settled.length).toBe(deliveries.length)
      expect(new Set(settled.map((i) => i.copy)).size).toBe(deliveries.length)
      streams.forEach((stream, s) => expect(progress.durable(stream)).toBe(BigInt(schedule.lengths[s]! - 1)))
    },
    { fastCheck: { seed, numRuns: 300 } }
  )

  it("a revision recorded as parked elsewhere does not hold its successors; a copy of it is parked again", () => {
    const progress = new StreamProgress<string>()
    // Known when the stream is first loaded: 1 and 3 were parked by an earlier run, 0 is not applied yet.
    progress.learn("s", -1n, [1n, 3n])
    expect(progress.offer("s", 0n, "0", 0)).toBe("dispatch")
    expect(progress.offer("s", 2n, "2", 0)).toBe("dispatch")
    expect(progress.offer("s", 4n, "4", 0)).toBe("dispatch")
    expect(progress.offer("s", 1n, "1 replayed", 0)).toBe("replayed")
    expect(progress.held).toBe(0)
    for (const r of [4n, 0n, 2n]) progress.complete("s", r, String(r))
    const due = progress.due()
    expect(due.map((d) => [d.stream, d.revision])).toEqual([["s", 4n]])
    expect([...progress.committed(due[0]!)].sort()).toEqual(["0", "2", "4"])
    expect(progress.durable("s")).toBe(4n)
  })

  it("learning that the missing revision was parked elsewhere releases what waited for it", () => {
    const progress = new StreamProgress<string>()
    progress.learn("s", undefined)
    expect(progress.offer("s", 0n, "0", 0)).toBe("dispatch")
    expect(progress.offer("s", 2n, "2", 0)).toBe("held")
    expect(progress.offer("s", 4n, "4", 0)).toBe("held")
    expect(progress.waiting().map((w) => [w.expected, w.before])).toEqual([[1n, 2n]])
    // A refresh of the held stream: another consumer parked 1 and 3 (and applied nothing yet).
    expect(progress.learn("s", undefined, [1n, 3n])).toEqual({ dispatch: ["2", "4"], duplicates: [] })
    expect(progress.held).toBe(0)
    expect(progress.waiting()).toEqual([])
    for (const r of [0n, 2n, 4n]) progress.complete("s", r, String(r))
    expect(progress.due().map((d) => [d.stream, d.revision])).toEqual([["s", 4n]])
  })
})
