/**
 * CRUD semantics over a {@link Access}: the committed state, or a transaction's
 * snapshot plus its own writes. Matching, updating and aggregating use mingo on the
 * view form of documents; `_id` equality and `$in` go through the `_id` index.
 *
 * @internal
 */
import { Decimal128, Double, Long, ObjectId } from "bson"
import { addExact, compareExact, exactOf, mulExact, toDecimal128 } from "./Numbers.js"
import { update as mingoUpdate, updateOne as mingoUpdateOne } from "mingo"
import { Aggregator, Query } from "./Mingo.js"
import { simpleMatcher } from "./SimpleFilter.js"
import {
  CommandError,
  badValue,
  immutableField,
  noSuchTransaction,
  writeConflict
} from "./Errors.js"
import { type Collection, type Storage, type Transaction, type Version, duplicate, duplicateId, indexTuple, makeVersion } from "./Storage.js"
import {
  type Doc,
  isPlainObject,
  getPath,
  keyOf,
  lossy,
  num,
  numeric,
  retype,
  sameKey,
  setPath,
  sortComparator,
  toView,
  valuesAt
} from "./Values.js"

/** Reads and writes documents, either committed directly or inside a transaction. */
export interface Access {
  get(c: Collection, key: string): Version | undefined
  scan(c: Collection): Iterable<Version>
  put(c: Collection, key: string, raw: Doc | undefined): void
}

const lockKey = (c: Collection, key: string) => `${c.ns}\u0000${key}`

/** Writes commit at once, each with its own sequence number. A transaction holding the document loses (it is aborted). */
export class DirectAccess implements Access {
  constructor(readonly storage: Storage) {}

  get(c: Collection, key: string): Version | undefined {
    return c.docs.get(key)
  }

  scan(c: Collection): Iterable<Version> {
    return c.docs.values()
  }

  put(c: Collection, key: string, raw: Doc | undefined): void {
    const holder = this.storage.locks.get(lockKey(c, key))
    if (holder !== undefined) this.storage.end(holder, "aborted")
    const seq = this.storage.seq + 1
    const version = raw === undefined ? undefined : makeVersion(raw, seq)
    if (version !== undefined && c.uniqueIndexes().length > 0) c.checkUnique(key, version.view)
    this.storage.seq = seq
    c.commit(key, version, seq)
    this.storage.journal?.([
      version === undefined ? { t: "del", db: c.db, c: c.name, key } : { t: "put", db: c.db, c: c.name, doc: version.raw }
    ])
  }
}

/** Reads the transaction's snapshot plus its own writes; writes stay private until commit. */
export class TransactionAccess implements Access {
  constructor(
    readonly storage: Storage,
    readonly txn: Transaction
  ) {}

  get(c: Collection, key: string): Version | undefined {
    const writes = this.txn.writes.get(c)
    if (writes?.has(key)) return writes.get(key)
    return c.visible(key, this.txn.snapshot)
  }

  *scan(c: Collection): Iterable<Version> {
    const writes = this.txn.writes.get(c)
    for (const [key, v] of c.scan(this.txn.snapshot)) {
      if (writes?.has(key)) {
        const mine = writes.get(key)
        if (mine !== undefined) yield mine
      } else yield v
    }
    if (writes !== undefined) {
      for (const [key, v] of writes) if (v !== undefined && c.visible(key, this.txn.snapshot) === undefined) yield v
    }
  }

  put(c: Collection, key: string, raw: Doc | undefined): void {
    const t = this.txn
    if (t.state !== "active") throw noSuchTransaction(t.txnNumber)
    const holder = this.storage.locks.get(lockKey(c, key))
    if ((holder !== undefined && holder !== t) || c.lastSeq(key) > t.snapshot) {
      this.storage.end(t, "aborted")
      throw writeConflict()
    }
    let writes = t.writes.get(c)
    if (writes === undefined) {
      writes = new Map()
      t.writes.set(c, writes)
    }
    const version = raw === undefined ? undefined : makeVersion(raw, Number.MAX_SAFE_INTEGER)
    const previous = writes.get(key)
    for (const index of c.uniqueIndexes()) {
      let mine = t.uniques.get(index)
      if (mine === undefined) {
        mine = new Map()
        t.uniques.set(index, mine)
      }
      const tuple = version === undefined ? undefined : indexTuple(index, version.view)
      if (tuple !== undefined) {
        const own = mine.get(tuple)
        const owner = index.entries.get(tuple)
        // An owner rewritten in this transaction clashes only if it kept the tuple, and then `mine` has it.
        if ((own !== undefined && own !== key) || (owner !== undefined && owner !== key && !writes.has(owner))) {
          throw duplicate(c, index, version!.view)
        }
      }
      if (previous !== undefined) {
        const old = indexTuple(index, previous.view)
        if (old !== undefined && mine.get(old) === key) mine.delete(old)
      }
      if (tuple !== undefined) mine.set(tuple, key)
    }
    writes.set(key, version)
    this.storage.locks.set(lockKey(c, key), t)
  }
}

const queryOptions = { useStrictMode: true, scriptEnabled: false } as const

/** Compiled queries by the canonical form of their filter: guarded writes repeat the same few filters. */
const compiled = new Map<string, Query>()
const CACHE_SIZE = 512

export const compileQuery = (filter: Doc): Query => {
  const view = toView(filter) as Doc
  const key = keyOf(view)
  // Expressions may read the clock ($$NOW) or run operators with state: compile them every time.
  const cacheable = !key.includes('"$expr"') && !key.includes('"$where"') && !key.includes('"$function"')
  const hit = cacheable ? compiled.get(key) : undefined
  if (hit !== undefined) return hit
  let query: Query
  try {
    query = new Query(view, queryOptions)
  } catch (e) {
    throw badValue(e instanceof Error ? e.message : String(e))
  }
  if (cacheable) {
    if (compiled.size >= CACHE_SIZE) compiled.clear()
    compiled.set(key, query)
  }
  return query
}

const isOperatorObject = (v: unknown): v is Doc =>
  isPlainObject(v) && Object.keys(v).length > 0 && Object.keys(v).every((k) => k.startsWith("$"))

/** The `_id` keys a filter pins down (equality, `$eq`, `$in`), or undefined when it needs a scan. */
const idKeys = (filter: Doc): Array<string> | undefined => {
  if ("_id" in filter) {
    const v = filter._id
    if (!isOperatorObject(v)) return v instanceof RegExp ? undefined : [keyOf(v)]
    const ops = Object.keys(v)
    if (ops.length === 1 && ops[0] === "$eq") return [keyOf(v.$eq)]
    if (ops.length === 1 && ops[0] === "$in" && Array.isArray(v.$in) && !v.$in.some((x) => x instanceof RegExp || isPlainObject(x) || Array.isArray(x))) {
      return v.$in.map(keyOf)
    }
  }
  if (Array.isArray(filter.$and)) {
    for (const sub of filter.$and) if (isPlainObject(sub)) {
      const keys = idKeys(sub)
      if (keys !== undefined) return keys
    }
  }
  return undefined
}

function* candidates(access: Access, c: Collection, keys: Array<string> | undefined): Iterable<Version> {
  if (keys === undefined) {
    yield* access.scan(c)
    return
  }
  const seen = new Set<string>()
  for (const key of keys) {
    if (seen.has(key)) continue
    seen.add(key)
    const v = access.get(c, key)
    if (v !== undefined) yield v
  }
}

export interface FindOptions {
  readonly filter: Doc
  readonly sort?: Doc | undefined
  readonly skip?: number
  readonly limit?: number
}

/** The matching versions, sorted, skipped and limited (limit 0 = all). */
export const findVersions = (access: Access, c: Collection | undefined, options: FindOptions): Array<Version> => {
  if (c === undefined) return []
  // The index answers a top-level `_id` condition exactly: only the rest of the filter needs a query.
  let rest = options.filter
  if ("_id" in rest && idKeys({ _id: rest._id }) !== undefined) {
    const { _id: _answered, ...others } = rest
    rest = others
  }
  const conditions = Object.keys(rest).length > 0
  // Guarded writes' filters are decided on the raw document; mingo only when the fast path cannot.
  const simple = conditions ? simpleMatcher(rest) : undefined
  let query = conditions && simple === undefined ? compileQuery(rest) : undefined
  const matches = (v: Version): boolean => {
    if (!conditions) return true
    const decided = simple?.(v.raw)
    if (decided !== undefined) return decided
    query ??= compileQuery(rest)
    return query.test(v.view)
  }
  const skip = options.skip ?? 0
  const limit = options.limit ?? 0
  const sorted = options.sort !== undefined && Object.keys(options.sort).length > 0
  const out: Array<Version> = []
  const keys = idKeys(options.filter)
  if (keys !== undefined && keys.length === 1) {
    // One `_id`: no generator, no set of seen keys.
    const v = access.get(c, keys[0]!)
    if (v !== undefined && matches(v)) out.push(v)
  } else {
    for (const v of candidates(access, c, keys)) {
      if (!matches(v)) continue
      out.push(v)
      if (!sorted && limit > 0 && out.length >= skip + limit) break
    }
  }
  if (sorted) {
    const compare = sortComparator(options.sort!)
    out.sort((a, b) => compare(a.view, b.view))
  }
  return limit > 0 ? out.slice(skip, skip + limit) : skip > 0 ? out.slice(skip) : out
}

/** Applies a find projection to raw documents. */
export const project = (docs: Array<Doc>, projection: Doc | undefined): Array<Doc> => {
  if (projection === undefined || Object.keys(projection).length === 0) return docs
  try {
    return new Query({}, queryOptions).find(docs, toView(projection) as Doc).all() as Array<Doc>
  } catch (e) {
    throw badValue(e instanceof Error ? e.message : String(e))
  }
}

const cloneView = (v: unknown): unknown => {
  if (Array.isArray(v)) return v.map(cloneView)
  if (isPlainObject(v)) {
    const out: Doc = {}
    for (const k of Object.keys(v)) out[k] = cloneView(v[k])
    return out
  }
  return v
}

const updateOperators = new Set([
  "$set", "$setOnInsert", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$push", "$addToSet",
  "$pop", "$pull", "$pullAll", "$currentDate", "$bit"
])
const typedArgs = new Set(["$set", "$setOnInsert", "$min", "$max", "$inc", "$mul"])

/** True for an update document made of operators (as opposed to a replacement). */
export const isOperatorUpdate = (u: unknown): u is Doc => isPlainObject(u) && Object.keys(u).some((k) => k.startsWith("$"))

/** The new raw document after applying `u` (operators, pipeline or replacement) to `raw`. */
export const applyUpdate = (
  raw: Doc,
  viewOf: () => Doc,
  u: unknown,
  arrayFilters: Array<Doc> | undefined,
  filter: Doc,
  inserting: boolean
): Doc => {
  let result: Doc
  try {
    if (Array.isArray(u)) {
      const target = cloneView(viewOf()) as Doc
      const docs = [target]
      mingoUpdateOne(docs, {}, toView(u) as any, {}, queryOptions)
      result = retype(docs[0], raw, new Map()) as Doc
    } else if (isOperatorUpdate(u)) {
      const view = viewOf()
      const expr: Doc = {}
      const args = new Map<string, unknown>()
      const elements = new Map<string, Array<unknown>>()
      for (const op of Object.keys(u)) {
        if (!updateOperators.has(op)) throw new CommandError(9, "FailedToParse", `Unknown modifier: ${op}. Expected a valid update modifier or pipeline-style update specified as an array`)
        const arg = u[op]
        if (!isPlainObject(arg)) throw new CommandError(9, "FailedToParse", `Modifiers operate on fields but we found type ${typeof arg} instead.`)
        if (op === "$setOnInsert" && !inserting) continue
        const target = op === "$setOnInsert" ? "$set" : op
        expr[target] = { ...(expr[target] as Doc | undefined), ...arg }
        if (typedArgs.has(op)) for (const path of Object.keys(arg)) args.set(path, arg[path])
        if (op === "$push" || op === "$addToSet") {
          for (const path of Object.keys(arg)) {
            const value = arg[path]
            const each = isPlainObject(value) && Array.isArray(value.$each) ? value.$each : [value]
            elements.set(path, [...(elements.get(path) ?? []), ...each])
          }
        }
      }
      for (const op of Object.keys(expr)) {
        for (const path of Object.keys(expr[op] as Doc)) {
          if (path === "_id" || path.startsWith("_id.")) {
            if (op !== "$set" || keyOf(toView((expr[op] as Doc)[path])) !== keyOf(getIdPath(view, path))) {
              throw immutableField("Performing an update on the path '_id' would modify the immutable field '_id'")
            }
          }
        }
      }
      const exact = exactIntegerOps(raw, expr)
      const target = cloneView(view) as Doc
      if (Object.keys(expr).length > 0) {
        const positional = JSON.stringify(Object.values(expr).flatMap((a) => Object.keys(a as Doc))).match(/\.\$(\.|")/)
        mingoUpdate(target, toView(expr) as any, arrayFilters === undefined ? undefined : (toView(arrayFilters) as Array<Doc>), positional ? (toView(filter) as Doc) : undefined, { queryOptions })
      }
      result = retype(target, raw, args, "", elements) as Doc
      for (const [path, value] of exact) setPath(result, path, value)
    } else if (isPlainObject(u)) {
      if ("_id" in u && "_id" in raw && keyOf(u._id) !== keyOf(raw._id)) {
        throw immutableField("The _id field cannot be changed")
      }
      result = u // a statement's own document, decoded for this command: not shared
    } else {
      throw new CommandError(9, "FailedToParse", "Update argument must be either an object or an array")
    }
  } catch (e) {
    if (e instanceof CommandError) throw e
    throw badValue(e instanceof Error ? e.message : String(e))
  }
  // `_id` first, as MongoDB keeps it, with its raw value.
  const id = "_id" in raw ? raw._id : result._id
  if (id !== undefined && result._id === id && firstKey(result) === "_id") return result
  const { _id: _ignored, ...rest } = result
  return id === undefined ? rest : { _id: id, ...rest }
}

const getIdPath = (view: Doc, path: string): unknown => valuesAt(view, path)[0]

const firstKey = (doc: Doc): string | undefined => {
  for (const k in doc) return k
  return undefined
}

const INT32_MIN = -(2n ** 31n)
const INT32_MAX = 2n ** 31n - 1n

/** The exact integer behind an Int32, a Long or an integral number; undefined otherwise. */
const exactInteger = (v: unknown): bigint | undefined => {
  if (typeof v === "number") return Number.isSafeInteger(v) ? BigInt(v) : undefined
  if (v !== null && typeof v === "object") {
    const t = (v as { _bsontype?: string })._bsontype
    if (t === "Long") return (v as Long).toBigInt()
    if (t === "Int32") return BigInt((v as { value: number }).value)
  }
  return undefined
}

const isLong = (v: unknown) => v !== null && typeof v === "object" && (v as { _bsontype?: string })._bsontype === "Long"

/** Whether `path` reaches `raw` through plain objects only (no arrays, no positional operators). */
const plainPath = (raw: Doc, path: string): boolean => {
  if (path.includes("$")) return false
  let current: unknown = raw
  for (const part of path.split(".").slice(0, -1)) {
    if (current === undefined) return true
    if (!isPlainObject(current)) return false
    current = current[part]
  }
  return current === undefined || isPlainObject(current)
}

const bsonTypeOf = (v: unknown) => (v !== null && typeof v === "object" ? (v as { _bsontype?: string })._bsontype : undefined)
const isDecimal = (v: unknown) => bsonTypeOf(v) === "Decimal128"
const isNumber = (v: unknown) =>
  typeof v === "number" || ["Int32", "Double", "Long", "Decimal128"].includes(bsonTypeOf(v) ?? "")

/**
 * `$inc`, `$mul`, `$max` and `$min` on numbers, done exactly instead of in
 * mingo's doubles: `$max` / `$min` compare values of any width and type
 * exactly and write the argument (with its type) only when it is strictly
 * greater / smaller; integer arithmetic is exact (Int32 overflowing to Long,
 * Long stays Long), Decimal128 arithmetic is decimal, and anything with a
 * double is a double, as in MongoDB. Returns the paths written; removes them
 * from `expr` (what is left is for mingo).
 */
const exactIntegerOps = (raw: Doc, expr: Doc): Array<[string, unknown]> => {
  const out: Array<[string, unknown]> = []
  for (const op of ["$inc", "$mul", "$max", "$min"]) {
    const args = expr[op] as Doc | undefined
    if (args === undefined) continue
    const rest: Doc = {}
    for (const path of Object.keys(args)) {
      const arg = args[path]
      const current = getPath(raw, path)
      if (!isNumber(arg) || (current !== undefined && !isNumber(current)) || !plainPath(raw, path)) {
        rest[path] = arg
        continue
      }
      if (op === "$max" || op === "$min") {
        const order = current === undefined ? 0 : compareExact(exactOf(arg)!, exactOf(current)!)
        if (current === undefined || (op === "$max" ? order > 0 : order < 0)) out.push([path, arg])
        continue
      }
      // $mul on a missing field sets 0 of the argument's type; $inc sets the argument
      const base = current ?? (op === "$mul" ? 0 : undefined)
      if (base === undefined) {
        out.push([path, arg])
        continue
      }
      if (isDecimal(arg) || isDecimal(base)) {
        const x = exactOf(base)!
        const y = exactOf(arg)!
        const r = op === "$inc" ? addExact(x, y) : mulExact(x, y)
        out.push([path, r === undefined ? Decimal128.fromString(String(op === "$inc" ? numeric(base)! + numeric(arg)! : numeric(base)! * numeric(arg)!)) : toDecimal128(r)])
        continue
      }
      const a = exactInteger(arg)
      const c = exactInteger(base)
      if (a === undefined || c === undefined) {
        // a double on either side: the result is a double
        out.push([path, new Double(op === "$inc" ? numeric(base)! + numeric(arg)! : numeric(base)! * numeric(arg)!)])
        continue
      }
      const result = op === "$inc" ? a + c : a * c
      const long = isLong(arg) || isLong(base) || result < INT32_MIN || result > INT32_MAX
      if (long && (result < LONG_MIN || result > LONG_MAX)) {
        throw new CommandError(2, "BadValue", `Failed to apply ${op} operations to current value (${String(numeric(base))}) for document {_id: ...}: integer overflow`)
      }
      out.push([path, long ? Long.fromBigInt(result) : Number(result)])
    }
    if (Object.keys(rest).length > 0) expr[op] = rest
    else delete expr[op]
  }
  return out
}

const LONG_MIN = -(2n ** 63n)
const LONG_MAX = 2n ** 63n - 1n

/** The document an upsert starts from: the filter's equality conditions. */
export const upsertSeed = (filter: Doc): Doc => {
  const seed: Doc = {}
  const visit = (f: Doc) => {
    for (const k of Object.keys(f)) {
      const v = f[k]
      if (k === "$and" && Array.isArray(v)) {
        for (const sub of v) if (isPlainObject(sub)) visit(sub)
      } else if (k.startsWith("$")) continue
      else if (isOperatorObject(v)) {
        if ("$eq" in v) setPath(seed, k, v.$eq)
      } else setPath(seed, k, v)
    }
  }
  visit(filter)
  return seed
}

const checkId = (id: unknown) => {
  if (Array.isArray(id)) throw new CommandError(2, "BadValue", "can't use an array for _id")
  if (id instanceof RegExp) throw new CommandError(2, "BadValue", "can't use a regex for _id")
}

/** Inserts one document (adding an ObjectId `_id` when missing); duplicate `_id` → 11000. */
export const insertOne = (access: Access, c: Collection, doc: Doc): Doc => {
  const raw = "_id" in doc ? doc : { _id: new ObjectId(), ...doc }
  checkId(raw._id)
  const key = keyOf(raw._id)
  if (access.get(c, key) !== undefined) throw duplicateId(c, raw._id)
  access.put(c, key, raw)
  return raw
}

export interface UpdateStatement {
  readonly q: Doc
  readonly u: unknown
  readonly upsert: boolean
  readonly multi: boolean
  readonly arrayFilters: Array<Doc> | undefined
  readonly sort?: Doc | undefined
}

export interface UpdateOutcome {
  readonly n: number
  readonly nModified: number
  readonly upserted: unknown
}

/** One update statement: matching documents updated (first only unless `multi`), or an upsert. */
export const updateStatement = (access: Access, c: Collection, s: UpdateStatement): UpdateOutcome => {
  if (s.multi && !Array.isArray(s.u) && !isOperatorUpdate(s.u)) {
    throw new CommandError(9, "FailedToParse", "multi update is not supported for replacement-style update")
  }
  const targets = findVersions(access, c, { filter: s.q, sort: s.sort, limit: s.multi ? 0 : 1 })
  let nModified = 0
  for (const v of targets) {
    const next = applyUpdate(v.raw, () => v.view, s.u, s.arrayFilters, s.q, false)
    if (sameKey(next, v.raw)) continue
    access.put(c, keyOf(v.raw._id), next)
    nModified++
  }
  if (targets.length > 0 || !s.upsert) return { n: targets.length, nModified, upserted: undefined }
  const seed = upsertSeed(s.q)
  const doc = applyUpdate(seed, () => toView(seed) as Doc, s.u, s.arrayFilters, s.q, true)
  if (!isOperatorUpdate(s.u) && !Array.isArray(s.u) && "_id" in seed && !("_id" in (s.u as Doc))) {
    doc._id = seed._id
  }
  const inserted = insertOne(access, c, doc._id === undefined ? { _id: new ObjectId(), ...doc } : reorderId(doc))
  return { n: 1, nModified: 0, upserted: inserted._id }
}

const reorderId = (doc: Doc): Doc => {
  const { _id, ...rest } = doc
  return { _id, ...rest }
}

/** Deletes the first (limit 1) or all matching documents; returns how many. */
export const deleteStatement = (access: Access, c: Collection, q: Doc, limit: number): number => {
  const targets = findVersions(access, c, { filter: q, limit: limit === 1 ? 1 : 0 })
  for (const v of targets) access.put(c, keyOf(v.raw._id), undefined)
  return targets.length
}

const passThroughStages = new Set(["$match", "$sort", "$skip", "$limit"])

/** Runs an aggregation pipeline over a collection's documents (view form); untouched documents come back in raw form. */
export const aggregate = (
  access: Access,
  c: Collection | undefined,
  pipeline: Array<Doc>,
  resolve: (name: string) => Array<Doc>
): Array<Doc> => {
  let source: Array<Version>
  let stages = pipeline
  const first = pipeline[0]
  if (first !== undefined && isPlainObject(first.$match)) {
    source = findVersions(access, c, { filter: first.$match })
    stages = pipeline.slice(1)
  } else source = c === undefined ? [] : [...access.scan(c)]
  const rawOf = new Map<Doc, Doc>()
  for (const v of source) rawOf.set(v.view, v.raw)
  const passThrough = stages.every((s) => Object.keys(s).every((k) => passThroughStages.has(k)))
  try {
    // mingo's expression operators do arithmetic in doubles: stages that compute see wide numbers rounded
    let current = passThrough ? source.map((v) => v.view) : source.map((v) => lossy(v.view) as Doc)
    const options = { ...queryOptions, collectionResolver: (name: string) => resolve(name).map((d) => lossy(d) as Doc) }
    // `$sort` stages sort in BSON order (as `find` does); the stages between them run in mingo.
    let pending: Array<Doc> = []
    const flush = () => {
      if (pending.length > 0) current = new Aggregator(toView(pending) as Array<Doc>, options).run(current) as Array<Doc>
      pending = []
    }
    for (const stage of stages) {
      if (isPlainObject(stage.$sort) && Object.keys(stage).length === 1) {
        flush()
        const compare = sortComparator(stage.$sort)
        current = [...current].sort(compare)
      } else pending.push(stage)
    }
    flush()
    return passThrough ? current.map((d) => rawOf.get(d) ?? d) : current
  } catch (e) {
    throw badValue(e instanceof Error ? e.message : String(e))
  }
}

export const toNumber = num
