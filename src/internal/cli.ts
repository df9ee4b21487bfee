/**
 * What the `reconciler` command line needs beyond the library: loading the
 * projections of a module, printing statuses, and retrying dead letters.
 */
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { Data, Effect, Option, Stream } from "effect"
import type { Delivery } from "../EventSource.js"
import { EventSource } from "../EventSource.js"
import type { Runnable } from "../Projection.js"
import { checkpointId, decoder } from "../Projection.js"
import type { DeadLetter } from "../ReadModelStore.js"
import { ReadModelStore } from "../ReadModelStore.js"
import * as Reconciler from "../Reconciler.js"

/** A module could not be loaded, or exports no projections. */
export class ModuleError extends Data.TaggedError("ModuleError")<{ readonly message: string; readonly cause?: unknown }> {}

const isRunnable = (value: unknown): value is Runnable =>
  typeof value === "object" && value !== null && "_tag" in value &&
  (value._tag === "Projection" || value._tag === "Handler") && "name" in value && "categories" in value

/**
 * The projections and handlers a module exports: its `projections` export when
 * it is an array, otherwise every exported projection or handler.
 */
export const loadRunnables = (modulePath: string) =>
  Effect.tryPromise({
    try: () => import(pathToFileURL(path.resolve(modulePath)).href) as Promise<Record<string, unknown>>,
    catch: (cause) => new ModuleError({ message: `cannot load ${modulePath}: ${cause instanceof Error ? cause.message : String(cause)}`, cause })
  }).pipe(
    Effect.flatMap((module) => {
      const listed = Array.isArray(module.projections) ? module.projections.filter(isRunnable) : []
      const found = listed.length > 0 ? listed : Object.values(module).filter(isRunnable)
      const unique = [...new Map(found.map((r) => [checkpointId(r), r])).values()]
      return unique.length > 0
        ? Effect.succeed(unique as ReadonlyArray<Runnable>)
        : Effect.fail(new ModuleError({ message: `${modulePath} exports no projections (export them, or an array named projections)` }))
    })
  )

/** Keeps the runnables whose name is given (all when none is). */
export const select = (runnables: ReadonlyArray<Runnable>, names: ReadonlyArray<string>) => {
  if (names.length === 0) return Effect.succeed(runnables)
  const unknown = names.filter((name) => !runnables.some((r) => r.name === name))
  return unknown.length > 0
    ? Effect.fail(new ModuleError({ message: `no projection named ${unknown.join(", ")} (known: ${runnables.map((r) => r.name).join(", ")})` }))
    : Effect.succeed(runnables.filter((r) => names.includes(r.name)))
}

/** Rows as aligned columns. */
export const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()
  return [line(header), ...rows.map(line)].join("\n")
}

/**
 * Rows as aligned columns whose last column is folded, not cut: each of its
 * lines goes on a line of its own, indented to the column; with a `width`
 * (a terminal's), a line longer than what fits is wrapped at a space where
 * it can be, and never cut.
 */
export const foldedTable = (
  header: ReadonlyArray<string>,
  rows: ReadonlyArray<ReadonlyArray<string>>,
  width = Infinity
): string => {
  const last = header.length - 1
  const widths = header.slice(0, last).map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)))
  const indent = widths.reduce((sum, w) => sum + w + 2, 0)
  const room = Math.max(40, width - indent)
  const fold = (text: string) =>
    text.split("\n").flatMap((line) => {
      const pieces: Array<string> = []
      let rest = line
      while (rest.length > room) {
        const space = rest.lastIndexOf(" ", room)
        const cut = space > room / 2 ? space : room
        pieces.push(rest.slice(0, cut))
        rest = rest.slice(cut).replace(/^ /, "")
      }
      pieces.push(rest)
      return pieces
    })
  const render = (cells: ReadonlyArray<string>) => {
    const lead = cells.slice(0, last).map((c, i) => c.padEnd(widths[i]!)).join("  ")
    const [first = "", ...more] = fold(cells[last]!)
    return [`${lead}  ${first}`.trimEnd(), ...more.map((line) => `${" ".repeat(indent)}${line}`.trimEnd())].join("\n")
  }
  return [render(header), ...rows.map(render)].join("\n")
}

/** The running service's `/status` could not be read. */
export class ServiceStatusError extends Data.TaggedError("ServiceStatusError")<{ readonly message: string; readonly cause?: unknown }> {}

/** The projections of a running service's `GET /status`. */
export const serviceStatus = (url: string) =>
  Effect.tryPromise({
    try: async (signal) => {
      const response = await fetch(new URL("/status", url), { signal })
      if (!response.ok) throw new Error(`HTTP ${response.status}`)
      const body = await response.json() as { projections?: unknown }
      if (!Array.isArray(body.projections)) throw new Error("no projections in the answer")
      return body.projections as ReadonlyArray<Record<string, unknown>>
    },
    catch: (cause) =>
      new ServiceStatusError({
        message: `cannot read ${url}/status: ${cause instanceof Error ? cause.message : String(cause)}`,
        cause
      })
  }).pipe(Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new ServiceStatusError({ message: `${url}/status did not answer in 10 s` }) }))

/** A running service's statuses as a table. */
export const serviceStatusTable = (states: ReadonlyArray<Record<string, unknown>>): string => {
  const show = (value: unknown) => (value === null || value === undefined ? "-" : String(value))
  return table(
    ["projection", "checkpoint", "head", "behind", "oldest unapplied", "processed", "skipped", "dead-lettered", "state"],
    states.map((s) => [
      show(s.checkpointId ?? s.projection),
      show(s.checkpoint),
      show(s.head),
      show(s.behind),
      s.oldestUnappliedAgeMs === null || s.oldestUnappliedAgeMs === undefined ? "-" : `${s.oldestUnappliedAgeMs} ms`,
      show(s.processed),
      show(s.skipped),
      show(s.deadLettered),
      !s.running ? "not running" : s.unhealthy ? "stalled (unhealthy)" : s.stalled ? "stalled (restarting)" : "ok"
    ])
  )
}

/** What retrying a projection's dead letters did. */
export interface RetryOutcome {
  /** Applied now (or found already applied): the letter was removed. */
  readonly retried: ReadonlyArray<DeadLetter>
  /** Failed again: the letter stays, with its first reason. */
  readonly failed: ReadonlyArray<{ readonly letter: DeadLetter; readonly reason: string }>
  /** A document it touches already holds later events: applying it now would break their order. */
  readonly superseded: ReadonlyArray<DeadLetter>
}

/**
 * Feeds a catch-up projection's dead letters back through the engine (decode,
 * key, fold, guarded write) with the projection as it is now — after a fix of
 * its schema or `evolve`. A letter is applied only while no document it touches
 * has moved past its position (per-document order holds); otherwise it is
 * reported as superseded and kept (rebuild the projection to apply it). Letters
 * that apply are removed; letters that fail again stay.
 */
export const retryDeadLetters = Effect.fn("cli.retryDeadLetters")(function*(runnable: Runnable) {
  const store = yield* ReadModelStore
  const id = checkpointId(runnable)
  const letters = yield* store.deadLetters(id)
  if (letters.length === 0) return { retried: [], failed: [], superseded: [] } satisfies RetryOutcome

  const superseded: Array<DeadLetter> = []
  const candidates: Array<DeadLetter> = []
  if (runnable._tag === "Projection") {
    const decode = decoder(runnable.events)
    for (const letter of letters) {
      const event = decode({ ...letter, id: letter.eventId, type: letter.eventType, created: letter.at })
      if (event === undefined || typeof event === "string") {
        candidates.push(letter) // the engine dead-letters it again, with the reason
        continue
      }
      let keys: ReadonlyArray<string>
      try {
        const key = runnable.key(event as never)
        keys = typeof key === "string" ? [key] : key
      } catch {
        candidates.push(letter)
        continue
      }
      const stored = yield* store.load(runnable.collection, keys)
      const ahead = [...stored.values()].some((doc) => doc.meta.position !== undefined && doc.meta.position >= letter.position)
      if (ahead) superseded.push(letter)
      else candidates.push(letter)
    }
  } else {
    candidates.push(...letters)
  }

  // The engine over the letters alone: a finite source, a store that keeps the
  // real checkpoint untouched and notes what fails again.
  const failedAgain = new Map<string, string>()
  const deliveries: Array<Delivery> = [...candidates]
    .sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0))
    .map((letter) => ({
      id: letter.eventId,
      type: letter.eventType,
      streamId: letter.streamId,
      revision: letter.revision,
      position: letter.position,
      data: letter.data,
      metadata: letter.metadata,
      isJson: true,
      created: letter.at,
      retryCount: 0,
      settle: () => Effect.void
    }))
  const source = EventSource.of({
    subscribe: () => Stream.fromIterable(deliveries),
    head: () => Effect.succeed(Option.none())
  })
  const replayStore = ReadModelStore.of({
    ...store,
    readCheckpoint: () => Effect.succeed(Option.none()),
    commitCheckpoint: () => Effect.void,
    write: (batch) => store.write({ ...batch, checkpoint: undefined }),
    deadLetter: (letter) => Effect.sync(() => void failedAgain.set(letter.eventId, letter.reason))
  })
  yield* Reconciler.run(runnable, { mode: "catch-up", lanes: 1 }).pipe(
    Effect.provideService(EventSource, source),
    Effect.provideService(ReadModelStore, replayStore)
  )
  const retried: Array<DeadLetter> = []
  const failed: Array<{ letter: DeadLetter; reason: string }> = []
  for (const letter of candidates) {
    const reason = failedAgain.get(letter.eventId)
    if (reason === undefined) {
      yield* store.removeDeadLetter(letter.id)
      retried.push(letter)
    } else failed.push({ letter, reason })
  }
  return { retried, failed, superseded } satisfies RetryOutcome
})
