import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { Watermark } from "../src/internal/watermark.js"
import { propertySeed } from "./support/ledger.js"

describe("Watermark", () => {
  const seed = propertySeed("watermark")
  it.prop(
    "is the highest position below which every tracked delivery completed, over long runs (compaction included)",
    [fc.integer({ min: 1, max: 5000 }), fc.integer({ min: 1, max: 2000 })],
    ([count, window]) => {
      const watermark = new Watermark(undefined)
      const done = new Set<number>()
      const open: Array<{ ticket: number; index: number }> = []
      let next = 0
      let lcg = count * 31 + window
      // Keep up to `window` deliveries open, completing them in a scrambled order.
      while (next < count || open.length > 0) {
        while (next < count && open.length < window) {
          open.push({ ticket: watermark.track(BigInt(next * 10 + 10)), index: next })
          next++
        }
        lcg = (lcg * 1103515245 + 12345) % 2147483648
        const [{ index, ticket }] = open.splice(lcg % open.length, 1)
        watermark.complete(ticket)
        done.add(index)
        let contiguous = 0
        while (done.has(contiguous)) contiguous++
        expect(watermark.current).toBe(contiguous === 0 ? undefined : BigInt(contiguous * 10))
      }
      expect(watermark.current).toBe(BigInt(count * 10))
    },
    { fastCheck: { seed, numRuns: 20 } }
  )
})
