/**
 * `reconciler rebuild`, `diff` and `cutover` as users run them (child processes)
 * against embedded servers: a rebuild killed with SIGKILL mid-way resumes from
 * its checkpoint and converges; diff shows the deliberate change,
 * `cutover --require-identical` refuses it, `cutover --cleanup` switches readers
 * and removes the old version.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import * as App from "../src/App.js"
import { Verify } from "../src/index.js"
import { ReadModelStore } from "../src/ReadModelStore.js"
import { spawn } from "./support/child.js"
import { ledger } from "./support/ledger.js"
import { doubled } from "./support/ledger-v2.js"
import { BIN, setup } from "./support/versions.js"

describe("rebuild", () => {
  it.scopedLive("killed with SIGKILL mid-way, resumed: converges; diff, a refused and a real cut-over", () =>
    Effect.gen(function*() {
      const { env, ports, cli, documents, sums } = yield* setup(2000, 20)
      yield* App.runUntilCaughtUp([ledger], { commitInterval: "20 millis" }).pipe(Effect.provide(ports))

      // One event per batch, so that the kill lands mid-way.
      const child = yield* spawn(BIN, [
        "rebuild", "--module", "test/support/ledger-v2.ts", "--projection", "ledger", "--batch-size", "1", "--lanes", "1"
      ], { ...env, RECONCILER_COMMIT_INTERVAL: "50 millis" })
      yield* child.line(/^\s*[1-9]\d?% ledger@2 → ledger__v2: position \d+/, "60 seconds")
      yield* child.kill("SIGKILL")
      const killed = yield* child.exit()
      expect(killed.signal).toBe("SIGKILL")
      const partial = yield* ReadModelStore.pipe(Effect.flatMap((s) => s.readCheckpoint("ledger@2")), Effect.provide(ports))
      expect(Option.isSome(partial) && partial.value < 1999n).toBe(true)

      const module = ["--module", "test/support/ledger-v2.ts", "--projection", "ledger"]
      const resumed = yield* cli(["rebuild", ...module])
      expect(resumed.output).toMatch(/rebuilt ledger@2 into ledger__v2 up to position \d+/)
      expect(resumed.code).toBe(0)
      const rebuilt = yield* documents("ledger__v2")
      expect(new Map([...rebuilt].map(([id, d]) => [id, d.total]))).toEqual(new Map([...sums].map(([id, s]) => [id, 2 * s])))

      // The deliberate change shows in diff, and --require-identical refuses it.
      const diff = yield* cli(["diff", ...module, "--sample", "2"])
      expect(diff.output).toContain("ledger: v1 (ledger) vs v2 (ledger__v2): 20 documents, 20 differing, 0 added, 0 removed")
      expect(diff.output).toMatch(/doc-\d+: total: (\d+) \(v1\) ≠ \d+ \(v2\)/)
      expect(diff.code).toBe(1)
      const identical = yield* cli(["cutover", ...module, "--require-identical"])
      expect(identical.output).toContain("versions 1 and 2 of ledger differ (20 differing, 0 added, 0 removed): not cutting over")
      expect(identical.code).toBe(1)

      const cutover = yield* cli(["cutover", ...module, "--cleanup"])
      expect(cutover.output).toContain("cut over ledger: readers now see version 2 (was 1)")
      expect(cutover.code).toBe(0)
      expect((yield* documents("ledger")).size).toBe(0)
      const report = yield* Verify.verify(doubled).pipe(Effect.provide(ports))
      expect(report).toMatchObject({ collection: "ledger__v2", documents: 20, mismatches: [] })
    }), { timeout: 180_000 })
})

