/**
 * MongoDB benchmarks, through the official driver against the embedded server
 * (or a real one with MONGODB_URI):
 *
 * 1. guarded upserts as one unordered bulkWrite per batch (what the store does)
 *    vs the same guarded upserts one by one with updateOne — as a ratio;
 * 2. the embedded server's upsert and `_id` lookup throughput at 10k and 200k
 *    documents: with an index it must not slow down as the collection grows.
 *
 *   npx tsx bench/mongo.ts            # BENCH_SIZES=10000,200000 BENCH_OPS=5000
 */
import { Effect, Scope, Exit } from "effect"
import { MongoClient, type AnyBulkWriteOperation, type Collection, type Document } from "mongodb"
import * as MongoServer from "../src/embedded/MongoServer.js"

const sizes = (process.env.BENCH_SIZES ?? "10000,200000").split(",").map(Number)
const ops = Number(process.env.BENCH_OPS ?? 5000)
const batchSize = Number(process.env.BENCH_BATCH ?? 100)
const guardDocs = Number(process.env.BENCH_GUARD_DOCS ?? 5000)

const now = () => performance.now()
const rate = (n: number, ms: number) => Math.round((n / ms) * 1000)

const body = (i: number, version: number) => ({ owner: `person-${i % 97}`, balance: i * 3, history: [i, i + 1], _reconciler: { version, position: i } })

/** Guarded upserts (`expectedVersion` 0: the document must not exist) for ids [from, from + n). */
const guarded = (from: number, n: number, prefix: string) =>
  Array.from({ length: n }, (_, k) => {
    const i = from + k
    return { filter: { _id: `${prefix}-${i}`, "_reconciler.version": { $exists: false } } as Document, doc: body(i, 1) }
  })

const benchGuarded = async (db: ReturnType<MongoClient["db"]>) => {
  const bulk: Collection<Document> = db.collection("guard_bulk")
  const single: Collection<Document> = db.collection("guard_single")
  await bulk.drop().catch(() => undefined)
  await single.drop().catch(() => undefined)
  // Warm-up on both paths.
  await bulk.bulkWrite(guarded(0, 200, "w").map(({ filter, doc }) => ({ replaceOne: { filter, replacement: doc, upsert: true } })), { ordered: false })
  for (const { filter, doc } of guarded(0, 200, "w")) await single.updateOne(filter, { $set: doc }, { upsert: true })

  const work = guarded(0, guardDocs, "d")
  let t = now()
  for (let i = 0; i < work.length; i += batchSize) {
    const batch: Array<AnyBulkWriteOperation<Document>> = work
      .slice(i, i + batchSize)
      .map(({ filter, doc }) => ({ replaceOne: { filter, replacement: doc, upsert: true } }))
    await bulk.bulkWrite(batch, { ordered: false })
  }
  const bulkMs = now() - t
  t = now()
  for (const { filter, doc } of work) await single.updateOne(filter, { $set: doc }, { upsert: true })
  const singleMs = now() - t
  if ((await bulk.countDocuments({ _id: { $regex: "^d-" } } as Document)) !== guardDocs) throw new Error("bulk path lost documents")
  if ((await single.countDocuments({ _id: { $regex: "^d-" } } as Document)) !== guardDocs) throw new Error("single path lost documents")
  console.log(`guarded upserts, ${guardDocs} documents:`)
  console.log(`  bulkWrite (unordered, ${batchSize}/batch): ${rate(guardDocs, bulkMs)} docs/s (${bulkMs.toFixed(0)} ms)`)
  console.log(`  updateOne one by one:          ${rate(guardDocs, singleMs)} docs/s (${singleMs.toFixed(0)} ms)`)
  console.log(`  ratio bulk/one-by-one:         ${(singleMs / bulkMs).toFixed(1)}x`)
}

const benchSize = async (db: ReturnType<MongoClient["db"]>, size: number, quiet = false) => {
  const c: Collection<Document> = db.collection(`size_${size}`)
  await c.drop().catch(() => undefined)
  let t = now()
  for (let i = 0; i < size; i += 1000) {
    await c.insertMany(Array.from({ length: Math.min(1000, size - i) }, (_, k) => ({ _id: `doc-${i + k}`, ...body(i + k, 1) })) as Array<Document>, { ordered: false })
  }
  const loadMs = now() - t
  let seed = 12345
  const pick = () => {
    seed = (seed * 48271) % 0x7fffffff
    return seed % size
  }
  // Upserts of existing documents, one at a time (guarded by version, like the store's replacements).
  t = now()
  for (let k = 0; k < ops; k++) {
    const i = pick()
    await c.updateOne({ _id: `doc-${i}` } as Document, { $set: { balance: k }, $inc: { "_reconciler.version": 1 } }, { upsert: true })
  }
  const upsertMs = now() - t
  t = now()
  for (let k = 0; k < ops; k++) {
    const doc = await c.findOne({ _id: `doc-${pick()}` } as Document)
    if (doc === null) throw new Error("lookup missed")
  }
  const lookupMs = now() - t
  // Batched lookups the way the store loads ($in of 100 ids).
  t = now()
  for (let k = 0; k < ops; k += 100) {
    const ids = Array.from({ length: 100 }, () => `doc-${pick()}`)
    await c.find({ _id: { $in: ids } } as Document).toArray()
  }
  const inMs = now() - t
  if (quiet) return { upsert: 0, lookup: 0 }
  console.log(`${size} documents (loaded in ${(loadMs / 1000).toFixed(1)} s, ${rate(size, loadMs)} docs/s):`)
  console.log(`  upsert by _id:   ${rate(ops, upsertMs)} ops/s`)
  console.log(`  findOne by _id:  ${rate(ops, lookupMs)} ops/s`)
  console.log(`  find $in 100 ids: ${rate(ops, inMs)} docs/s`)
  await c.drop()
  return { upsert: rate(ops, upsertMs), lookup: rate(ops, lookupMs) }
}

const main = async (uri: string) => {
  const client = await new MongoClient(uri).connect()
  try {
    const db = client.db("bench")
    await benchGuarded(db)
    // Warm-up (JIT) so the first size is not measured cold.
    await benchSize(db, 5000, true)
    const results = []
    for (const size of sizes) results.push(await benchSize(db, size))
    if (results.length >= 2) {
      const [a, b] = [results[0]!, results[results.length - 1]!]
      console.log(`throughput at ${sizes[sizes.length - 1]} vs ${sizes[0]}: upsert ${(b.upsert / a.upsert).toFixed(2)}x, lookup ${(b.lookup / a.lookup).toFixed(2)}x (1.0 = no slowdown)`)
    }
    await db.dropDatabase()
  } finally {
    await client.close()
  }
}

const program = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const uri = process.env.MONGODB_URI ?? (yield* Scope.extend(MongoServer.make(), scope)).uri
  console.log(process.env.MONGODB_URI ? "against MONGODB_URI" : "against the embedded server")
  yield* Effect.promise(() => main(uri)).pipe(Effect.ensuring(Scope.close(scope, Exit.void)))
})

Effect.runPromise(program).catch((e) => {
  console.error(e)
  process.exit(1)
})
