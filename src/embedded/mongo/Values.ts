/**
 * How the embedded server holds BSON values.
 *
 * Documents are kept twice (the second form made on first use): `raw`, exactly as decoded by `bson` with
 * `promoteValues: false` (Int32, Double, Long, Decimal128 keep their type and are
 * returned as stored), and `view`, where numeric wrappers are promoted to plain
 * numbers so that mingo compares them as MongoDB does (`{ v: { $gt: 3 } }` matches
 * a Long 5). Queries, sorts and aggregations run on the view; replies serialize the
 * raw form. Updates run on the view and are mapped back to BSON types by
 * {@link retype}. A Long or Decimal128 that no double holds exactly (a Long
 * beyond 2^53, a 34-digit decimal) is a {@link Wide} in the view, never a
 * rounded number, and comparisons of numbers are exact (see Numbers.ts).
 *
 * @internal
 */
import { Binary, Decimal128, Double, Long, ObjectId } from "bson"
import { canonical, compareExact, exactOf, isDouble, Wide } from "./Numbers.js"

export type Doc = Record<string, unknown>

const bsonType = (v: object): string | undefined => (v as { _bsontype?: string })._bsontype

export const isPlainObject = (v: unknown): v is Doc => {
  if (v === null || typeof v !== "object") return false
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

/** The plain number behind a numeric BSON value, or `undefined`. */
export const numeric = (v: unknown): number | undefined => {
  if (typeof v === "number") return v
  if (typeof v === "bigint") return Number(v)
  if (v instanceof Wide) return v.approx
  if (v !== null && typeof v === "object") {
    switch (bsonType(v)) {
      case "Int32":
      case "Double":
        return (v as { value: number }).value
      case "Long":
        return (v as Long).toNumber()
      case "Decimal128":
        return Number((v as Decimal128).toString())
    }
  }
  return undefined
}

/** A command option as a number (`Int32`, `Double`, `Long` or number), or the fallback. */
export const num = (v: unknown, fallback: number): number => numeric(v) ?? fallback

/** A command option as a boolean (MongoDB accepts numbers as booleans). */
export const bool = (v: unknown, fallback: boolean): boolean => {
  if (v === undefined || v === null) return fallback
  if (typeof v === "boolean") return v
  const n = numeric(v)
  return n === undefined ? fallback : n !== 0
}

/** The query view of a raw value: numeric wrappers promoted to numbers, everything else as is. */
export const toView = (v: unknown): unknown => {
  if (v === null || typeof v !== "object") return typeof v === "bigint" ? Number(v) : v
  if (Array.isArray(v)) return v.map(toView)
  if (v instanceof Wide) return v
  const t = bsonType(v)
  if (t !== undefined) {
    if (t === "Long" || t === "Decimal128") {
      const exact = exactOf(v)!
      // a value no double holds stays exact in the view
      if (!isDouble(exact) && exact._tag === "Finite") return new Wide(v as Long | Decimal128, exact, numeric(v)!)
    }
    const n = t === "Timestamp" ? undefined : numeric(v)
    return n ?? v
  }
  if (isPlainObject(v)) {
    const out: Doc = {}
    for (const k of Object.keys(v)) out[k] = toView(v[k])
    return out
  }
  return v
}

/** Integers (of any width) by their exact decimal digits, so that a Long and a double of equal value agree. */
const numberKey = (n: number): string => {
  if (Number.isNaN(n)) return "NaN"
  if (Number.isInteger(n) && Math.abs(n) < 2 ** 64) return BigInt(n).toString()
  return String(n)
}

/**
 * A canonical string for a value, equal for values MongoDB considers equal in an
 * index (numbers of any width compare by value). Used to key the `_id` index and
 * unique secondary indexes. Works on raw and view values alike.
 */
export const keyOf = (v: unknown): string => {
  switch (typeof v) {
    case "undefined":
      return "z"
    case "number":
      return "n:" + numberKey(v)
    case "bigint":
      return "n:" + v.toString()
    case "string":
      return "s:" + JSON.stringify(v)
    case "boolean":
      return v ? "b:1" : "b:0"
  }
  if (v === null) return "z"
  if (Array.isArray(v)) return "[" + v.map(keyOf).join(",") + "]"
  if (v instanceof Date) return "d:" + v.getTime()
  if (v instanceof RegExp) return "r:" + v.source + "/" + v.flags
  if (v instanceof Wide) return "n:" + v.toString()
  if (isPlainObject(v)) {
    let s = "{"
    for (const k of Object.keys(v)) s += JSON.stringify(k) + ":" + keyOf(v[k]) + ","
    return s + "}"
  }
  const o = v as object
  switch (bsonType(o)) {
    case "Long":
      return "n:" + (o as Long).toString()
    case "Int32":
    case "Double":
      return keyOf(numeric(o))
    case "Decimal128": {
      const exact = exactOf(o)!
      return isDouble(exact) ? keyOf(numeric(o)) : "n:" + canonical(exact)
    }
    case "ObjectId":
      return "o:" + (o as ObjectId).toHexString()
    case "Binary":
      return "x:" + (o as Binary).sub_type + ":" + Buffer.from((o as Binary).buffer).toString("base64")
    case "Timestamp":
      return "t:" + (o as Long).toString()
    case "MinKey":
      return "min"
    case "MaxKey":
      return "max"
    case "BSONRegExp":
      return "r:" + (o as { pattern: string }).pattern + "/" + (o as { options: string }).options
  }
  if (o instanceof Uint8Array) return "x:0:" + Buffer.from(o).toString("base64")
  return "?:" + String(o)
}

/**
 * Whether `keyOf(a) === keyOf(b)`, without building either string: stops at the
 * first difference (a replacement that changes one field is told apart at once).
 */
export const sameKey = (a: unknown, b: unknown): boolean => {
  if (a === b) return true
  const ta = typeof a
  const tb = typeof b
  if (ta === "string" || tb === "string" || ta === "boolean" || tb === "boolean") return false
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false
    for (let i = 0; i < a.length; i++) if (!sameKey(a[i], b[i])) return false
    return true
  }
  if (Array.isArray(b)) return false
  if (isPlainObject(a)) {
    if (!isPlainObject(b)) return false
    const ka = Object.keys(a)
    const kb = Object.keys(b)
    if (ka.length !== kb.length) return false
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i] || !sameKey(a[ka[i]!], b[kb[i]!])) return false
    return true
  }
  if (isPlainObject(b)) return false
  return keyOf(a) === keyOf(b)
}

/** The rank of a value's type in BSON comparison order. */
const rank = (v: unknown): number => {
  if (v === undefined || v === null) return 2
  switch (typeof v) {
    case "number":
    case "bigint":
      return 3
    case "string":
      return 4
    case "boolean":
      return 9
  }
  if (Array.isArray(v)) return 6
  if (v instanceof Date) return 10
  if (v instanceof RegExp) return 12
  if (isPlainObject(v)) return 5
  if (v instanceof Wide) return 3
  switch (bsonType(v as object)) {
    case "MinKey":
      return 1
    case "Int32":
    case "Double":
    case "Long":
    case "Decimal128":
      return 3
    case "BSONSymbol":
      return 4
    case "Binary":
      return 7
    case "ObjectId":
      return 8
    case "Timestamp":
      return 11
    case "BSONRegExp":
      return 12
    case "MaxKey":
      return 13
  }
  if (v instanceof Uint8Array) return 7
  return 5
}

const cmp = <A extends number | string>(a: A, b: A): number => (a < b ? -1 : a > b ? 1 : 0)

/** Compares two values in BSON order (MinKey < null < numbers < strings < objects < arrays < binary < ObjectId < booleans < dates < timestamps < regexes < MaxKey). */
export const compareValues = (a: unknown, b: unknown): number => {
  const ra = rank(a)
  const rb = rank(b)
  if (ra !== rb) return ra - rb
  switch (ra) {
    case 3:
      return compareExact(exactOf(a)!, exactOf(b)!)
    case 4:
      return cmp(String(a), String(b))
    case 5: {
      const ka = Object.keys(a as Doc)
      const kb = Object.keys(b as Doc)
      for (let i = 0; i < Math.min(ka.length, kb.length); i++) {
        const va = (a as Doc)[ka[i]!]
        const vb = (b as Doc)[kb[i]!]
        const c = rank(va) - rank(vb) || cmp(ka[i]!, kb[i]!) || compareValues(va, vb)
        if (c !== 0) return c
      }
      return ka.length - kb.length
    }
    case 6: {
      const xa = a as Array<unknown>
      const xb = b as Array<unknown>
      for (let i = 0; i < Math.min(xa.length, xb.length); i++) {
        const c = compareValues(xa[i], xb[i])
        if (c !== 0) return c
      }
      return xa.length - xb.length
    }
    case 7: {
      const ba = a instanceof Uint8Array ? a : (a as Binary).buffer
      const bb = b instanceof Uint8Array ? b : (b as Binary).buffer
      if (ba.length !== bb.length) return ba.length - bb.length
      const sa = a instanceof Uint8Array ? 0 : (a as Binary).sub_type
      const sb = b instanceof Uint8Array ? 0 : (b as Binary).sub_type
      if (sa !== sb) return sa - sb
      return Buffer.compare(Buffer.from(ba), Buffer.from(bb))
    }
    case 8:
      return cmp((a as ObjectId).toHexString(), (b as ObjectId).toHexString())
    case 9:
      return cmp(a ? 1 : 0, b ? 1 : 0)
    case 10:
      return cmp((a as Date).getTime(), (b as Date).getTime())
    case 11:
      return (a as Long).compare(b as Long)
    default:
      return cmp(String(a), String(b))
  }
}

/** A view with {@link Wide} values rounded to numbers, for mingo's expression operators (arithmetic in aggregations). */
export const lossy = (v: unknown): unknown => {
  if (v instanceof Wide) return v.approx
  if (Array.isArray(v)) return v.map(lossy)
  if (isPlainObject(v)) {
    const out: Doc = {}
    for (const k of Object.keys(v)) out[k] = lossy(v[k])
    return out
  }
  return v
}

/** All values at a dotted path, descending into arrays as MongoDB does. */
export const valuesAt = (doc: unknown, path: string): Array<unknown> => {
  const parts = path.split(".")
  let current: Array<unknown> = [doc]
  for (const part of parts) {
    const next: Array<unknown> = []
    for (const c of current) {
      if (Array.isArray(c)) {
        const idx = /^\d+$/.test(part) ? Number(part) : -1
        if (idx >= 0 && idx < c.length) next.push(c[idx])
        else for (const e of c) if (isPlainObject(e) && part in e) next.push(e[part])
      } else if (isPlainObject(c) && part in c) next.push(c[part])
    }
    current = next
  }
  return current
}

/** The value at a dotted path without descending into arrays (undefined when missing). */
export const getPath = (doc: unknown, path: string): unknown => {
  let current: unknown = doc
  for (const part of path.split(".")) {
    if (Array.isArray(current) && /^\d+$/.test(part)) current = current[Number(part)]
    else if (isPlainObject(current)) current = current[part]
    else return undefined
  }
  return current
}

/** Sets a dotted path, creating plain objects on the way. */
export const setPath = (doc: Doc, path: string, value: unknown): void => {
  const parts = path.split(".")
  let current: Doc = doc
  for (let i = 0; i < parts.length - 1; i++) {
    const next = current[parts[i]!]
    if (!isPlainObject(next)) current[parts[i]!] = {}
    current = current[parts[i]!] as Doc
  }
  current[parts[parts.length - 1]!] = value
}

/** A comparator for a sort specification (`{ a: 1, "b.c": -1 }`) over view documents. */
export const sortComparator = (spec: Doc): ((a: Doc, b: Doc) => number) => {
  const keys = Object.keys(spec).map((k) => [k, num(spec[k], 1) < 0 ? -1 : 1] as const)
  const sortKey = (doc: Doc, path: string, dir: number): unknown => {
    const values = valuesAt(doc, path).flatMap((v) => (Array.isArray(v) ? (v.length === 0 ? [undefined] : v) : [v]))
    if (values.length === 0) return undefined
    let best = values[0]
    for (const v of values) if (compareValues(v, best) * dir < 0) best = v
    return best
  }
  return (a, b) => {
    for (const [path, dir] of keys) {
      const c = compareValues(sortKey(a, path, dir), sortKey(b, path, dir))
      if (c !== 0) return c * dir
    }
    return 0
  }
}

const sameView = (a: unknown, b: unknown): boolean => sameKey(a, b) && rank(a) === rank(b)

/**
 * Maps a document updated in view form back to BSON types: values unchanged since
 * `oldRaw` keep their raw form (a Long beyond 2^53 stays exact); values taken from
 * the update's arguments keep the argument's type; arithmetic on a Long, Double or
 * Decimal128 keeps that type.
 */
export const retype = (
  newView: unknown,
  oldRaw: unknown,
  args: ReadonlyMap<string, unknown>,
  path = "",
  elements: ReadonlyMap<string, ReadonlyArray<unknown>> = new Map()
): unknown => {
  const arg = args.get(path)
  if (arg !== undefined && sameView(toView(arg), newView)) return arg
  if (oldRaw !== undefined && sameView(toView(oldRaw), newView) && !isPlainObject(newView) && !Array.isArray(newView)) {
    return oldRaw
  }
  if (typeof newView === "number") {
    const from = oldRaw ?? arg
    if (from !== null && typeof from === "object") {
      switch (bsonType(from)) {
        case "Long":
          return Number.isInteger(newView) ? Long.fromNumber(newView) : newView
        case "Double":
          return new Double(newView)
        case "Decimal128":
          return Decimal128.fromString(String(newView))
      }
    }
    if (arg !== null && typeof arg === "object" && bsonType(arg) === "Long" && Number.isInteger(newView)) {
      return Long.fromNumber(newView)
    }
    return newView
  }
  if (Array.isArray(newView)) {
    const old = Array.isArray(oldRaw) ? oldRaw : []
    const pool = elements.get(path)
    return newView.map((v, i) => {
      // An element added by `$push`/`$addToSet` keeps the type it was sent with.
      if (pool !== undefined && (old[i] === undefined || !sameView(toView(old[i]), v))) {
        const sent = pool.find((p) => sameView(toView(p), v))
        if (sent !== undefined) return sent
      }
      return retype(v, old[i], args, path === "" ? String(i) : `${path}.${i}`, elements)
    })
  }
  if (isPlainObject(newView)) {
    const old = isPlainObject(oldRaw) ? oldRaw : {}
    const out: Doc = {}
    for (const k of Object.keys(newView)) out[k] = retype(newView[k], old[k], args, path === "" ? k : `${path}.${k}`, elements)
    return out
  }
  return newView
}
