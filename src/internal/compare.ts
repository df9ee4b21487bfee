/**
 * Comparing two collections document by document, in pages (memory bounded by
 * the page, not the collection), whatever order the store scans them in.
 */
import { Chunk, Effect, Stream } from "effect"
import type { StoredDocument } from "../ReadModelStore.js"
import { ReadModelStore } from "../ReadModelStore.js"

/** One field that differs: its dotted path and both values. */
export interface FieldDifference {
  readonly path: string
  readonly left: unknown
  readonly right: unknown
}

/** A document that differs between the two sides. */
export interface DocumentDifference {
  readonly id: string
  /** `changed`: on both sides, different; `left-only` / `right-only`: on one side only. */
  readonly kind: "changed" | "left-only" | "right-only"
  readonly fields: ReadonlyArray<FieldDifference>
  readonly left: StoredDocument | undefined
  readonly right: StoredDocument | undefined
}

export interface Comparison {
  /** Documents (not tombstones) on either side that were compared. */
  readonly compared: number
  readonly changed: number
  readonly leftOnly: number
  readonly rightOnly: number
  /** Left documents `skip` excluded (e.g. moved on since the comparison's horizon). */
  readonly skipped: number
  /** The differences, up to `keep`. */
  readonly differences: ReadonlyArray<DocumentDifference>
}

const PAGE = 500

const isLive = (doc: StoredDocument | undefined): doc is StoredDocument & { body: Record<string, unknown> } =>
  doc !== undefined && !doc.meta.deleted && doc.body !== undefined

/** A value in a form that compares by content: sorted keys, bigint and binary spelled out. */
export const canonical = (value: unknown): string =>
  JSON.stringify(value, function(this: unknown, key, v) {
    const raw = (this as Record<string, unknown>)[key]
    if (typeof raw === "bigint") return { $bigint: raw.toString() }
    if (raw instanceof Date) return { $date: raw.toISOString() }
    if (raw instanceof Uint8Array) return { $bytes: Buffer.from(raw).toString("hex") }
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]))
    }
    return v
  }) ?? "undefined"

const isPlain = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Date) && !(v instanceof Uint8Array)

/** The fields in which two bodies differ, by dotted path (objects recursed, everything else whole). */
export const fieldDifferences = (left: unknown, right: unknown, path = ""): Array<FieldDifference> => {
  if (isPlain(left) && isPlain(right)) {
    const out: Array<FieldDifference> = []
    for (const key of [...new Set([...Object.keys(left), ...Object.keys(right)])].sort()) {
      out.push(...fieldDifferences(left[key], right[key], path === "" ? key : `${path}.${key}`))
    }
    return out
  }
  return canonical(left) === canonical(right) ? [] : [{ path: path === "" ? "(document)" : path, left, right }]
}

/**
 * Compares collection `left` with `right`: every live document of each side
 * (tombstones count as absent). `skip` leaves out left documents (and their
 * right counterparts) that must not be judged. Keeps up to `keep` differences
 * with their documents.
 */
export const compareCollections = (
  left: string,
  right: string,
  options: { readonly keep?: number; readonly skip?: (doc: StoredDocument) => boolean } = {}
) =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const keep = options.keep ?? Number.POSITIVE_INFINITY
    const skip = options.skip ?? (() => false)
    let compared = 0
    let changed = 0
    let leftOnly = 0
    let rightOnly = 0
    let skipped = 0
    const differences: Array<DocumentDifference> = []
    const note = (difference: DocumentDifference) => {
      if (differences.length < keep) differences.push(difference)
    }
    // Left side first: each left document against its right counterpart.
    yield* store.scan(left).pipe(
      Stream.grouped(PAGE),
      Stream.runForEach((page) =>
        Effect.gen(function*() {
          const docs = Chunk.toReadonlyArray(page)
          const others = yield* store.load(right, docs.map((d) => d.id))
          for (const l of docs) {
            const r = others.get(l.id)
            if (skip(l)) {
              skipped++
              continue
            }
            if (!isLive(l) && !isLive(r)) continue
            compared++
            if (isLive(l) && isLive(r)) {
              const fields = fieldDifferences(l.body, r.body)
              if (fields.length > 0) {
                changed++
                note({ id: l.id, kind: "changed", fields, left: l, right: r })
              }
            } else if (isLive(l)) {
              leftOnly++
              note({ id: l.id, kind: "left-only", fields: [], left: l, right: r })
            } else {
              rightOnly++
              note({ id: l.id, kind: "right-only", fields: [], left: l, right: r })
            }
          }
        })
      )
    )
    // Then the right documents the left side does not hold at all.
    yield* store.scan(right).pipe(
      Stream.filter(isLive),
      Stream.grouped(PAGE),
      Stream.runForEach((page) =>
        Effect.gen(function*() {
          const docs = Chunk.toReadonlyArray(page)
          const others = yield* store.load(left, docs.map((d) => d.id))
          for (const r of docs) {
            if (others.has(r.id)) continue
            compared++
            rightOnly++
            note({ id: r.id, kind: "right-only", fields: [], left: undefined, right: r })
          }
        })
      )
    )
    return { compared, changed, leftOnly, rightOnly, skipped, differences } satisfies Comparison
  })

/** A difference as one line: `id: field: left → right, ...`. */
export const describeDifference = (d: DocumentDifference, names: { readonly left: string; readonly right: string }): string => {
  const show = (v: unknown) => (v === undefined ? "(absent)" : canonical(v))
  switch (d.kind) {
    case "changed":
      return `${d.id}: ${d.fields.slice(0, 5).map((f) => `${f.path}: ${show(f.left)} (${names.left}) ≠ ${show(f.right)} (${names.right})`).join("; ")}` +
        (d.fields.length > 5 ? `; … ${d.fields.length - 5} more fields` : "")
    case "left-only":
      return `${d.id}: only in ${names.left}`
    case "right-only":
      return `${d.id}: only in ${names.right}`
  }
}
