/**
 * Exact comparison of wide numbers, through the driver: `$max`, `$min`, sort,
 * `$gt` and `$lt` on Long and Decimal128 values near ±2^53 (where doubles stop
 * holding every integer) and near ±2^63 (Long's edge), checked against BigInt
 * arithmetic. Runs against the embedded server, or a real one with MONGODB_URI.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Exit, FastCheck as fc, Scope } from "effect"
import { type Collection, Decimal128, type Document, Long, MongoClient } from "mongodb"
import * as MongoServer from "../../src/embedded/MongoServer.js"

let scope: Scope.CloseableScope
let client: MongoClient
const dbName = `numbers_${process.pid}_${Date.now()}`

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  const uri = process.env.MONGODB_URI ?? (await Effect.runPromise(Scope.extend(MongoServer.make(), scope))).uri
  client = await new MongoClient(uri).connect()
})

afterAll(async () => {
  await client?.db(dbName).dropDatabase().catch(() => undefined)
  await client?.close()
  await Effect.runPromise(Scope.close(scope, Exit.void))
})

let n = 0
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const fresh = (): Collection<any> => client.db(dbName).collection(`c${++n}`)

const LONG_MIN = -(2n ** 63n)
const LONG_MAX = 2n ** 63n - 1n

/** Integers within a few of ±2^53 and ±2^63 (and 0), where doubles round. */
const wide = fc.oneof(
  ...[0n, 2n ** 53n, -(2n ** 53n), 2n ** 63n, -(2n ** 63n)].map((centre) =>
    fc.bigInt({ min: centre - 5n, max: centre + 5n })
  )
)

/** A number as MongoDB keeps it: a Long where it fits, else (or by choice) a Decimal128. */
const value = wide.chain((v) =>
  (v >= LONG_MIN && v <= LONG_MAX ? fc.constantFrom<"long" | "decimal">("long", "decimal") : fc.constant("decimal" as const)).map(
    (kind) => ({ v, bson: kind === "long" ? Long.fromBigInt(v) : Decimal128.fromString(v.toString()) })
  )
)

/** The exact integer behind a Long or an integral Decimal128 read back from the server. */
const exact = (x: unknown): bigint => {
  if (x instanceof Long) return x.toBigInt()
  if (x instanceof Decimal128) return BigInt(x.toString().replace(/E\+?0$/, ""))
  if (typeof x === "number") return BigInt(x)
  throw new Error(`not a number: ${String(x)}`)
}

const read = { promoteLongs: false } as const

describe("wide numbers compare exactly", () => {
  it.effect.prop("$max and $min keep the larger / smaller value exactly", [value, value], ([a, b]) =>
    Effect.promise(async () => {
      const c = fresh()
      await c.insertMany([{ _id: 1, x: a.bson }, { _id: 2, x: a.bson }])
      await c.updateOne({ _id: 1 }, { $max: { x: b.bson } })
      await c.updateOne({ _id: 2 }, { $min: { x: b.bson } })
      const [hi, lo] = await c.find({}, read).sort({ _id: 1 }).toArray()
      expect(exact(hi!.x)).toBe(a.v > b.v ? a.v : b.v)
      expect(exact(lo!.x)).toBe(a.v < b.v ? a.v : b.v)
    }), { fastCheck: { numRuns: 50 } })

  it.effect.prop("sorts and filters with $gt / $lt / $gte / $lte / $eq exactly", [fc.array(value, { minLength: 1, maxLength: 8 }), value], ([values, pivot]) =>
    Effect.promise(async () => {
      const c = fresh()
      await c.insertMany(values.map((x, i) => ({ _id: i, x: x.bson })))
      const sorted = await c.find({}, read).sort({ x: 1, _id: 1 }).toArray()
      const expected = values.map((x, i) => ({ i, v: x.v })).sort((p, q) => (p.v < q.v ? -1 : p.v > q.v ? 1 : p.i - q.i))
      expect(sorted.map((d) => d._id)).toEqual(expected.map((e) => e.i))
      const ids = async (filter: Document) => (await c.find(filter).sort({ _id: 1 }).toArray()).map((d) => d._id)
      const where = (f: (v: bigint) => boolean) => values.flatMap((x, i) => (f(x.v) ? [i] : []))
      expect(await ids({ x: { $gt: pivot.bson } })).toEqual(where((v) => v > pivot.v))
      expect(await ids({ x: { $lt: pivot.bson } })).toEqual(where((v) => v < pivot.v))
      expect(await ids({ x: { $gte: pivot.bson } })).toEqual(where((v) => v >= pivot.v))
      expect(await ids({ x: { $lte: pivot.bson } })).toEqual(where((v) => v <= pivot.v))
      expect(await ids({ x: pivot.bson })).toEqual(where((v) => v === pivot.v))
    }), { fastCheck: { numRuns: 50 } })

  it("does decimal arithmetic in decimals and integer arithmetic in integers", async () => {
    const c = fresh()
    await c.insertOne({ _id: 1, d: Decimal128.fromString("0.1"), l: Long.fromBigInt(2n ** 62n), m: Decimal128.fromString("1.5") })
    await c.updateOne({ _id: 1 }, { $inc: { d: Decimal128.fromString("0.2"), l: Long.fromBigInt(2n ** 62n - 1n) }, $mul: { m: Decimal128.fromString("3") } })
    const doc = await c.findOne({ _id: 1 }, read)
    expect(exact(doc!.l)).toBe(2n ** 63n - 1n)
    expect((doc!.d as Decimal128).toString()).toBe("0.3") // a double would give 0.30000000000000004
    expect(Number((doc!.m as Decimal128).toString())).toBe(4.5)
    expect(doc!.m).toBeInstanceOf(Decimal128)
    // a Long that would overflow is refused, not wrapped or rounded
    await expect(c.updateOne({ _id: 1 }, { $inc: { l: Long.fromNumber(1) } })).rejects.toThrow()
    expect(exact((await c.findOne({ _id: 1 }, read))!.l)).toBe(2n ** 63n - 1n)
  })
})
