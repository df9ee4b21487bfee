/**
 * Multi-version history behind snapshot isolation: a transaction sees its
 * snapshot however many commits follow, and only the versions open snapshots
 * can see are kept.
 */
import { describe, expect, it } from "@effect/vitest"
import { DirectAccess, TransactionAccess, findVersions, insertOne, updateStatement } from "../../src/embedded/mongo/Operations.js"
import { Storage } from "../../src/embedded/mongo/Storage.js"
import { keyOf } from "../../src/embedded/mongo/Values.js"

const inc = (id: string) => ({ q: { _id: id }, u: { $inc: { n: 1 } }, upsert: false, multi: false, arrayFilters: undefined })

describe("snapshots", () => {
  it("keep what open snapshots see and no more", () => {
    const storage = new Storage()
    const c = storage.ensureCollection("db", "c")
    const direct = new DirectAccess(storage)
    insertOne(direct, c, { _id: "a", n: 0 })
    const first = storage.begin("s1", 1)
    for (let i = 0; i < 50; i++) updateStatement(direct, c, inc("a"))
    const second = storage.begin("s2", 1)
    for (let i = 0; i < 50; i++) updateStatement(direct, c, inc("a"))
    const seen = (t: typeof first) => findVersions(new TransactionAccess(storage, t), c, { filter: { _id: "a" } })[0]!.view.n
    expect(seen(first)).toBe(0)
    expect(seen(second)).toBe(50)
    expect(findVersions(direct, c, { filter: { _id: "a" } })[0]!.view.n).toBe(100)
    // The versions of the two snapshots and the latest, not the 100 in between.
    expect(c.history.get(keyOf("a"))!.length).toBe(3)
    storage.end(first, "aborted")
    updateStatement(direct, c, inc("a"))
    expect(seen(second)).toBe(50)
    expect(c.history.get(keyOf("a"))!.length).toBe(2)
    storage.end(second, "aborted")
    expect(c.history.size).toBe(0)
  })
})
