/**
 * The embedded server's data: databases, collections, the `_id` index, unique
 * secondary indexes and multi-version history for snapshot isolation.
 *
 * Every committed change gets a sequence number. While transactions are open,
 * a collection keeps the older versions of the documents that change, so a
 * transaction reads the state as of its start (its snapshot) plus its own writes.
 *
 * @internal
 */
import { Query } from "./Mingo.js"
import { DuplicateKey, badValue, noSuchTransaction, writeConflict } from "./Errors.js"
import { type Doc, getPath, keyOf, num, toView } from "./Values.js"

/** One committed (or transaction-local) version of a document. */
export interface Version {
  readonly seq: number
  readonly raw: Doc
  readonly view: Doc
}

/** The view is made on first use: a document only replaced and read back by `_id` never needs one. */
class StoredVersion implements Version {
  private cached: Doc | undefined = undefined
  constructor(
    readonly raw: Doc,
    readonly seq: number
  ) {}
  get view(): Doc {
    return (this.cached ??= toView(this.raw) as Doc)
  }
  at(seq: number): StoredVersion {
    const v = new StoredVersion(this.raw, seq)
    v.cached = this.cached
    return v
  }
}

export const makeVersion = (raw: Doc, seq: number): Version => new StoredVersion(raw, seq)

/** The same document committed under another sequence number (a spread would lose the lazy view). */
export const withSeq = (v: Version, seq: number): Version =>
  v instanceof StoredVersion ? v.at(seq) : { seq, raw: v.raw, view: v.view }

/** An index definition; unique indexes keep a map from key tuple to the owning `_id` key. */
export interface Index {
  readonly name: string
  readonly key: Doc
  readonly fields: ReadonlyArray<string>
  readonly unique: boolean
  readonly sparse: boolean
  readonly partial: Query | undefined
  readonly spec: Doc
  readonly entries: Map<string, string>
}

/** The tuple key of a document in an index, or `undefined` when the index skips it (sparse, partial). */
export const indexTuple = (index: Index, view: Doc): string | undefined => {
  const values = index.fields.map((f) => getPath(view, f))
  if (index.sparse && values.every((v) => v === undefined)) return undefined
  if (index.partial !== undefined && !index.partial.test(view)) return undefined
  return keyOf(values.map((v) => (v === undefined ? null : v)))
}

/** A change for the journal. */
export type JournalEntry =
  | { readonly t: "put"; readonly db: string; readonly c: string; readonly doc: Doc }
  | { readonly t: "del"; readonly db: string; readonly c: string; readonly key: string }
  | { readonly t: "cc"; readonly db: string; readonly c: string }
  | { readonly t: "dc"; readonly db: string; readonly c: string }
  | { readonly t: "dd"; readonly db: string }
  | { readonly t: "ci"; readonly db: string; readonly c: string; readonly spec: Doc }
  | { readonly t: "di"; readonly db: string; readonly c: string; readonly name: string }

/** A collection: documents by canonical `_id` key (the `_id` index), secondary indexes, history. */
export class Collection {
  readonly docs = new Map<string, Version>()
  readonly history = new Map<string, Array<{ seq: number; v: Version | undefined }>>()
  readonly indexes = new Map<string, Index>()

  constructor(
    readonly db: string,
    readonly name: string,
    readonly storage: Storage
  ) {
    this.indexes.set("_id_", makeIndex({ v: 2, key: { _id: 1 }, name: "_id_" }))
  }

  get ns(): string {
    return `${this.db}.${this.name}`
  }

  /** The version visible at `snapshot` (latest committed when undefined). */
  visible(key: string, snapshot: number | undefined): Version | undefined {
    if (snapshot === undefined) return this.docs.get(key)
    const hist = this.history.get(key)
    if (hist === undefined) return this.docs.get(key)
    for (let i = hist.length - 1; i >= 0; i--) if (hist[i]!.seq <= snapshot) return hist[i]!.v
    return undefined
  }

  /** The latest committed sequence number that touched `key`. */
  lastSeq(key: string): number {
    const hist = this.history.get(key)
    if (hist !== undefined) return hist[hist.length - 1]!.seq
    return this.docs.get(key)?.seq ?? 0
  }

  *scan(snapshot: number | undefined): Iterable<[string, Version]> {
    if (snapshot === undefined || this.history.size === 0) {
      yield* this.docs
      return
    }
    for (const key of this.docs.keys()) {
      const v = this.visible(key, snapshot)
      if (v !== undefined) yield [key, v]
    }
    for (const key of this.history.keys()) {
      if (this.docs.has(key)) continue
      const v = this.visible(key, snapshot)
      if (v !== undefined) yield [key, v]
    }
  }

  uniqueIndexes(): Array<Index> {
    const out: Array<Index> = []
    for (const index of this.indexes.values()) if (index.unique && index.name !== "_id_") out.push(index)
    return out
  }

  /** Throws a duplicate key when `view` would collide in a unique index with a document other than `key` (latest committed state). */
  checkUnique(key: string, view: Doc, ignore?: (owner: string) => boolean): void {
    for (const index of this.uniqueIndexes()) {
      const tuple = indexTuple(index, view)
      if (tuple === undefined) continue
      const owner = index.entries.get(tuple)
      if (owner !== undefined && owner !== key && !(ignore?.(owner) ?? false)) throw duplicate(this, index, view)
    }
  }

  /** Applies a committed change (`undefined` deletes) with sequence number `seq`. */
  commit(key: string, version: Version | undefined, seq: number): void {
    const prev = this.docs.get(key)
    if (this.storage.recording()) {
      let hist = this.history.get(key)
      if (hist === undefined) {
        hist = [{ seq: prev?.seq ?? 0, v: prev }]
        this.history.set(key, hist)
      }
      hist.push({ seq, v: version })
      // Keep only the versions some open snapshot sees, and the latest.
      const needed = new Set<number>([hist.length - 1])
      for (const t of this.storage.active) {
        for (let i = hist.length - 1; i >= 0; i--) {
          if (hist[i]!.seq <= t.snapshot) {
            needed.add(i)
            break
          }
        }
      }
      if (needed.size < hist.length) {
        const kept = hist.filter((_, i) => needed.has(i))
        hist.length = 0
        hist.push(...kept)
      }
    }
    for (const index of this.uniqueIndexes()) {
      if (prev !== undefined) {
        const t = indexTuple(index, prev.view)
        if (t !== undefined && index.entries.get(t) === key) index.entries.delete(t)
      }
      if (version !== undefined) {
        const t = indexTuple(index, version.view)
        if (t !== undefined) index.entries.set(t, key)
      }
    }
    if (version === undefined) this.docs.delete(key)
    else this.docs.set(key, version)
  }

  addIndex(spec: Doc): Index {
    const index = makeIndex(spec)
    if (index.unique) {
      for (const [key, v] of this.docs) {
        const t = indexTuple(index, v.view)
        if (t === undefined) continue
        if (index.entries.has(t)) throw duplicate(this, index, v.view)
        index.entries.set(t, key)
      }
    }
    this.indexes.set(index.name, index)
    return index
  }
}

export const duplicate = (c: Collection, index: Index, view: Doc): DuplicateKey => {
  const keyValue: Doc = {}
  for (const f of index.fields) keyValue[f] = getPath(view, f) ?? null
  return new DuplicateKey(c.ns, index.name, index.key, keyValue)
}

export const duplicateId = (c: Collection, id: unknown): DuplicateKey =>
  new DuplicateKey(c.ns, "_id_", { _id: 1 }, { _id: id })

export const indexName = (key: Doc): string =>
  Object.keys(key)
    .map((k) => `${k}_${String(typeof key[k] === "string" ? key[k] : num(key[k], 1))}`)
    .join("_")

const makeIndex = (spec: Doc): Index => {
  const key = spec.key
  if (key === null || typeof key !== "object" || Object.keys(key).length === 0) throw badValue("index key pattern is required")
  const name = typeof spec.name === "string" ? spec.name : indexName(key as Doc)
  const partial = spec.partialFilterExpression as Doc | undefined
  return {
    name,
    key: key as Doc,
    fields: Object.keys(key),
    unique: spec.unique === true || name === "_id_",
    sparse: spec.sparse === true,
    partial: partial === undefined ? undefined : new Query(toView(partial) as Doc, {}),
    spec: { ...spec, name },
    entries: new Map()
  }
}

/** An open multi-document transaction: its snapshot and its uncommitted writes. */
export class Transaction {
  state: "active" | "committed" | "aborted" = "active"
  readonly writes = new Map<Collection, Map<string, Version | undefined>>()
  /** Per collection and unique index: tuple → key, for the transaction's own writes. */
  readonly uniques = new Map<Index, Map<string, string>>()
  readonly startedAt = Date.now()
  /** Called once when the transaction ends (writers outside it wait for this). */
  readonly onEnd: Array<() => void> = []

  constructor(
    readonly lsid: string,
    readonly txnNumber: number,
    readonly snapshot: number
  ) {}
}

/** All databases, the commit sequence, open transactions and their write locks. */
export class Storage {
  seq = 0
  readonly dbs = new Map<string, Map<string, Collection>>()
  readonly active = new Set<Transaction>()
  readonly locks = new Map<string, Transaction>()
  journal: ((entries: ReadonlyArray<JournalEntry>) => void) | undefined = undefined

  recording(): boolean {
    return this.active.size > 0
  }

  collection(db: string, name: string): Collection | undefined {
    return this.dbs.get(db)?.get(name)
  }

  /** The collection, created (and journaled) when missing. */
  ensureCollection(db: string, name: string): Collection {
    let colls = this.dbs.get(db)
    if (colls === undefined) {
      colls = new Map()
      this.dbs.set(db, colls)
    }
    let c = colls.get(name)
    if (c === undefined) {
      if (name.length === 0 || name.includes("$")) throw badValue(`Invalid collection name: ${name}`)
      c = new Collection(db, name, this)
      colls.set(name, c)
      this.journal?.([{ t: "cc", db, c: name }])
    }
    return c
  }

  dropCollection(db: string, name: string): boolean {
    const colls = this.dbs.get(db)
    if (colls === undefined || !colls.delete(name)) return false
    this.journal?.([{ t: "dc", db, c: name }])
    return true
  }

  dropDatabase(db: string): void {
    if (this.dbs.delete(db)) this.journal?.([{ t: "dd", db }])
  }

  /** Aborts transactions open longer than `limitMs` (MongoDB's transactionLifetimeLimitSeconds, 60 s). */
  expire(limitMs: number, now = Date.now()): void {
    for (const t of this.active) if (now - t.startedAt > limitMs) this.end(t, "aborted")
  }

  begin(lsid: string, txnNumber: number): Transaction {
    const t = new Transaction(lsid, txnNumber, this.seq)
    this.active.add(t)
    return t
  }

  /** Ends a transaction (commit already applied or abort): releases locks, drops history when nobody needs it. */
  end(t: Transaction, state: "committed" | "aborted"): void {
    t.state = state
    this.active.delete(t)
    for (const [c, writes] of t.writes) for (const key of writes.keys()) {
      const lock = `${c.ns}\u0000${key}`
      if (this.locks.get(lock) === t) this.locks.delete(lock)
    }
    if (this.active.size === 0) for (const colls of this.dbs.values()) for (const c of colls.values()) c.history.clear()
    for (const f of t.onEnd.splice(0)) f()
  }

  /** Commits a transaction's writes atomically, or aborts it with a write conflict. */
  commitTransaction(t: Transaction): void {
    if (t.state !== "active") throw noSuchTransaction(t.txnNumber)
    for (const [c, writes] of t.writes) {
      for (const [key, v] of writes) {
        if (v === undefined) continue
        try {
          c.checkUnique(key, v.view, (owner) => {
            if (!writes.has(owner)) return false
            const mine = writes.get(owner)
            return mine === undefined || !c.uniqueIndexes().some((i) => indexTuple(i, mine.view) === indexTuple(i, v.view))
          })
        } catch {
          this.end(t, "aborted")
          throw writeConflict()
        }
      }
    }
    const seq = ++this.seq
    const entries: Array<JournalEntry> = []
    for (const [c, writes] of t.writes) {
      for (const [key, v] of writes) {
        const version = v === undefined ? undefined : withSeq(v, seq)
        c.commit(key, version, seq)
        entries.push(
          version === undefined
            ? { t: "del", db: c.db, c: c.name, key }
            : { t: "put", db: c.db, c: c.name, doc: version.raw }
        )
      }
    }
    this.end(t, "committed")
    if (entries.length > 0) this.journal?.(entries)
  }
}
