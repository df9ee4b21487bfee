/**
 * What a heap snapshot holds, to tell what grows between two (see bench/rss.ts,
 * `RSS_SNAPSHOTS`): self size grouped by node type and name, and for the
 * groups that differ most, the nearest holder that is not a plain object, array
 * or V8 internal (a `Map`'s table, a class instance, a closure's context).
 *
 *   node --import tsx bench/heapSummary.ts A.heapsnapshot [B.heapsnapshot]
 *
 * With two snapshots it prints B − A. Investigation only: not part of `npm run bench`.
 */
import * as fs from "node:fs"

interface Snapshot {
  readonly snapshot: {
    readonly meta: {
      readonly node_fields: ReadonlyArray<string>
      readonly node_types: readonly [ReadonlyArray<string>, ...ReadonlyArray<unknown>]
      readonly edge_fields: ReadonlyArray<string>
      readonly edge_types: readonly [ReadonlyArray<string>, ...ReadonlyArray<unknown>]
    }
  }
  readonly nodes: ReadonlyArray<number>
  readonly edges: ReadonlyArray<number>
  readonly strings: ReadonlyArray<string>
}

const NAMED = new Set(["object", "closure", "native", "hidden", "code", "synthetic"])
/** Holders that say nothing about who keeps an object alive: look further up. */
const ANONYMOUS = /^(object:Object|object:Array|array:|hidden:|object:system|concatenated string:|string:)/

const load = (path: string) => {
  const s = JSON.parse(fs.readFileSync(path, "utf8")) as Snapshot
  const { edge_fields, edge_types, node_fields, node_types } = s.snapshot.meta
  const nf = node_fields.length
  const ef = edge_fields.length
  const [type, name, size, edgeCount] = ["type", "name", "self_size", "edge_count"].map((f) => node_fields.indexOf(f))
  const [edgeType, edgeName, toNode] = ["type", "name_or_index", "to_node"].map((f) => edge_fields.indexOf(f))
  const count = s.nodes.length / nf
  const label = (n: number) => {
    const t = node_types[0][s.nodes[n * nf + type!]!]!
    return `${t}:${NAMED.has(t) ? s.strings[s.nodes[n * nf + name!]!]!.slice(0, 60) : ""}`
  }
  // The first strong retainer of each node (enough to name who holds a group).
  const holder = new Int32Array(count).fill(-1)
  const via: Array<string> = new Array(count)
  let e = 0
  for (let n = 0; n < count; n++) {
    for (let i = 0; i < s.nodes[n * nf + edgeCount!]!; i++, e++) {
      const t = edge_types[0][s.edges[e * ef + edgeType!]!]
      const to = s.edges[e * ef + toNode!]! / nf
      if (t === "weak" || holder[to] !== -1) continue
      holder[to] = n
      const raw = s.edges[e * ef + edgeName!]!
      const edge = t === "element" || t === "hidden" ? "[]" : String(s.strings[raw] ?? raw)
      via[to] = /^\d+$/.test(edge) ? "[]" : edge
    }
  }
  const heldBy = (n: number) => {
    const chain: Array<string> = []
    const seen = new Set([n])
    for (let at = n; chain.length < 12;) {
      const up = holder[at]!
      if (up < 0 || seen.has(up)) break
      seen.add(up)
      chain.push(`${label(up)}.${via[at]}`)
      at = up
      if (!ANONYMOUS.test(label(up))) break
    }
    return chain.slice(-3).join(" <- ")
  }
  const groups = new Map<string, { size: number; count: number; holders: Map<string, number> }>()
  for (let n = 0; n < count; n++) {
    const key = label(n)
    const g = groups.get(key) ?? { size: 0, count: 0, holders: new Map() }
    g.size += s.nodes[n * nf + size!]!
    g.count++
    groups.set(key, g)
  }
  return { groups, count, label, heldBy, sizeOf: (n: number) => s.nodes[n * nf + size!]! }
}

const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(2).padStart(8)

const [a, b] = process.argv.slice(2)
if (a === undefined) {
  console.error("usage: bench/heapSummary.ts A.heapsnapshot [B.heapsnapshot]")
  process.exit(2)
}
const first = load(a)
const second = b === undefined ? undefined : load(b)
const total = (s: typeof first) => [...s.groups.values()].reduce((sum, g) => sum + g.size, 0)
const keys = new Set([...first.groups.keys(), ...(second?.groups.keys() ?? [])])
const rows = [...keys].map((key) => {
  const x = first.groups.get(key)
  const y = second?.groups.get(key)
  return second === undefined
    ? { key, size: x?.size ?? 0, count: x?.count ?? 0 }
    : { key, size: (y?.size ?? 0) - (x?.size ?? 0), count: (y?.count ?? 0) - (x?.count ?? 0) }
}).sort((p, q) => q.size - p.size)
console.log(second === undefined ? `total ${mb(total(first))} MB` : `total ${mb(total(first))} MB -> ${mb(total(second))} MB`)
for (const row of rows.slice(0, 25)) console.log(`${mb(row.size)} MB ${String(row.count).padStart(9)}  ${row.key}`)
// Who holds the largest groups (of the later snapshot): nearest named holder, by size.
const last = second ?? first
const top = new Set(rows.slice(0, 6).map((r) => r.key))
const held = new Map<string, { size: number; count: number }>()
for (let n = 0; n < last.count; n++) {
  const key = last.label(n)
  if (!top.has(key)) continue
  const by = `${key}  held by  ${last.heldBy(n)}`
  const h = held.get(by) ?? { size: 0, count: 0 }
  h.size += last.sizeOf(n)
  h.count++
  held.set(by, h)
}
console.log(`\nholders of the top groups${second === undefined ? "" : " (in B)"}:`)
for (const [by, h] of [...held].sort((p, q) => q[1].size - p[1].size).slice(0, 20)) {
  console.log(`${mb(h.size)} MB ${String(h.count).padStart(9)}  ${by}`)
}
