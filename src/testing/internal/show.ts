/**
 * Rendering values for people: a plain tree of any value (dates, bigints, maps,
 * sets, bytes and class instances included), one-line text of it, and the paths
 * where two values differ.
 */

/** A value as a JSON-able tree, with tagged forms for what JSON cannot say. */
export const toPlain = (value: unknown, seen: Set<unknown> = new Set()): unknown => {
  switch (typeof value) {
    case "bigint":
      return { $bigint: value.toString() }
    case "number":
      return Number.isFinite(value) && !Object.is(value, -0) ? value : { $number: Object.is(value, -0) ? "-0" : String(value) }
    case "undefined":
      return { $undefined: true }
    case "function":
      return { $function: value.name || "anonymous" }
    case "symbol":
      return { $symbol: String(value) }
    case "object": {
      if (value === null) return null
      if (seen.has(value)) return { $circular: true }
      seen.add(value)
      try {
        if (value instanceof Date) return { $date: Number.isNaN(value.getTime()) ? "Invalid Date" : value.toISOString() }
        if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString("base64") }
        if (Array.isArray(value)) return value.map((item) => toPlain(item, seen))
        if (value instanceof Map) return { $map: [...value].map(([k, v]) => [toPlain(k, seen), toPlain(v, seen)]) }
        if (value instanceof Set) return { $set: [...value].map((v) => toPlain(v, seen)) }
        const out: Record<string, unknown> = {}
        for (const key of Object.keys(value).sort()) out[key] = toPlain((value as Record<string, unknown>)[key], seen)
        return out
      } finally {
        seen.delete(value)
      }
    }
    default:
      return value
  }
}

/** One line of text for any value; equal values give equal text (object keys sorted). */
export const show = (value: unknown): string => JSON.stringify(toPlain(value))

/** What the two sides of a diff are called. */
export type Labels = readonly [expected: string, actual: string]

/**
 * The paths where `expected` and `actual` differ, each as `path: expected X, got Y`
 * (or with other `labels`); empty when equal.
 */
export const diff = (expected: unknown, actual: unknown, labels: Labels = ["expected", "got"]): Array<string> => {
  const lines: Array<string> = []
  walk(toPlain(expected), toPlain(actual), "", lines, labels)
  return lines
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const walk = (expected: unknown, actual: unknown, path: string, lines: Array<string>, labels: Labels): void => {
  const [e, a] = labels
  if (Array.isArray(expected) && Array.isArray(actual)) {
    for (let i = 0; i < Math.max(expected.length, actual.length); i++) {
      if (i >= actual.length) lines.push(`${path}[${i}]: ${e} ${JSON.stringify(expected[i])}, ${a} nothing`)
      else if (i >= expected.length) lines.push(`${path}[${i}]: ${e} nothing, ${a} ${JSON.stringify(actual[i])}`)
      else walk(expected[i], actual[i], `${path}[${i}]`, lines, labels)
    }
    return
  }
  if (isRecord(expected) && isRecord(actual)) {
    for (const key of new Set([...Object.keys(expected), ...Object.keys(actual)])) {
      const at = `${path}.${key}`
      if (!(key in actual)) lines.push(`${at}: ${e} ${JSON.stringify(expected[key])}, ${a} nothing`)
      else if (!(key in expected)) lines.push(`${at}: ${e} nothing, ${a} ${JSON.stringify(actual[key])}`)
      else walk(expected[key], actual[key], at, lines, labels)
    }
    return
  }
  const left = JSON.stringify(expected)
  const right = JSON.stringify(actual)
  if (left !== right) lines.push(`${path === "" ? "(whole document)" : path}: ${e} ${left}, ${a} ${right}`)
}
