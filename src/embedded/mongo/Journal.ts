/**
 * Optional durability for the embedded server: every committed change is appended
 * to `journal.bson` in the data directory before the reply is sent; on start the
 * journal is replayed and compacted (rewritten as the current state), and again whenever it
 * has grown well past the size of the state.
 *
 * Writes go to the OS (they survive a crash of the process); `fsync: true` also
 * flushes to disk on every commit.
 *
 * @internal
 */
import { deserialize, serialize } from "bson"
import * as fs from "node:fs"
import * as path from "node:path"
import { type JournalEntry, type Storage, makeVersion } from "./Storage.js"
import { type Doc, keyOf } from "./Values.js"

const decodeOptions = { promoteValues: false } as const
const COMPACT_AFTER_BYTES = 64 * 1024 * 1024

const apply = (storage: Storage, e: JournalEntry): void => {
  switch (e.t) {
    case "put": {
      const c = storage.ensureCollection(e.db, e.c)
      const seq = ++storage.seq
      c.commit(keyOf(e.doc._id), makeVersion(e.doc, seq), seq)
      return
    }
    case "del": {
      const c = storage.collection(e.db, e.c)
      if (c !== undefined) c.commit(e.key, undefined, ++storage.seq)
      return
    }
    case "cc":
      storage.ensureCollection(e.db, e.c)
      return
    case "dc":
      storage.dropCollection(e.db, e.c)
      return
    case "dd":
      storage.dropDatabase(e.db)
      return
    case "ci": {
      const c = storage.ensureCollection(e.db, e.c)
      if (!c.indexes.has(String(e.spec.name))) c.addIndex(e.spec)
      return
    }
    case "di":
      storage.collection(e.db, e.c)?.indexes.delete(e.name)
      return
  }
}

/** The current state as journal entries. */
const snapshot = (storage: Storage): Array<JournalEntry> => {
  const out: Array<JournalEntry> = []
  for (const [db, colls] of storage.dbs) {
    for (const [name, c] of colls) {
      out.push({ t: "cc", db, c: name })
      for (const index of c.indexes.values()) if (index.name !== "_id_") out.push({ t: "ci", db, c: name, spec: index.spec })
      for (const v of c.docs.values()) out.push({ t: "put", db, c: name, doc: v.raw })
    }
  }
  return out
}

const encode = (entries: ReadonlyArray<JournalEntry>): Buffer =>
  Buffer.concat(entries.map((e) => serialize(e as unknown as Doc)))

/** An open journal; `close` detaches it from the storage and closes the file. */
export interface Journal {
  readonly close: () => void
}

/** Loads the data directory into `storage` and journals every later change there. */
export const open = (
  storage: Storage,
  dataDir: string,
  options: { readonly fsync?: boolean; readonly compactAfterBytes?: number } = {}
): Journal => {
  fs.mkdirSync(dataDir, { recursive: true })
  const file = path.join(dataDir, "journal.bson")
  if (fs.existsSync(file)) {
    const buf = fs.readFileSync(file)
    let offset = 0
    while (offset + 4 <= buf.length) {
      const size = buf.readInt32LE(offset)
      if (size < 5 || offset + size > buf.length) break // a torn tail from a crash mid-write
      apply(storage, deserialize(buf.subarray(offset, offset + size), decodeOptions) as unknown as JournalEntry)
      offset += size
    }
  }
  const compact = (): number => {
    const tmp = `${file}.tmp`
    const bytes = encode(snapshot(storage))
    fs.writeFileSync(tmp, bytes)
    if (options.fsync === true) {
      const tfd = fs.openSync(tmp, "r")
      fs.fsyncSync(tfd)
      fs.closeSync(tfd)
    }
    fs.renameSync(tmp, file)
    return bytes.length
  }
  let base = compact()
  let written = 0
  let fd = fs.openSync(file, "a")
  storage.journal = (entries) => {
    const bytes = encode(entries)
    fs.writeSync(fd, bytes)
    if (options.fsync === true) fs.fsyncSync(fd)
    written += bytes.length
    // Rewrite the journal as the current state once it has grown well past it.
    if (written > Math.max(options.compactAfterBytes ?? COMPACT_AFTER_BYTES, 2 * base)) {
      fs.closeSync(fd)
      base = compact()
      written = 0
      fd = fs.openSync(file, "a")
    }
  }
  return {
    close: () => {
      storage.journal = undefined
      fs.closeSync(fd)
    }
  }
}
