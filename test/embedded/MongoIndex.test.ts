/**
 * The embedded server's `_id` index: lookups, updates, upserts and deletes by
 * `_id` (equality, `$eq`, `$in`, inside `$and`) never scan the collection.
 */
import { describe, expect, it } from "@effect/vitest"
import { Long } from "bson"
import { type Access, DirectAccess, deleteStatement, findVersions, insertOne, updateStatement } from "../../src/embedded/mongo/Operations.js"
import { Storage } from "../../src/embedded/mongo/Storage.js"

const setup = () => {
  const storage = new Storage()
  const c = storage.ensureCollection("db", "c")
  const direct = new DirectAccess(storage)
  let scans = 0
  const access: Access = {
    get: (coll, key) => direct.get(coll, key),
    put: (coll, key, raw) => direct.put(coll, key, raw),
    scan: (coll) => {
      scans++
      return direct.scan(coll)
    }
  }
  for (let i = 0; i < 100; i++) insertOne(access, c, { _id: `d${i}`, n: i, _reconciler: { version: 1 } })
  return { c, access, scans: () => scans }
}

describe("the _id index", () => {
  it("finds by _id, $eq, $in and inside $and without a scan", () => {
    const { access, c, scans } = setup()
    expect(findVersions(access, c, { filter: { _id: "d7" } }).map((v) => v.raw.n)).toEqual([7])
    expect(findVersions(access, c, { filter: { _id: { $eq: "d8" } } }).map((v) => v.raw.n)).toEqual([8])
    expect(findVersions(access, c, { filter: { _id: { $in: ["d1", "d2", "nope", "d1"] } } }).map((v) => v.raw.n)).toEqual([1, 2])
    expect(findVersions(access, c, { filter: { $and: [{ n: { $gt: 0 } }, { _id: "d3" }] } }).map((v) => v.raw.n)).toEqual([3])
    expect(findVersions(access, c, { filter: { _id: "d4", n: 5 } })).toEqual([])
    expect(scans()).toBe(0)
    // Anything else scans (and so this test can tell).
    expect(findVersions(access, c, { filter: { n: 9 } }).length).toBe(1)
    expect(scans()).toBe(1)
  })

  it("updates, upserts and deletes by _id without a scan", () => {
    const { access, c, scans } = setup()
    const guarded = updateStatement(access, c, {
      q: { _id: "d5", "_reconciler.version": 1 },
      u: { _id: "d5", n: 50, _reconciler: { version: 2 } },
      upsert: false,
      multi: false,
      arrayFilters: undefined
    })
    expect(guarded).toEqual({ n: 1, nModified: 1, upserted: undefined })
    const upsert = updateStatement(access, c, {
      q: { _id: "new", "_reconciler.version": { $exists: false } },
      u: { n: 1, _reconciler: { version: 1 } },
      upsert: true,
      multi: false,
      arrayFilters: undefined
    })
    expect(upsert.upserted).toBe("new")
    expect(() =>
      updateStatement(access, c, {
        q: { _id: "d6", "_reconciler.version": { $exists: false } },
        u: { n: 1 },
        upsert: true,
        multi: false,
        arrayFilters: undefined
      })
    ).toThrow(/E11000 duplicate key error collection: db.c index: _id_/)
    expect(deleteStatement(access, c, { _id: { $in: ["d1", "d2"] } }, 0)).toBe(2)
    expect(scans()).toBe(0)
    expect(c.docs.size).toBe(99)
  })

  it("keys numbers of any width alike", () => {
    const { access, c } = setup()
    insertOne(access, c, { _id: 7, v: 1 })
    expect(() => insertOne(access, c, { _id: Long.fromNumber(7) })).toThrow(/duplicate key/)
    expect(findVersions(access, c, { filter: { _id: 7.0 } }).length).toBe(1)
  })
})
