/**
 * The embedded server's journal: replays to the same state, survives a torn
 * tail, and compacts itself instead of growing without bound.
 */
import { describe, expect, it } from "@effect/vitest"
import { appendFileSync, mkdtempSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Journal from "../../src/embedded/mongo/Journal.js"
import { DirectAccess, insertOne, updateStatement } from "../../src/embedded/mongo/Operations.js"
import { Storage } from "../../src/embedded/mongo/Storage.js"

const withDir = (f: (dir: string) => void) => {
  const dir = mkdtempSync(join(tmpdir(), "embedded-mongo-journal-"))
  try {
    f(dir)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The documents as the query engine sees them (numbers of any BSON width as numbers). */
const contents = (storage: Storage) =>
  [...(storage.collection("db", "c")?.docs.values() ?? [])].map((v) => v.view)

describe("the journal", () => {
  it("compacts while writing and replays to the same state, ignoring a torn tail", () =>
    withDir((dir) => {
      const storage = new Storage()
      const journal = Journal.open(storage, dir, { compactAfterBytes: 4096 })
      const c = storage.ensureCollection("db", "c")
      const access = new DirectAccess(storage)
      for (let i = 0; i < 10; i++) insertOne(access, c, { _id: i, n: 0 })
      for (let k = 0; k < 2000; k++) {
        updateStatement(access, c, { q: { _id: k % 10 }, u: { $inc: { n: 1 } }, upsert: false, multi: false, arrayFilters: undefined })
      }
      journal.close()
      // 2000 updates of ~40 bytes each would be ~80 kB uncompacted.
      expect(statSync(join(dir, "journal.bson")).size).toBeLessThan(12_000)
      appendFileSync(join(dir, "journal.bson"), Buffer.from([0x40, 0, 0, 0, 3, 1])) // a write cut short by a crash
      const reloaded = new Storage()
      Journal.open(reloaded, dir).close()
      expect(contents(reloaded)).toEqual(contents(storage))
      expect(contents(reloaded).map((d) => d.n)).toEqual(Array.from({ length: 10 }, () => 200))
    }))
})
