/**
 * CPU per document of the store's catch-up round trip, client and embedded
 * server in this process (as `--servers in-process`): per batch, one `load` of
 * the batch's documents and one guarded `write` of all of them, the shape the
 * engine sends. Prints CPU µs per document (user + system, both sides of the
 * wire) and documents/s, median of the rounds.
 *
 *   node --import tsx bench/mongoStore.ts [--src /work/wt/base/src] [--docs 20000] [--pool 4000] [--batch 100] [--rounds 5]
 *
 * `--src` loads `MongoReadModelStore` and the embedded server from another tree
 * (a baseline), with that tree's own `effect`, `mongodb` and `bson`.
 */
import { createRequire } from "node:module"
import * as path from "node:path"
import { pathToFileURL } from "node:url"

const argv = process.argv.slice(2)
const arg = (name: string, fallback: string) => {
  const at = argv.indexOf(`--${name}`)
  return at >= 0 ? argv[at + 1]! : fallback
}
const src = path.resolve(arg("src", path.join(import.meta.dirname, "../src")))
const docs = Number(arg("docs", "20000"))
const pool = Number(arg("pool", "4000"))
const batch = Number(arg("batch", "100"))
const rounds = Number(arg("rounds", "5"))
const profile = argv.includes("--quiet")

// A built tree (dist/) has .js files: real line numbers in a profile.
const ext = src.endsWith("dist") ? ".js" : ".ts"
const load = (file: string) => import(pathToFileURL(path.join(src, file + ext)).href)
// The tree's own `effect`, so the store and the runtime share one copy.
const { Effect, Exit, Scope } = await import(pathToFileURL(createRequire(path.join(src, "x.js")).resolve("effect")).href)
const MongoServer = await load("embedded/MongoServer")
const MongoReadModelStore = await load("MongoReadModelStore")

const median = (xs: Array<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

interface Meta { version: number; position: bigint | undefined; streams: Record<string, bigint>; deleted: boolean }
interface Stored { id: string; body: Record<string, unknown> | undefined; meta: Meta }

const program = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const server = yield* Scope.extend(MongoServer.make(), scope)
  const store = yield* Scope.extend(MongoReadModelStore.make({ uri: server.uri, database: "store_bench" }), scope)
  let seed = 12345
  const pick = () => {
    seed = (seed * 48271) % 0x7fffffff
    return seed % pool
  }
  let position = 0n
  const round = (collection: string, n: number) =>
    Effect.gen(function*() {
      for (let done = 0; done < n; done += batch) {
        const ids = new Set<string>()
        while (ids.size < Math.min(batch, pool)) ids.add(`account-${pick()}`)
        const list = [...ids]
        const loaded = (yield* store.load(collection, list)) as ReadonlyMap<string, Stored>
        const writes = list.map((id) => {
          const stored = loaded.get(id)
          const version = stored?.meta.version ?? 0
          const before = (stored?.body ?? { kind: "account", ownerId: `person-${id.length}`, owner: "Ada Lovelace", balance: 0, overdraftLimit: 5000, transactions: 0 }) as Record<string, number | string>
          position += 64n
          return {
            id,
            expectedVersion: version,
            body: { ...before, balance: (before.balance as number) + 125, transactions: (before.transactions as number) + 1 },
            meta: { version: version + 1, position, streams: {}, deleted: false }
          }
        })
        const result = yield* store.write({ collection, writes })
        if (result.conflicts.length > 0 || (result.rejected?.length ?? 0) > 0) throw new Error("unexpected conflicts")
      }
    })
  const cpu: Array<number> = []
  const rates: Array<number> = []
  for (let r = 0; r <= rounds; r++) {
    const collection = `accounts_${r}`
    const n = r === 0 ? Math.min(docs, 5000) : docs // round 0: warm-up (JIT)
    const c0 = process.cpuUsage()
    const t0 = performance.now()
    yield* round(collection, n)
    const ms = performance.now() - t0
    const used = process.cpuUsage(c0)
    yield* store.dropCollection(collection)
    if (r === 0) continue
    cpu.push((used.user + used.system) / n)
    rates.push(Math.round((n / ms) * 1000))
  }
  yield* Scope.close(scope, Exit.void)
  return { cpu: median(cpu), rate: median(rates), all: cpu }
})

const result = await Effect.runPromise(program)
if (!profile) {
  console.log(`store round trip (load + guarded write), ${docs} documents over ${pool} ids, batch ${batch}, src ${src}`)
  console.log(`  CPU per document: ${result.cpu.toFixed(1)} µs (rounds: ${result.all.map((x: number) => x.toFixed(1)).join(", ")})`)
  console.log(`  documents/s:      ${result.rate}`)
}
