/**
 * Append-only durability for the embedded event store: every stored record,
 * stream deletion and consumer-group change is appended as one JSON line to
 * `<dataDir>/journal.jsonl`, and replayed in order on start. Writes are
 * buffered (not fsync'ed per append): a crash may lose the last writes.
 *
 * Internal to the embedded server.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import type { GroupSettings, PersistentSubscriptions } from "./PersistentSubscriptions.js"
import type { Store } from "./Store.js"

type Entry =
  | { k: "r"; s: string; i: string; t: string; c: string; d: string; m: string; cr: string }
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

/** Replays a data directory into a fresh store and groups, then journals further changes. Returns a closer. */
export const openJournal = (
  dataDir: string,
  store: Store,
  groups: PersistentSubscriptions
): { readonly close: () => Promise<void> } => {
  fs.mkdirSync(dataDir, { recursive: true })
  const file = path.join(dataDir, "journal.jsonl")
  if (fs.existsSync(file)) {
    const text = fs.readFileSync(file, "utf8")
    const pendingGroups = new Map<string, { s: string; g: string; settings: GroupSettings }>()
    for (const line of text.split("\n")) {
      if (line.trim() === "") continue
      let e: Entry
      try {
        e = JSON.parse(line) as Entry
      } catch {
        continue // a torn last line after a crash
      }
      if (e.k === "r") {
        store.insert(e.s, e.i, e.t, e.c, Buffer.from(e.d, "base64"), Buffer.from(e.m, "base64"), BigInt(e.cr))
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
  const out = fs.createWriteStream(file, { flags: "a" })
  const write = (e: Entry) => out.write(JSON.stringify(e) + "\n")
  store.journal = {
    record: (r) =>
      write({
        k: "r",
        s: r.streamId,
        i: r.id,
        t: r.type,
        c: r.contentType,
        d: Buffer.from(r.data).toString("base64"),
        m: Buffer.from(r.metadata).toString("base64"),
        cr: r.created.toString(10)
      }),
    streamDeleted: (s, tomb) => write({ k: "d", s, tomb })
  }
  groups.journal = {
    group: (op, s, g, settings) => write(settings ? { k: "g", op, s, g, settings: encodeSettings(settings) } : { k: "g", op, s, g })
  }
  return {
    close: () =>
      new Promise<void>((resolve) => {
        store.journal = undefined
        groups.journal = undefined
        out.end(() => resolve())
      })
  }
}
