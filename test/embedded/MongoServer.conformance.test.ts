/**
 * Conformance of the embedded MongoDB server, written against the official driver
 * only. Runs against the embedded server by default and against a real server
 * when `MONGODB_URI` is set (embedded-only checks are skipped then).
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, FastCheck as fc, Scope } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  Binary,
  Decimal128,
  Double,
  Int32,
  Long,
  MongoBulkWriteError,
  MongoClient,
  MongoServerError,
  ObjectId,
  UUID,
  type Collection,
  type Db,
  type Document
} from "mongodb"
import * as MongoServer from "../../src/embedded/MongoServer.js"

const realUri = process.env.MONGODB_URI
const embedded = realUri === undefined

let scope: Scope.CloseableScope
let client: MongoClient
let db: Db
const dbName = `conformance_${process.pid}_${Date.now()}`

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  const uri = realUri ?? (await Effect.runPromise(Scope.extend(MongoServer.make(), scope))).uri
  client = await new MongoClient(uri, { monitorCommands: true }).connect()
  db = client.db(dbName)
})

afterAll(async () => {
  await db?.dropDatabase().catch(() => undefined)
  await client?.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
})

/** Documents with any `_id` type (the driver's default typing assumes ObjectId). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyDoc = { _id: any; [key: string]: any }

const fresh = (() => {
  let n = 0
  return (prefix = "c") => db.collection<AnyDoc>(`${prefix}_${++n}`) as unknown as Collection<any>
})()

const serverError = async (p: Promise<unknown>): Promise<MongoServerError> => {
  try {
    await p
  } catch (e) {
    if (e instanceof MongoServerError) return e
    throw e
  }
  throw new Error("expected a server error")
}

describe("handshake", () => {
  it("presents a writable replica-set primary with sessions", async () => {
    const hello = await db.admin().command({ hello: 1 })
    expect(hello.isWritablePrimary).toBe(true)
    expect(typeof hello.setName).toBe("string")
    expect(hello.logicalSessionTimeoutMinutes).toBeGreaterThan(0)
    expect(hello.maxWireVersion).toBeGreaterThanOrEqual(9)
    expect(hello.compression).toBeUndefined()
    expect((await db.command({ ping: 1 })).ok).toBe(1)
    expect(typeof (await db.admin().command({ buildInfo: 1 })).version).toBe("string")
  })

  it("answers an unknown command with CommandNotFound at once", async () => {
    const e = await serverError(db.command({ noSuchCommandAtAll: 1 }))
    expect(e.code).toBe(59)
    expect(e.codeName).toBe("CommandNotFound")
  })
})

describe("values", () => {
  it("keeps any _id type as given and finds it by _id", async () => {
    const c = fresh()
    const ids: Array<unknown> = ["s", 42, 1.5, new ObjectId(), new UUID(), new Binary(Buffer.from([1, 2, 3]), 0), { a: 1, b: "x" }, new Date(0)]
    await c.insertMany(ids.map((_id, i) => ({ _id, i }) as Document))
    for (const [i, _id] of ids.entries()) {
      const found = await c.findOne({ _id } as Document)
      expect(found?.i).toBe(i)
      expect(found?._id).toEqual(_id)
    }
    const many = await c.find({ _id: { $in: [ids[0], ids[3], "missing"] } } as Document).toArray()
    expect(many.map((d) => d.i).sort()).toEqual([0, 3])
  })

  it("treats numeric _ids of any width as the same key", async () => {
    const c = fresh()
    await c.insertOne({ _id: 7 } as Document)
    const e = await serverError(c.insertOne({ _id: Long.fromNumber(7) } as Document))
    expect(e.code).toBe(11000)
    expect(await c.findOne({ _id: new Double(7) } as Document)).not.toBeNull()
  })

  it("preserves Long, Decimal128, Double, Int32 and Date", async () => {
    const c = fresh()
    const big = Long.fromString("9007199254740993")
    await c.insertOne({ _id: 1, l: big, d: Decimal128.fromString("12.345678901234567890"), f: new Double(2), i: new Int32(3), t: new Date(1234) })
    const doc = await c.findOne({ _id: 1 }, { promoteValues: false })
    expect(doc?.l).toBeInstanceOf(Long)
    expect((doc?.l as Long).toString()).toBe("9007199254740993")
    expect((doc?.d as Decimal128).toString()).toBe("12.345678901234567890")
    expect(doc?.f).toBeInstanceOf(Double)
    expect(doc?.i).toBeInstanceOf(Int32)
    expect(doc?.t).toEqual(new Date(1234))
    // An update elsewhere in the document keeps untouched values exact.
    await c.updateOne({ _id: 1 }, { $set: { other: 1 } })
    const after = await c.findOne({ _id: 1 }, { promoteValues: false })
    expect((after?.l as Long).toString()).toBe("9007199254740993")
    // Arithmetic on a Long keeps a Long.
    await c.updateOne({ _id: 1 }, { $set: { n: Long.fromNumber(5) } })
    await c.updateOne({ _id: 1 }, { $inc: { n: 2 } })
    const inc = await c.findOne({ _id: 1 }, { promoteValues: false })
    expect(inc?.n).toBeInstanceOf(Long)
    expect((inc?.n as Long).toNumber()).toBe(7)
    // Elements pushed into arrays keep their types too.
    await c.updateOne({ _id: 1 }, { $push: { arr: { $each: [Long.fromNumber(1), new Double(2), Decimal128.fromString("3.5")] } } } as Document)
    await c.updateOne({ _id: 1 }, { $addToSet: { arr: Long.fromNumber(9) } } as Document)
    const pushed = await c.findOne({ _id: 1 }, { promoteValues: false })
    expect((pushed?.arr as Array<unknown>).map((v) => (v as { _bsontype: string })._bsontype)).toEqual(["Long", "Double", "Decimal128", "Long"])
  })

  it("does integer arithmetic exactly: Long beyond 2^53, Int32 overflow to Long", async () => {
    const c = fresh()
    const big = Long.fromString("1152921504606846976") // 2^60
    await c.insertOne({ _id: 1, l: big, m: big, i: new Int32(2147483647), small: new Int32(1) })
    await c.updateOne({ _id: 1 }, {
      $inc: { l: Long.fromNumber(1), i: 1, small: 2, fresh: Long.fromNumber(3) },
      $max: { m: Long.fromString("1152921504606846977"), made: Long.fromString("9007199254740993") }
    } as Document)
    const doc = await c.findOne({ _id: 1 }, { promoteValues: false })
    expect((doc?.l as Long).toString()).toBe("1152921504606846977")
    expect((doc?.m as Long).toString()).toBe("1152921504606846977")
    expect(doc?.i).toBeInstanceOf(Long)
    expect((doc?.i as Long).toString()).toBe("2147483648")
    expect(doc?.small).toBeInstanceOf(Int32)
    expect((doc?.small as Int32).value).toBe(3)
    expect((doc?.fresh as Long).toString()).toBe("3")
    expect((doc?.made as Long).toString()).toBe("9007199254740993")
    await c.updateOne({ _id: 1 }, { $min: { m: big }, $max: { l: Long.fromNumber(5) } } as Document)
    const after = await c.findOne({ _id: 1 }, { promoteValues: false })
    expect((after?.m as Long).toString()).toBe("1152921504606846976")
    expect((after?.l as Long).toString()).toBe("1152921504606846977")
  })

  it("compares numbers across BSON types", async () => {
    const c = fresh()
    await c.insertMany([
      { _id: 1, v: Long.fromNumber(5) },
      { _id: 2, v: new Int32(4) },
      { _id: 3, v: 3.5 },
      { _id: 4, v: Decimal128.fromString("7") },
      { _id: 5, v: 2 },
      { _id: 6, v: "9" }
    ])
    const found = await c.find({ v: { $gt: 3 } }).toArray()
    expect(found.map((d) => d._id).sort()).toEqual([1, 2, 3, 4])
    expect(await c.countDocuments({ v: Long.fromNumber(4) })).toBe(1)
  })

  it("supports the query operators", async () => {
    const c = fresh()
    await c.insertMany([
      { _id: 1, tags: ["a", "b"], items: [{ k: 1, v: 10 }, { k: 2, v: 20 }], s: "abc", nested: { x: 1 } },
      { _id: 2, tags: ["c"], items: [{ k: 1, v: 30 }], s: "xyz", nested: { x: 2 }, opt: null },
      { _id: 3, tags: [], items: [], s: 5, nested: {} }
    ])
    const ids = async (filter: Document) => (await c.find(filter).sort({ _id: 1 }).toArray()).map((d) => d._id)
    expect(await ids({ tags: "a" })).toEqual([1])
    expect(await ids({ tags: { $all: ["a", "b"] } })).toEqual([1])
    expect(await ids({ tags: { $size: 0 } })).toEqual([3])
    expect(await ids({ items: { $elemMatch: { k: 1, v: { $gt: 15 } } } })).toEqual([2])
    expect(await ids({ "items.v": 20 })).toEqual([1])
    expect(await ids({ "nested.x": { $in: [2, 3] } })).toEqual([2])
    expect(await ids({ opt: { $exists: true } })).toEqual([2])
    expect(await ids({ opt: null })).toEqual([1, 2, 3])
    expect(await ids({ s: { $type: "string" } })).toEqual([1, 2])
    expect(await ids({ $or: [{ s: 5 }, { "nested.x": 1 }] })).toEqual([1, 3])
    expect(await ids({ $nor: [{ s: 5 }, { "nested.x": 1 }] })).toEqual([2])
    expect(await ids({ s: { $not: { $regex: "^a" } } })).toEqual([2, 3])
    expect(await ids({ _id: { $gte: 2 } })).toEqual([2, 3])
    expect(await ids({ $expr: { $gt: [{ $size: "$tags" }, 1] } })).toEqual([1])
  })

  it("sorts across types in BSON order", async () => {
    const c = fresh()
    const oid = new ObjectId()
    await c.insertMany([
      { _id: 1, v: true },
      { _id: 2, v: "b" },
      { _id: 3, v: 10 },
      { _id: 4, v: null },
      { _id: 5, v: new Date(0) },
      { _id: 6, v: oid },
      { _id: 7, v: { a: 1 } },
      { _id: 8, v: "a" },
      { _id: 9, v: -1.5 },
      { _id: 10, v: new Binary(Buffer.from([1])) }
    ])
    const asc = await c.find({}).sort({ v: 1 }).toArray()
    expect(asc.map((d) => d._id)).toEqual([4, 9, 3, 8, 2, 7, 10, 6, 1, 5])
    const desc = await c.find({}).sort({ v: -1, _id: 1 }).toArray()
    expect(desc.map((d) => d._id)).toEqual([5, 1, 6, 10, 7, 2, 8, 3, 9, 4])
  })
})

describe("find and cursors", () => {
  it("filters, projects, skips, limits and batches with getMore", async () => {
    const c = fresh()
    await c.insertMany(Array.from({ length: 250 }, (_, i) => ({ _id: i, n: i, even: i % 2 === 0, tag: `t${i % 5}` })))
    const all = await c.find({}, { batchSize: 7 }).toArray()
    expect(all.length).toBe(250)
    const page = await c.find({ even: true }).sort({ n: -1 }).skip(10).limit(5).project({ n: 1, _id: 0 }).toArray()
    expect(page).toEqual([{ n: 228 }, { n: 226 }, { n: 224 }, { n: 222 }, { n: 220 }])
    const regex = await c.countDocuments({ tag: { $regex: "^t[12]$" } })
    expect(regex).toBe(100)
    const cursor = c.find({}, { batchSize: 3 })
    expect((await cursor.next())?._id).toBe(0)
    await cursor.close()
    // A cursor belongs to its session: open, kill and probe it in one explicit session.
    const session = client.startSession()
    try {
      const opened = await db.command({ find: c.collectionName, batchSize: 2 }, { session })
      const id = opened.cursor.id
      const result = await db.command({ killCursors: c.collectionName, cursors: [id] }, { session })
      expect(result.cursorsKilled.length).toBe(1)
      const e = await serverError(db.command({ getMore: id, collection: c.collectionName }, { session }))
      expect(e.code).toBe(43)
    } finally {
      await session.endSession()
    }
  })

  it("moves large documents and large results in several messages", async () => {
    const c = fresh()
    const big = "x".repeat(1024 * 1024)
    await c.insertMany(Array.from({ length: 40 }, (_, i) => ({ _id: i, big })))
    const all = await c.find({}).toArray()
    expect(all.length).toBe(40)
    expect(all.every((d) => d.big === big)).toBe(true)
  })

  it("counts, distinct and aggregates", async () => {
    const c = fresh()
    await c.insertMany(Array.from({ length: 30 }, (_, i) => ({ _id: i, g: i % 3, v: i })))
    expect(await c.countDocuments()).toBe(30)
    expect(await c.countDocuments({ g: 1 })).toBe(10)
    expect(await c.countDocuments({ g: 1 }, { skip: 2, limit: 5 })).toBe(5)
    expect(await c.estimatedDocumentCount()).toBe(30)
    expect((await c.distinct("g")).sort()).toEqual([0, 1, 2])
    const mixed = fresh()
    await mixed.insertMany([{ _id: 1, v: "a" }, { _id: 2, v: 5 }, { _id: 3, v: null }, { _id: 4, v: true }])
    expect((await mixed.aggregate([{ $sort: { v: 1 } }]).toArray()).map((d) => d._id)).toEqual([3, 2, 1, 4])
    const groups = await c.aggregate([{ $match: { v: { $gte: 3 } } }, { $group: { _id: "$g", total: { $sum: "$v" } } }, { $sort: { _id: 1 } }]).toArray()
    expect(groups).toEqual([
      { _id: 0, total: 3 + 6 + 9 + 12 + 15 + 18 + 21 + 24 + 27 },
      { _id: 1, total: 4 + 7 + 10 + 13 + 16 + 19 + 22 + 25 + 28 },
      { _id: 2, total: 5 + 8 + 11 + 14 + 17 + 20 + 23 + 26 + 29 }
    ])
  })
})

describe("writes", () => {
  it("updates with operators, array filters, multi, replacement and upserts", async () => {
    const c = fresh()
    await c.insertOne({ _id: "a", n: 1, items: [{ k: 1, v: 1 }, { k: 2, v: 2 }], tags: ["x"] })
    await c.updateOne({ _id: "a" }, { $inc: { n: 2 }, $push: { tags: "y" } as Document, $set: { "items.$[e].v": 20 } }, { arrayFilters: [{ "e.k": 2 }] })
    expect(await c.findOne({ _id: "a" })).toEqual({ _id: "a", n: 3, items: [{ k: 1, v: 1 }, { k: 2, v: 20 }], tags: ["x", "y"] })
    await c.updateOne({ _id: "a", "items.k": 1 }, { $set: { "items.$.v": 10 }, $unset: { tags: "" } })
    expect(await c.findOne({ _id: "a" })).toEqual({ _id: "a", n: 3, items: [{ k: 1, v: 10 }, { k: 2, v: 20 }] })
    const up = await c.updateOne({ _id: "b" }, { $set: { n: 1 }, $setOnInsert: { created: true } }, { upsert: true })
    expect(up.upsertedId).toBe("b")
    await c.updateOne({ _id: "b" }, { $set: { n: 2 }, $setOnInsert: { created: false } }, { upsert: true })
    expect(await c.findOne({ _id: "b" })).toEqual({ _id: "b", n: 2, created: true })
    const seeded = await c.updateOne({ kind: "seed", level: { $gt: 1 } }, { $set: { v: 1 } }, { upsert: true })
    const seed = await c.findOne({ _id: seeded.upsertedId! })
    expect(seed).toMatchObject({ kind: "seed", v: 1 })
    expect(seed?.level).toBeUndefined()
    const many = await c.updateMany({ n: { $gte: 1 } }, { $mul: { n: 10 } })
    expect(many.matchedCount).toBe(2)
    expect(many.modifiedCount).toBe(2)
    const same = await c.updateOne({ _id: "b" }, { $set: { n: 20 } })
    expect(same.matchedCount).toBe(1)
    expect(same.modifiedCount).toBe(0)
    await c.replaceOne({ _id: "b" }, { only: true })
    expect(await c.findOne({ _id: "b" })).toEqual({ _id: "b", only: true })
    const e = await serverError(c.updateOne({ _id: "b" }, { $set: { _id: "z" } }))
    expect(e.code).toBe(66)
    const pipeline = await c.updateOne({ _id: "a" }, [{ $set: { m: { $add: ["$n", 1] } } }])
    expect(pipeline.modifiedCount).toBe(1)
    expect((await c.findOne({ _id: "a" }))?.m).toBe(31)
  })

  it("supports the other update operators", async () => {
    const c = fresh()
    await c.insertOne({ _id: 1, a: [1, 2, 3, 2], b: 5, c: 5, old: "x", items: [{ v: 1 }, { v: 2 }], set: ["p"] })
    await c.updateOne({ _id: 1 }, {
      $pull: { a: 2 },
      $min: { b: 3 },
      $max: { c: 9 },
      $rename: { old: "renamed" },
      $set: { "items.$[].seen": true },
      $addToSet: { set: { $each: ["p", "q"] } },
      $currentDate: { touched: true }
    } as Document)
    const doc = await c.findOne({ _id: 1 })
    expect(doc).toMatchObject({ a: [1, 3], b: 3, c: 9, renamed: "x", items: [{ v: 1, seen: true }, { v: 2, seen: true }], set: ["p", "q"] })
    expect(doc?.old).toBeUndefined()
    expect(doc?.touched).toBeInstanceOf(Date)
    await c.updateOne({ _id: 1 }, { $push: { a: { $each: [0, 9], $sort: 1 } }, $pop: { set: 1 } } as Document)
    expect(await c.findOne({ _id: 1 }, { projection: { a: 1, set: 1 } })).toEqual({ _id: 1, a: [0, 1, 3, 9], set: ["p"] })
    const e = await serverError(c.updateOne({ _id: 1 }, { $frobnicate: { a: 1 } } as Document))
    expect(e.code).toBe(9)
  })

  it("raises 11000 when a guarded upsert misses an existing _id", async () => {
    const c = fresh()
    await c.insertOne({ _id: "x", version: 2 } as Document)
    const e = await serverError(c.replaceOne({ _id: "x", version: 1 } as Document, { version: 2 }, { upsert: true }))
    expect(e.code).toBe(11000)
  })

  it("answers a retried write (same session and txnNumber) without running it again", async () => {
    const c = fresh()
    await c.insertOne({ _id: 1, n: 0 })
    const session = client.startSession()
    try {
      const command = { update: c.collectionName, updates: [{ q: { _id: 1 }, u: { $inc: { n: 1 } } }], txnNumber: Long.fromNumber(7) }
      const first = await db.command(command, { session })
      const again = await db.command(command, { session })
      expect(first.nModified).toBe(1)
      expect(again.nModified).toBe(1)
    } finally {
      await session.endSession()
    }
    expect((await c.findOne({ _id: 1 }))?.n).toBe(1)
  })

  it("deletes one or many", async () => {
    const c = fresh()
    await c.insertMany([{ _id: 1, g: 1 }, { _id: 2, g: 1 }, { _id: 3, g: 2 }])
    expect((await c.deleteOne({ g: 1 })).deletedCount).toBe(1)
    expect((await c.deleteMany({ g: { $in: [1, 2] } })).deletedCount).toBe(2)
    expect(await c.countDocuments()).toBe(0)
  })

  it("finds and modifies", async () => {
    const c = fresh()
    await c.insertOne({ _id: 1, n: 1 })
    expect(await c.findOneAndUpdate({ _id: 1 }, { $inc: { n: 1 } }, { returnDocument: "after" })).toEqual({ _id: 1, n: 2 })
    expect(await c.findOneAndUpdate({ _id: 1 }, { $inc: { n: 1 } }, { returnDocument: "before" })).toEqual({ _id: 1, n: 2 })
    expect(await c.findOneAndUpdate({ _id: 2 }, { $set: { n: 9 } }, { upsert: true, returnDocument: "after" })).toEqual({ _id: 2, n: 9 })
    expect(await c.findOneAndReplace({ _id: 2 }, { r: 1 }, { returnDocument: "after" })).toEqual({ _id: 2, r: 1 })
    expect(await c.findOneAndDelete({ _id: 1 })).toEqual({ _id: 1, n: 3 })
    expect(await c.findOneAndDelete({ _id: 1 })).toBeNull()
  })

  it("bulk writes: unordered continues past errors, ordered stops", async () => {
    const c = fresh()
    await c.insertOne({ _id: 1 })
    const ops = [
      { insertOne: { document: { _id: 1 } } },
      { insertOne: { document: { _id: 2 } } },
      { updateOne: { filter: { _id: 3 }, update: { $set: { a: 1 } }, upsert: true } },
      { deleteOne: { filter: { _id: 2 } } }
    ]
    const unordered = await c.bulkWrite(ops, { ordered: false }).catch((e: unknown) => e)
    expect(unordered).toBeInstanceOf(MongoBulkWriteError)
    const u = unordered as MongoBulkWriteError
    expect(u.insertedCount).toBe(1)
    expect(u.upsertedCount).toBe(1)
    expect(u.deletedCount).toBe(1)
    expect((Array.isArray(u.writeErrors) ? u.writeErrors : [u.writeErrors]).map((w) => [w.index, w.code])).toEqual([[0, 11000]])
    const d = fresh()
    await d.insertOne({ _id: 1 })
    const ordered = (await d.bulkWrite(ops, { ordered: true }).catch((e: unknown) => e)) as MongoBulkWriteError
    expect(ordered).toBeInstanceOf(MongoBulkWriteError)
    expect(await d.countDocuments()).toBe(1)
  })
})

describe("against a model", () => {
  // Random inserts, guarded replacements, upserts, increments and deletes over ids of mixed BSON types,
  // mirrored in a Map keyed by a canonical form of the id; after each step the collection equals the model.
  const idArbitrary = fc.oneof(
    fc.integer({ min: 0, max: 5 }),
    fc.constantFrom("a", "b", "c"),
    fc.constantFrom(...[0, 1, 2].map((i) => new ObjectId(i.toString(16).padStart(24, "0")))),
    fc.constantFrom({ k: 1 }, { k: 2 })
  )
  const opArbitrary = fc.oneof(
    fc.record({ op: fc.constant("insert" as const), id: idArbitrary, v: fc.integer({ min: 0, max: 9 }) }),
    fc.record({ op: fc.constant("replace" as const), id: idArbitrary, version: fc.integer({ min: 0, max: 3 }) }),
    fc.record({ op: fc.constant("inc" as const), id: idArbitrary, upsert: fc.boolean() }),
    fc.record({ op: fc.constant("delete" as const), id: idArbitrary })
  )
  const canonical = (id: unknown) => (id instanceof ObjectId ? `o${id.toHexString()}` : JSON.stringify(id))

  it.effect.prop("a random history of writes leaves exactly the model's documents", [fc.array(opArbitrary, { maxLength: 25 })], ([ops]) => Effect.promise(async () => {
    const c = fresh("model")
    const model = new Map<string, Document>()
    for (const step of ops) {
      const key = canonical(step.id)
      const current = model.get(key)
      switch (step.op) {
        case "insert": {
          const result = await c.insertOne({ _id: step.id, v: step.v, version: 1 }).then(() => "ok", (e: MongoServerError) => e.code)
          expect(result).toBe(current === undefined ? "ok" : 11000)
          if (current === undefined) model.set(key, { _id: step.id, v: step.v, version: 1 })
          break
        }
        case "replace": {
          // The store's guard: version 0 must not exist (upsert), n must match.
          const filter = step.version === 0 ? { _id: step.id, version: { $exists: false } } : { _id: step.id, version: step.version }
          const next = { v: -1, version: step.version + 1 }
          const result = await c.replaceOne(filter, next, { upsert: step.version === 0 }).then((r) => r.matchedCount + r.upsertedCount, (e: MongoServerError) => e.code)
          if (step.version === 0) {
            // Matches a missing document (upsert) or one without a version (replaced); else the upsert collides.
            const applies = current === undefined || current.version === undefined
            expect(result).toBe(applies ? 1 : 11000)
            if (applies) model.set(key, { _id: step.id, ...next })
          } else {
            const matches = current !== undefined && current.version === step.version
            expect(result).toBe(matches ? 1 : 0)
            if (matches) model.set(key, { _id: step.id, ...next })
          }
          break
        }
        case "inc": {
          await c.updateOne({ _id: step.id }, { $inc: { v: 1 } }, { upsert: step.upsert })
          if (current !== undefined) model.set(key, { ...current, v: (current.v ?? 0) + 1 })
          else if (step.upsert) model.set(key, { _id: step.id, v: 1 })
          break
        }
        case "delete": {
          const result = await c.deleteOne({ _id: step.id })
          expect(result.deletedCount).toBe(current === undefined ? 0 : 1)
          model.delete(key)
          break
        }
      }
    }
    const actual = await c.find({}).toArray()
    const byKey = new Map(actual.map((d) => [canonical(d._id), d]))
    expect(byKey.size).toBe(actual.length)
    expect(new Set(byKey.keys())).toEqual(new Set(model.keys()))
    for (const [key, doc] of model) expect(byKey.get(key)).toEqual(doc)
    for (const [key, doc] of model) expect(await c.findOne({ _id: doc._id })).toEqual(byKey.get(key))
    await c.drop()
  }), { fastCheck: { numRuns: 40 } })
})

describe("indexes", () => {
  it("enforces unique indexes with keyPattern and keyValue", async () => {
    const c = fresh()
    expect(await c.createIndex({ email: 1 }, { unique: true })).toBe("email_1")
    await c.insertOne({ _id: 1, email: "a@x" })
    const e = await serverError(c.insertOne({ _id: 2, email: "a@x" }))
    expect(e.code).toBe(11000)
    expect(e.keyPattern).toEqual({ email: 1 })
    expect(e.keyValue).toEqual({ email: "a@x" })
    const u = await serverError(c.updateOne({ _id: 3 }, { $set: { email: "a@x" } }, { upsert: true }))
    expect(u.code).toBe(11000)
    // Freeing the value makes it available again.
    await c.updateOne({ _id: 1 }, { $set: { email: "b@x" } })
    await c.insertOne({ _id: 2, email: "a@x" })
    const names = (await c.listIndexes().toArray()).map((i) => [i.name, i.unique === true])
    expect(names).toEqual([["_id_", false], ["email_1", true]])
    await c.dropIndex("email_1")
    await c.insertOne({ _id: 4, email: "a@x" })
    const e2 = await serverError(c.createIndex({ email: 1 }, { unique: true }))
    expect(e2.code).toBe(11000)
  })

  it("enforces compound unique indexes and lets sparse ones skip missing fields", async () => {
    const c = fresh()
    await c.createIndex({ a: 1, b: 1 }, { unique: true })
    await c.createIndex({ s: 1 }, { unique: true, sparse: true })
    await c.insertMany([{ _id: 1, a: 1, b: 1 }, { _id: 2, a: 1, b: 2 }, { _id: 3, a: 2, b: 1 }])
    const e = await serverError(c.insertOne({ _id: 4, a: 1, b: 2 }))
    expect(e.keyPattern).toEqual({ a: 1, b: 1 })
    expect(e.keyValue).toEqual({ a: 1, b: 2 })
  })
})

describe("collections and databases", () => {
  it("creates, lists and drops", async () => {
    const name = `made_${Date.now()}`
    await db.createCollection(name)
    const e = await serverError(db.createCollection(name))
    expect(e.code).toBe(48)
    expect((await db.listCollections({ name }).toArray()).map((c) => c.name)).toEqual([name])
    await db.collection(name).insertOne({ _id: 1 } as Document)
    await db.collection(name).createIndex({ u: 1 }, { unique: true })
    await db.renameCollection(name, `${name}_renamed`)
    expect(await db.collection(`${name}_renamed`).countDocuments()).toBe(1)
    expect((await db.collection(`${name}_renamed`).listIndexes().toArray()).map((i) => i.name)).toEqual(["_id_", "u_1"])
    await db.renameCollection(`${name}_renamed`, name)
    expect(await db.collection(name).drop()).toBe(true)
    expect(await db.listCollections({ name }).toArray()).toEqual([])
    const other = client.db(`${dbName}_x`)
    await other.collection("c").insertOne({ _id: 1 } as Document)
    const dbs = (await client.db("admin").admin().listDatabases()).databases.map((d) => d.name)
    expect(dbs).toContain(`${dbName}_x`)
    await other.dropDatabase()
    const after = (await client.db("admin").admin().listDatabases()).databases.map((d) => d.name)
    expect(after).not.toContain(`${dbName}_x`)
  })
})

describe("transactions", () => {
  it("commits atomically and isolates until commit", async () => {
    const c = fresh("txn")
    await c.insertOne({ _id: 0, n: 0 })
    const session = client.startSession()
    try {
      session.startTransaction()
      await c.insertOne({ _id: 1 }, { session })
      await c.updateOne({ _id: 0 }, { $inc: { n: 1 } }, { session })
      expect(await c.countDocuments({}, { session })).toBe(2)
      expect(await c.countDocuments({})).toBe(1)
      expect((await c.findOne({ _id: 0 }))?.n).toBe(0)
      await session.commitTransaction()
    } finally {
      await session.endSession()
    }
    expect(await c.countDocuments({})).toBe(2)
    expect((await c.findOne({ _id: 0 }))?.n).toBe(1)
  })

  it("rolls back inserts, updates and deletes on abort", async () => {
    const c = fresh("txn")
    await c.insertMany([{ _id: 1, n: 1 }, { _id: 2, n: 2 }])
    const session = client.startSession()
    try {
      session.startTransaction()
      await c.insertOne({ _id: 3 }, { session })
      await c.updateOne({ _id: 1 }, { $set: { n: 100 } }, { session })
      await c.deleteOne({ _id: 2 }, { session })
      await session.abortTransaction()
    } finally {
      await session.endSession()
    }
    expect(await c.find({}).sort({ _id: 1 }).toArray()).toEqual([{ _id: 1, n: 1 }, { _id: 2, n: 2 }])
  })

  it("reads a snapshot: commits made after the transaction started are not visible", async () => {
    const c = fresh("txn")
    await c.insertMany([{ _id: 1, n: 1 }, { _id: 2, n: 2 }])
    const session = client.startSession()
    try {
      session.startTransaction({ readConcern: { level: "snapshot" } })
      expect((await c.findOne({ _id: 1 }, { session }))?.n).toBe(1)
      await c.updateOne({ _id: 2 }, { $set: { n: 20 } })
      await c.deleteOne({ _id: 1 })
      await c.insertOne({ _id: 3 })
      expect((await c.findOne({ _id: 2 }, { session }))?.n).toBe(2)
      expect((await c.find({}, { session }).sort({ _id: 1 }).toArray()).map((d) => d._id)).toEqual([1, 2])
      await session.commitTransaction()
    } finally {
      await session.endSession()
    }
    expect((await c.find({}).sort({ _id: 1 }).toArray()).map((d) => d._id)).toEqual([2, 3])
  })

  it("reports write conflicts as 112 with TransientTransactionError", async () => {
    const c = fresh("txn")
    await c.insertOne({ _id: 1, n: 0 })
    const s1 = client.startSession()
    const s2 = client.startSession()
    try {
      s1.startTransaction()
      s2.startTransaction()
      await c.updateOne({ _id: 1 }, { $inc: { n: 1 } }, { session: s1 })
      const e = await serverError(c.updateOne({ _id: 1 }, { $inc: { n: 10 } }, { session: s2 }))
      expect(e.code).toBe(112)
      expect(e.hasErrorLabel("TransientTransactionError")).toBe(true)
      await s2.abortTransaction().catch(() => undefined)
      await s1.commitTransaction()
    } finally {
      await s1.endSession()
      await s2.endSession()
    }
    expect((await c.findOne({ _id: 1 }))?.n).toBe(1)
  })

  it("conflicts with a commit made after the snapshot, and withTransaction retries", async () => {
    const c = fresh("txn")
    await c.insertOne({ _id: 1, n: 0 })
    const session = client.startSession()
    let attempts = 0
    try {
      await session.withTransaction(async () => {
        attempts++
        await c.findOne({ _id: 1 }, { session })
        if (attempts === 1) await c.updateOne({ _id: 1 }, { $inc: { n: 100 } })
        await c.updateOne({ _id: 1 }, { $inc: { n: 1 } }, { session })
      })
    } finally {
      await session.endSession()
    }
    expect(attempts).toBe(2)
    expect((await c.findOne({ _id: 1 }))?.n).toBe(101)
  })

  it("a write outside a transaction waits for the transaction holding its document", async () => {
    const c = fresh("txn")
    await c.insertOne({ _id: 1, n: 0 })
    const session = client.startSession()
    try {
      session.startTransaction()
      await c.updateOne({ _id: 1 }, { $inc: { n: 1 } }, { session })
      const sent = new Promise<void>((resolve) =>
        client.once("commandStarted", (e) => (e.commandName === "update" ? resolve() : undefined))
      )
      const outside = c.updateOne({ _id: 1 }, { $inc: { n: 10 } })
      await sent
      await db.command({ ping: 1 })
      await session.commitTransaction()
      expect((await outside).modifiedCount).toBe(1)
    } finally {
      await session.endSession()
    }
    expect((await c.findOne({ _id: 1 }))?.n).toBe(11)
  })

  it("concurrent transfers keep the total, and every snapshot sees it", async () => {
    const c = fresh("bank")
    const accounts = 5
    await c.insertMany(Array.from({ length: accounts }, (_, i) => ({ _id: i, balance: 100 })))
    const committed: Array<{ from: number; to: number; amount: number }> = []
    let seed = 7
    const random = (n: number) => (seed = (seed * 48271) % 0x7fffffff) % n
    const transfer = async (worker: number) => {
      const session = client.startSession()
      try {
        for (let k = 0; k < 8; k++) {
          const from = random(accounts)
          const to = (from + 1 + random(accounts - 1)) % accounts
          const amount = 1 + random(10)
          await session.withTransaction(async () => {
            await c.updateOne({ _id: from }, { $inc: { balance: -amount } }, { session })
            await c.updateOne({ _id: to }, { $inc: { balance: amount } }, { session })
          })
          committed.push({ from, to, amount })
          void worker
        }
      } finally {
        await session.endSession()
      }
    }
    const audits: Array<number> = []
    const audit = async () => {
      const session = client.startSession()
      try {
        for (let k = 0; k < 8; k++) {
          await session.withTransaction(async () => {
            // One read per account: commits land between them, the snapshot must not show them.
            let sum = 0
            for (let i = 0; i < accounts; i++) sum += (await c.findOne({ _id: i }, { session }))!.balance
            audits.push(sum)
          }, { readConcern: { level: "snapshot" } })
        }
      } finally {
        await session.endSession()
      }
    }
    await Promise.all([transfer(1), transfer(2), transfer(3), audit(), audit()])
    expect(new Set(audits)).toEqual(new Set([accounts * 100]))
    const expected = Array.from({ length: accounts }, () => 100)
    for (const t of committed) {
      expected[t.from]! -= t.amount
      expected[t.to]! += t.amount
    }
    const final = await c.find({}).sort({ _id: 1 }).toArray()
    expect(final.map((d) => d.balance)).toEqual(expected)
    expect(committed.length).toBe(24)
  })

  it("a duplicate key inside a transaction aborts it", async () => {
    const c = fresh("txn")
    await c.insertOne({ _id: 1 })
    const session = client.startSession()
    try {
      session.startTransaction()
      await c.insertOne({ _id: 2 }, { session })
      const e = await serverError(c.insertOne({ _id: 1 }, { session }))
      expect(e.code).toBe(11000)
      const commit = await serverError(session.commitTransaction())
      expect(commit.code).toBe(251)
    } finally {
      await session.endSession()
    }
    expect(await c.countDocuments({ _id: 2 })).toBe(0)
  })
})

describe.skipIf(!embedded)("embedded server only", () => {
  it("keeps data and indexes in a data directory across restarts", async () => {
    const dir = mkdtempSync(join(tmpdir(), "embedded-mongo-"))
    try {
      const session = (f: (db: Db) => Promise<void>) =>
        Effect.runPromise(
          Effect.scoped(
            Effect.gen(function*() {
              const { uri } = yield* MongoServer.make({ dataDir: dir })
              yield* Effect.promise(async () => {
                const c = await new MongoClient(uri).connect()
                try {
                  await f(c.db("durable"))
                } finally {
                  await c.close()
                }
              })
            })
          )
        )
      await session(async (d) => {
        await d.collection("c").createIndex({ u: 1 }, { unique: true })
        await d.collection("c").insertMany([{ _id: 1, u: "a", l: Long.fromString("9007199254740993") }, { _id: 2, u: "b" }] as Array<Document>)
        await d.collection("c").deleteOne({ _id: 2 } as Document)
        await d.collection("c").updateOne({ _id: 1 } as Document, { $set: { v: 1 } })
        await d.collection("gone").insertOne({ _id: 1 } as Document)
        await d.collection("gone").drop()
      })
      await session(async (d) => {
        const docs = await d.collection("c").find({}, { promoteLongs: false }).toArray()
        expect(docs.length).toBe(1)
        expect(docs[0]!.v).toBe(1)
        expect((docs[0]!.l as Long).toString()).toBe("9007199254740993")
        const e = await serverError(d.collection("c").insertOne({ _id: 3, u: "a" } as Document))
        expect(e.code).toBe(11000)
        expect((await d.listCollections().toArray()).map((c) => c.name)).toEqual(["c"])
      })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it("runs standalone from the command line (reconciler embedded) until SIGTERM", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "src/bin/reconciler.ts", "embedded", "--eventstore-port", "0", "--mongo-port", "0"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
    try {
      const uri = await new Promise<string>((resolve, reject) => {
        let out = ""
        child.stdout.on("data", (chunk: Buffer) => {
          out += chunk.toString()
          const match = /listening on (mongodb:\/\/\S+)/.exec(out)
          if (match) resolve(match[1]!)
        })
        child.once("exit", (code) => reject(new Error(`exited with ${code} before listening: ${out}`)))
      })
      const c = await new MongoClient(uri).connect()
      try {
        expect((await c.db("x").command({ ping: 1 })).ok).toBe(1)
      } finally {
        await c.close()
      }
    } finally {
      child.kill("SIGTERM")
    }
    expect(await exited).toBe(0)
  }, 180_000) // a loaded machine takes many seconds to start a tsx process

  it("fails with a typed error when its port is taken", async () => {
    const exit = await Effect.runPromiseExit(
      Effect.scoped(
        Effect.gen(function*() {
          const first = yield* MongoServer.make()
          return yield* MongoServer.make({ port: first.port })
        })
      )
    )
    expect(Exit.isFailure(exit) && exit.cause._tag === "Fail" && exit.cause.error._tag).toBe("MongoServerError")
  })

  it("refuses views and collations with CommandNotSupported instead of approximating them", async () => {
    const base = fresh()
    await base.insertOne({ _id: 1, s: "B" })
    const view = await serverError(db.createCollection(`view_${Date.now()}`, { viewOn: base.collectionName, pipeline: [] }))
    expect(view.code).toBe(115)
    expect((await db.listCollections({ name: { $regex: "^view_" } }).toArray()).length).toBe(0)
    const collation = { locale: "en", strength: 2 }
    for (const attempt of [
      () => base.find({ s: "b" }, { collation }).toArray(),
      () => base.updateOne({ s: "b" }, { $set: { t: 1 } }, { collation }),
      () => base.deleteMany({ s: "b" }, { collation }),
      () => base.countDocuments({ s: "b" }, { collation }),
      () => base.createIndex({ s: 1 }, { collation }),
      () => db.createCollection(`coll_${Date.now()}`, { collation })
    ]) {
      expect((await serverError(attempt())).code).toBe(115)
    }
    expect(await base.findOne({ _id: 1 })).toEqual({ _id: 1, s: "B" })
    // the simple collation is no collation: accepted
    expect(await base.find({ s: "B" }, { collation: { locale: "simple" } }).toArray()).toHaveLength(1)
    expect(await base.findOne({ _id: 1 })).toEqual({ _id: 1, s: "B" })
  })

  it("refuses change streams at once with an error", async () => {
    const e = await serverError(db.command({ aggregate: "c_1", pipeline: [{ $changeStream: {} }], cursor: {} }))
    expect(e.code).toBe(115)
  })
})
