/**
 * Exact numbers for the embedded MongoDB server. MongoDB compares numbers of
 * every BSON type (Int32, Long, Double, Decimal128) by their mathematical
 * value; a JavaScript number holds every integer only up to 2^53. Here every
 * finite numeric value is read as an exact decimal, `mantissa × 10^exponent`
 * with a BigInt mantissa (a double's binary fraction has a finite decimal
 * expansion, so doubles are exact too), and compared or added exactly.
 *
 * {@link Wide} stands in the query view for a Long or Decimal128 that no
 * double holds exactly, so that queries and sorts can still tell it apart
 * from its neighbours.
 *
 * @internal
 */
import { Decimal128, type Long } from "bson"

/** A finite decimal `m × 10^e`, or a non-finite value. */
export type Exact =
  | { readonly _tag: "Finite"; readonly m: bigint; readonly e: number }
  | { readonly _tag: "NaN" }
  | { readonly _tag: "Infinity"; readonly negative: boolean }

const bsonType = (v: object): string | undefined => (v as { _bsontype?: string })._bsontype

/**
 * A Long or Decimal128 whose value no double holds: in the query view in place
 * of the lossy number. `toString` is its exact canonical value, so two Wides
 * are equal exactly when their values are (whatever BSON type they came from).
 */
export class Wide {
  constructor(readonly raw: Long | Decimal128, readonly exact: Exact & { readonly _tag: "Finite" }, readonly approx: number) {}
  toString(): string {
    return canonical(this.exact)
  }
  /** mingo stringifies query values while compiling; the exact value is what it should see. */
  toJSON(): string {
    return this.toString()
  }
}

const finite = (m: bigint, e: number): Exact => {
  if (m === 0n) return { _tag: "Finite", m: 0n, e: 0 }
  // normalise: no trailing zeros in the mantissa
  while (m % 10n === 0n) {
    m /= 10n
    e++
  }
  return { _tag: "Finite", m, e }
}

/** The exact value of a double. */
const fromDouble = (x: number): Exact => {
  if (Number.isNaN(x)) return { _tag: "NaN" }
  if (!Number.isFinite(x)) return { _tag: "Infinity", negative: x < 0 }
  if (Number.isInteger(x)) return finite(BigInt(x), 0)
  // x = mantissa × 2^exp with an integer mantissa; 2^-k = 5^k × 10^-k
  let exp = 0
  let mantissa = x
  while (!Number.isInteger(mantissa)) {
    mantissa *= 2
    exp--
  }
  return finite(BigInt(mantissa) * 5n ** BigInt(-exp), exp)
}

/** The exact value of a Decimal128 (from its canonical string). */
const fromDecimalString = (s: string): Exact => {
  if (s === "NaN" || s === "-NaN") return { _tag: "NaN" }
  if (s === "Infinity" || s === "-Infinity") return { _tag: "Infinity", negative: s.startsWith("-") }
  const match = /^(-?)(\d+)(?:\.(\d+))?(?:E([+-]?\d+))?$/i.exec(s)
  if (!match) return { _tag: "NaN" }
  const [, sign, int, frac = "", exp = "0"] = match
  const m = BigInt(`${sign}${int}${frac}`)
  return finite(m, Number(exp) - frac.length)
}

/** The exact value of a numeric value (number, bigint, Int32, Double, Long, Decimal128, Wide), or `undefined`. */
export const exactOf = (v: unknown): Exact | undefined => {
  if (typeof v === "number") return fromDouble(v)
  if (typeof v === "bigint") return finite(v, 0)
  if (v instanceof Wide) return v.exact
  if (v !== null && typeof v === "object") {
    switch (bsonType(v)) {
      case "Int32":
      case "Double":
        return fromDouble((v as { value: number }).value)
      case "Long":
        return finite((v as Long).toBigInt(), 0)
      case "Decimal128":
        return fromDecimalString((v as Decimal128).toString())
    }
  }
  return undefined
}

const align = (a: { m: bigint; e: number }, b: { m: bigint; e: number }): [bigint, bigint, number] => {
  const e = Math.min(a.e, b.e)
  return [a.m * 10n ** BigInt(a.e - e), b.m * 10n ** BigInt(b.e - e), e]
}

/**
 * Compares exact values as MongoDB orders numbers: NaN below every other
 * number, then -Infinity, the finite values, +Infinity.
 */
export const compareExact = (a: Exact, b: Exact): number => {
  const order = (x: Exact) => (x._tag === "NaN" ? 0 : x._tag === "Infinity" ? (x.negative ? 1 : 3) : 2)
  const oa = order(a)
  const ob = order(b)
  if (oa !== ob || oa !== 2) return oa - ob
  const [x, y] = align(a as { m: bigint; e: number }, b as { m: bigint; e: number })
  return x < y ? -1 : x > y ? 1 : 0
}

/** Exact sum; `undefined` when a side is not finite (the caller falls back to doubles). */
export const addExact = (a: Exact, b: Exact): Exact | undefined => {
  if (a._tag !== "Finite" || b._tag !== "Finite") return undefined
  const [x, y, e] = align(a, b)
  return finite(x + y, e)
}

/** Exact product; `undefined` when a side is not finite. */
export const mulExact = (a: Exact, b: Exact): Exact | undefined => {
  if (a._tag !== "Finite" || b._tag !== "Finite") return undefined
  return finite(a.m * b.m, a.e + b.e)
}

/** A canonical text of an exact value: integers as their digits, fractions as `<m>e<e>`. */
export const canonical = (x: Exact): string =>
  x._tag === "NaN" ? "NaN" : x._tag === "Infinity" ? (x.negative ? "-Infinity" : "Infinity") : x.e >= 0 ? (x.m * 10n ** BigInt(x.e)).toString() : `${x.m}e${x.e}`

/** Whether a double holds this value exactly. */
export const isDouble = (x: Exact): boolean => x._tag !== "Finite" || compareExact(fromDouble(Number(canonicalNumber(x))), x) === 0

const canonicalNumber = (x: Exact & { _tag: "Finite" }): string => `${x.m}e${x.e}`

/** The nearest double. */
export const toDouble = (x: Exact): number =>
  x._tag === "NaN" ? NaN : x._tag === "Infinity" ? (x.negative ? -Infinity : Infinity) : Number(canonicalNumber(x))

/** An exact value as a Decimal128 (rounded to 34 digits if it has more). */
export const toDecimal128 = (x: Exact): Decimal128 =>
  Decimal128.fromStringWithRounding(x._tag === "Finite" ? canonicalNumber(x).replace("e", "E") : canonical(x))
