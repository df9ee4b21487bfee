/**
 * MongoDB benchmarks, through the official driver against the embedded server
 * (or a real one with MONGODB_URI):
 *
 * 1. guarded upserts as one unordered bulkWrite per batch (what the store does)
 *    vs the same guarded upserts one by one with updateOne — as a ratio;
 * 2. the embedded server's upsert and `_id` lookup throughput at 10k and 200k
 *    documents: with an index it must not slow down as the collection grows.
 *
 *   npx tsx bench/mongo.ts   # BENCH_SIZES=10000,200000 BENCH_OPS=5000 BENCH_ROUNDS=3 BENCH_GUARD_DOCS=5000
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

const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const rounds = Number(process.env.BENCH_ROUNDS ?? 3)

const benchGuarded = async (db: ReturnType<MongoClient["db"]>) => {
  const bulkRates: Array<number> = []
  const singleRates: Array<number> = []
  // Warm-up round first (JIT), then measured rounds alternating the two paths on fresh collections.
  for (let round = 0; round <= rounds; round++) {
    const bulk: Collection<Document> = db.collection(`guard_bulk_${round}`)
    const single: Collection<Document> = db.collection(`guard_single_${round}`)
    const work = guarded(0, round === 0 ? 1000 : guardDocs, "d")
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
    if ((await bulk.countDocuments()) !== work.length || (await single.countDocuments()) !== work.length) {
      throw new Error("a path lost documents")
    }
    await bulk.drop()
    await single.drop()
    if (round === 0) continue
    bulkRates.push(rate(work.length, bulkMs))
    singleRates.push(rate(work.length, singleMs))
  }
  const b = median(bulkRates)
  const o = median(singleRates)
  console.log(`guarded upserts, ${guardDocs} new documents, median of ${rounds} rounds:`)
  console.log(`  bulkWrite (unordered, ${batchSize}/batch): ${b} docs/s`)
  console.log(`  updateOne one by one:          ${o} docs/s`)
  console.log(`  ratio bulk/one-by-one:         ${(b / o).toFixed(1)}x`)
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
  const upserts: Array<number> = []
  const lookups: Array<number> = []
  const batched: Array<number> = []
  for (let round = 0; round < (quiet ? 1 : rounds); round++) {
    // Upserts of existing documents, one at a time, by _id.
    t = now()
    for (let k = 0; k < ops; k++) {
      await c.updateOne({ _id: `doc-${pick()}` } as Document, { $set: { balance: k }, $inc: { "_reconciler.version": 1 } }, { upsert: true })
    }
    upserts.push(rate(ops, now() - t))
    t = now()
    for (let k = 0; k < ops; k++) {
      if ((await c.findOne({ _id: `doc-${pick()}` } as Document)) === null) throw new Error("lookup missed")
    }
    lookups.push(rate(ops, now() - t))
    // Batched lookups the way the store loads ($in of 100 ids).
    t = now()
    for (let k = 0; k < ops; k += 100) {
      await c.find({ _id: { $in: Array.from({ length: 100 }, () => `doc-${pick()}`) } } as Document).toArray()
    }
    batched.push(rate(ops, now() - t))
  }
  await c.drop()
  if (quiet) return { upsert: 0, lookup: 0 }
  const result = { upsert: median(upserts), lookup: median(lookups) }
  console.log(`${size} documents (loaded in ${(loadMs / 1000).toFixed(1)} s, ${rate(size, loadMs)} docs/s), median of ${rounds} rounds:`)
  console.log(`  upsert by _id:    ${result.upsert} ops/s`)
  console.log(`  findOne by _id:   ${result.lookup} ops/s`)
  console.log(`  find $in 100 ids: ${median(batched)} docs/s`)
  return result
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
