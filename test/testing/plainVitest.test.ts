/**
 * No test-runner lock-in: with plain vitest (no @effect/vitest), a spec and a
 * law check run with `Effect.runPromise`, and a failure rejects with the
 * readable message.
 */
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { ProjectionLaws, ProjectionSpec } from "../../src/testing/index.js"
import { balances, hooks, mutating } from "./fixtures.js"

describe("the kit with plain vitest", () => {
  it("a spec and a law check pass as promises", async () => {
    await Effect.runPromise(
      ProjectionSpec.for(balances)
        .when({ stream: "account-1", type: "Deposited", data: { account: "1", amount: 3 } })
        .then({ "1": { balance: 3, transactions: 1 } })
    )
    const report = await Effect.runPromise(ProjectionLaws.check(balances, { ...hooks, engineRuns: 3 }))
    expect(report.projection).toBe("balances")
  })

  it("a failing spec or law check rejects with its message", async () => {
    await expect(
      Effect.runPromise(
        ProjectionSpec.for(balances)
          .when({ stream: "account-1", type: "Deposited", data: { account: "1", amount: 3 } })
          .then({ "1": { balance: 4, transactions: 1 } })
      )
    ).rejects.toThrow(/the documents differ from the expected ones\n {2}document "1":\n {4}\.balance: expected 4, got 3/)
    await expect(Effect.runPromise(ProjectionLaws.check(mutating, { ...hooks, laws: ["no-mutation"] }))).rejects.toThrow(
      /mutating \(catch-up\) breaks 1 law[\s\S]*✗ no-mutation/
    )
  })
})
