/**
 * Append-only durability for the embedded event store: every append (its
 * events and their links, as one line), stream deletion and consumer-group
 * change is one JSON line in `<dataDir>/journal.jsonl`, replayed in order on
 * start. Each line is handed to the operating system with one synchronous
 * write before the store announces the change, so what a reader or subscriber
 * saw survives the process being killed (a crash of the machine itself may
 * still lose the last writes: lines are not fsync'ed one by one). A torn last
 * line — the process died mid-write — is cut off on start: that append was
 * never acknowledged nor seen.
 *
 * Internal to the embedded server.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import type { GroupSettings, PersistentSubscriptions } from "./PersistentSubscriptions.js"
import type { EventRecord, Store } from "./Store.js"

interface RecordEntry {
  s: string
  i: string
  t: string
  c: string
  d: string
  m: string
  cr: string
}

type Entry =
  | ({ k: "r" } & RecordEntry)
  | { k: "a"; r: Array<RecordEntry> }
  | { k: "d"; s: string; tomb: boolean }
  | { k: "g"; op: "create" | "update" | "delete"; s: string; g: string; settings?: Record<string, unknown> }

const encodeSettings = (s: GroupSettings): Record<string, unknown> => ({
  ...s,
  startFrom: typeof s.startFrom === "bigint" ? s.startFrom.toString(10) : s.startFrom
})
const decodeSettings = (s: Record<string, unknown>): GroupSettings => {
  const startFrom = s.startFrom as string
  return {
    ...(s as unknown as GroupSettings),
    startFrom: startFrom === "start" || startFrom === "end" ? startFrom : BigInt(startFrom)
  }
}

const encodeRecord = (r: EventRecord): RecordEntry => ({
  s: r.streamId,
  i: r.id,
  t: r.type,
  c: r.contentType,
  d: Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength).toString("base64"),
  m: Buffer.from(r.metadata.buffer, r.metadata.byteOffset, r.metadata.byteLength).toString("base64"),
  cr: r.created.toString(10)
})

const insertRecord = (store: Store, e: RecordEntry) =>
  store.insert(e.s, e.i, e.t, e.c, Buffer.from(e.d, "base64"), Buffer.from(e.m, "base64"), BigInt(e.cr))

/** Replays a data directory into a fresh store and groups, then journals further changes. Returns a closer. */
export const openJournal = (
  dataDir: string,
  store: Store,
  groups: PersistentSubscriptions
): { readonly close: () => Promise<void> } => {
  fs.mkdirSync(dataDir, { recursive: true })
  const file = path.join(dataDir, "journal.jsonl")
  if (fs.existsSync(file)) {
    const text = fs.readFileSync(file)
    // Only newline-terminated lines were written whole; cut a torn tail so later lines start clean.
    const end = text.lastIndexOf(0x0a) + 1
    if (end < text.length) fs.truncateSync(file, end)
    const pendingGroups = new Map<string, { s: string; g: string; settings: GroupSettings }>()
    for (const line of text.subarray(0, end).toString("utf8").split("\n")) {
      if (line.trim() === "") continue
      const e = JSON.parse(line) as Entry
      if (e.k === "a") {
        for (const r of e.r) insertRecord(store, r)
      } else if (e.k === "r") {
        insertRecord(store, e)
      } else if (e.k === "d") {
        store.applyDelete(e.s, e.tomb)
      } else if (e.op === "delete") {
        pendingGroups.delete(`${e.s}::${e.g}`)
      } else if (e.settings) {
        pendingGroups.set(`${e.s}::${e.g}`, { s: e.s, g: e.g, settings: decodeSettings(e.settings) })
      }
    }
    // groups start after all records are back, so they resume from their checkpoints
    for (const { g, s, settings } of pendingGroups.values()) groups.create(s, g, settings)
  }
  const fd = fs.openSync(file, "a")
  const write = (e: Entry) => {
    const bytes = Buffer.from(JSON.stringify(e) + "\n", "utf8")
    // writeSync may write less than asked: loop until the whole line is with the OS
    for (let off = 0; off < bytes.length;) off += fs.writeSync(fd, bytes, off)
  }
  store.journal = {
    commit: (records) => write({ k: "a", r: records.map(encodeRecord) }),
    streamDeleted: (s, tomb) => write({ k: "d", s, tomb })
  }
  groups.journal = {
    group: (op, s, g, settings) => write(settings ? { k: "g", op, s, g, settings: encodeSettings(settings) } : { k: "g", op, s, g })
  }
  let closed = false
  return {
    close: async () => {
      if (closed) return
      closed = true
      store.journal = undefined
      groups.journal = undefined
      fs.closeSync(fd)
    }
  }
}
