/**
 * A strict reader of the Prometheus text exposition format (0.0.4), for tests:
 * every line must be a `# HELP`, `# TYPE` or other comment, or a sample
 * `name{label="value",...} value [timestamp]` whose family was typed before
 * it; anything else throws with the line. (The parsers on npm we tried
 * either accept garbage or reject valid histograms.)
 */

export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

export interface Family {
  readonly name: string
  readonly type: string
  readonly help: string | undefined
  readonly samples: Array<Sample>
}

const metricName = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const labelName = /^[a-zA-Z_][a-zA-Z0-9_]*$/
const types = new Set(["counter", "gauge", "histogram", "summary", "untyped"])

const parseValue = (text: string, line: string): number => {
  if (text === "+Inf") return Infinity
  if (text === "-Inf") return -Infinity
  if (text === "NaN") return NaN
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`bad value ${text} in: ${line}`)
  return Number(text)
}

const parseLabels = (text: string, line: string): Record<string, string> => {
  const labels: Record<string, string> = {}
  let i = 0
  while (i < text.length) {
    const eq = text.indexOf("=", i)
    if (eq < 0) throw new Error(`bad labels in: ${line}`)
    const name = text.slice(i, eq).trim()
    if (!labelName.test(name)) throw new Error(`bad label name ${name} in: ${line}`)
    if (text[eq + 1] !== "\"") throw new Error(`unquoted label value in: ${line}`)
    let j = eq + 2
    let value = ""
    for (; j < text.length && text[j] !== "\""; j++) {
      if (text[j] === "\\") {
        const next = text[++j]
        value += next === "n" ? "\n" : next
      } else value += text[j]
    }
    if (j >= text.length) throw new Error(`unterminated label value in: ${line}`)
    if (name in labels) throw new Error(`label ${name} twice in: ${line}`)
    labels[name] = value
    i = j + 1
    if (text[i] === ",") i++
    else if (i < text.length) throw new Error(`bad label separator in: ${line}`)
  }
  return labels
}

/** The families of a scrape, by name. Throws on any line that is not valid text format. */
export const parse = (text: string): Map<string, Family> => {
  const families = new Map<string, Family>()
  const familyOf = (sampleName: string): Family | undefined => {
    const exact = families.get(sampleName)
    if (exact !== undefined) return exact
    for (const suffix of ["_bucket", "_sum", "_count"]) {
      if (sampleName.endsWith(suffix)) {
        const family = families.get(sampleName.slice(0, -suffix.length))
        if (family !== undefined && (family.type === "histogram" || family.type === "summary")) return family
      }
    }
    return undefined
  }
  const helps = new Map<string, string>()
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line)
      if (m === null) continue // another comment
      const [, kind, name, rest] = m
      if (!metricName.test(name!)) throw new Error(`bad metric name in: ${line}`)
      if (kind === "HELP") helps.set(name!, rest!)
      else {
        if (!types.has(rest!)) throw new Error(`bad type in: ${line}`)
        if (families.has(name!)) throw new Error(`family ${name} typed twice`)
        families.set(name!, { name: name!, type: rest!, help: helps.get(name!), samples: [] })
      }
      continue
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line)
    if (m === null) throw new Error(`not a sample: ${line}`)
    const [, name, labels, value] = m
    const family = familyOf(name!)
    if (family === undefined) throw new Error(`sample before its # TYPE: ${line}`)
    family.samples.push({ name: name!, labels: parseLabels(labels ?? "", line), value: parseValue(value!, line) })
  }
  return families
}

/** The value of the sample `name` whose labels include `labels` (undefined when absent). */
export const value = (
  families: Map<string, Family>,
  name: string,
  labels: Readonly<Record<string, string>> = {}
): number | undefined => {
  for (const family of families.values()) {
    for (const sample of family.samples) {
      if (sample.name !== name) continue
      if (Object.entries(labels).every(([k, v]) => sample.labels[k] === v)) return sample.value
    }
  }
  return undefined
}
