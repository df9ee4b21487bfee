/**
 * A fast path for the filters guarded writes send on every statement
 * (`{ "_reconciler.version": 3 }`, `{ "_reconciler.version": { $exists: false } }`,
 * `{ pos: { $lt: N } }`): each condition a dotted path compared with a string,
 * boolean or number by equality, `$eq`, `$exists` or `$lt` / `$lte` / `$gt` / `$gte`.
 * Such a filter is decided on the raw document without building its query view
 * or running mingo. Whenever MongoDB's rules need more than that (an array on the
 * path, whose elements would be matched one by one; a Decimal128, a Long beyond
 * 2^53, NaN, a symbol, MinKey/MaxKey) the matcher answers `undefined` and the
 * caller runs the full query, so the answer is always the full query's.
 *
 * @internal
 */
import { type Doc, isPlainObject } from "./Values.js"

type Scalar = string | boolean | number
type Op = "eq" | "exists" | "lt" | "lte" | "gt" | "gte"
interface Condition {
  readonly path: ReadonlyArray<string>
  readonly op: Op
  readonly value: Scalar
}

/** `true` / `false`, or `undefined`: the full query must decide. */
export type Matcher = (raw: Doc) => boolean | undefined

const bsonType = (v: object): string | undefined => (v as { _bsontype?: string })._bsontype

/** A raw number held exactly by a double (not NaN), or undefined. */
const exactNumber = (v: unknown): number | undefined => {
  let n: number | undefined
  if (typeof v === "number") n = v
  else if (v !== null && typeof v === "object") {
    switch (bsonType(v)) {
      case "Int32":
      case "Double":
        n = (v as { value: number }).value
        break
      case "Long": {
        const x = (v as { toNumber(): number }).toNumber()
        n = Number.isSafeInteger(x) ? x : undefined
        break
      }
    }
  }
  return n === undefined || Number.isNaN(n) ? undefined : n
}

/** A condition's operand, if it is one this path handles. */
const scalar = (v: unknown): Scalar | undefined =>
  typeof v === "string" || typeof v === "boolean" ? v : exactNumber(v)

const comparisons: Record<string, Op> = { $eq: "eq", $lt: "lt", $lte: "lte", $gt: "gt", $gte: "gte" }

/** The matcher for `filter`, or undefined when the filter is not of the simple shape. */
export const simpleMatcher = (filter: Doc): Matcher | undefined => {
  const conditions: Array<Condition> = []
  for (const key of Object.keys(filter)) {
    if (key.length === 0 || key.startsWith("$")) return undefined
    const path = key.split(".")
    // Numeric parts address array elements; `$` parts are positional: leave both to the full query.
    if (path.some((p) => p.length === 0 || p.startsWith("$") || /^\d+$/.test(p))) return undefined
    const arg = filter[key]
    if (isPlainObject(arg)) {
      const ops = Object.keys(arg)
      if (ops.length === 0) return undefined
      for (const op of ops) {
        const operand = arg[op]
        if (op === "$exists") {
          if (typeof operand !== "boolean") return undefined
          conditions.push({ path, op: "exists", value: operand })
          continue
        }
        const mapped = comparisons[op]
        const value = scalar(operand)
        if (mapped === undefined || value === undefined) return undefined
        // Order comparisons on numbers only (strings would need collation rules).
        if (mapped !== "eq" && typeof value !== "number") return undefined
        conditions.push({ path, op: mapped, value })
      }
      continue
    }
    const value = scalar(arg)
    if (value === undefined) return undefined
    conditions.push({ path, op: "eq", value })
  }
  if (conditions.length === 0) return undefined
  return (raw) => {
    for (const c of conditions) {
      const r = test(raw, c)
      if (r !== true) return r
    }
    return true
  }
}

const MISSING = Symbol("missing")
const COMPLEX = Symbol("complex")

/** The value at a path through plain objects; COMPLEX on an array (MongoDB would look into its elements). */
const lookup = (raw: Doc, path: ReadonlyArray<string>): unknown => {
  let current: unknown = raw
  for (const part of path) {
    if (Array.isArray(current)) return COMPLEX
    if (!isPlainObject(current) || !Object.prototype.hasOwnProperty.call(current, part)) return MISSING
    current = current[part]
  }
  return Array.isArray(current) ? COMPLEX : current
}

/** Types that never equal, nor compare in order with, a string, boolean or number. */
const unrelated = new Set(["ObjectId", "Binary", "Timestamp", "BSONRegExp", "Code"])

const test = (raw: Doc, c: Condition): boolean | undefined => {
  const v = lookup(raw, c.path)
  if (v === COMPLEX) return undefined
  if (c.op === "exists") return (v !== MISSING) === c.value
  if (v === MISSING || v === null || v === undefined) return false
  if (typeof v === "string" || typeof v === "boolean") {
    return c.op === "eq" && v === c.value
  }
  const n = exactNumber(v)
  if (n !== undefined) {
    if (typeof c.value !== "number") return false
    switch (c.op) {
      case "eq":
        return n === c.value
      case "lt":
        return n < c.value
      case "lte":
        return n <= c.value
      case "gt":
        return n > c.value
      case "gte":
        return n >= c.value
    }
  }
  if (typeof v === "object" && (isPlainObject(v) || v instanceof Date || v instanceof RegExp || unrelated.has(bsonType(v) ?? ""))) {
    return false
  }
  // Decimal128, a wide Long, NaN, a symbol, MinKey/MaxKey…: the full query's rules.
  return undefined
}
