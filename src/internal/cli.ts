/**
 * What the `reconciler` command line needs beyond the library: loading the
 * projections of a module, printing statuses, and retrying dead letters.
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
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

const TYPESCRIPT = /\.[cm]?tsx?$/i

/**
 * The file of tsx's in-process ESM loader API (`tsx/esm/api`, import condition),
 * from beside the module or the working directory, when tsx is installed there.
 */
const findTsx = (modulePath: string): string | undefined => {
  for (const from of [path.resolve(modulePath), path.join(process.cwd(), "package.json")]) {
    try {
      const manifest = createRequire(from).resolve("tsx/package.json")
      const api = JSON.parse(fs.readFileSync(manifest, "utf8"))?.exports?.["./esm/api"]?.import
      const entry = typeof api === "string" ? api : api?.default
      if (typeof entry === "string") return path.join(path.dirname(manifest), entry)
    } catch {
      // not installed there
    }
  }
  return undefined
}

const reason = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** True when this Node strips TypeScript types by itself (22.18+, 23.6+). */
const nativeTypeScript = (): boolean => Boolean((process.features as { typescript?: unknown }).typescript)

/**
 * Imports a module of projections. Compiled JavaScript (`.js`, `.mjs`) is what
 * the service runs. A TypeScript module is imported as it is when this Node
 * strips types itself; otherwise through tsx when tsx is installed beside the
 * module (or in the working directory) — its loader is registered in this
 * process, no launcher in between; without tsx the failure says what to do.
 */
export const importModule = Effect.fn("cli.importModule")(function*(modulePath: string) {
  if (TYPESCRIPT.test(modulePath) && !nativeTypeScript()) {
    const tsx = findTsx(modulePath)
    if (tsx !== undefined) {
      yield* Effect.tryPromise({
        try: async () => void ((await import(pathToFileURL(tsx).href)) as { register: () => unknown }).register(),
        catch: (cause) => new ModuleError({ message: `cannot load tsx (${tsx}) for ${modulePath}: ${reason(cause)}`, cause })
      })
    }
  }
  return yield* Effect.tryPromise({
    try: () => import(pathToFileURL(path.resolve(modulePath)).href) as Promise<Record<string, unknown>>,
    catch: (cause) =>
      new ModuleError({
        message: TYPESCRIPT.test(modulePath) && (cause as { code?: unknown } | null)?.code === "ERR_UNKNOWN_FILE_EXTENSION"
          ? `${modulePath} is TypeScript, which Node ${process.version} does not load by itself: compile it ` +
            `(tsc) and pass the .js file, as a service should run, or install tsx beside it ` +
            `(npm install --save-dev tsx) and reconciler loads it through tsx`
          : `cannot load ${modulePath}: ${reason(cause)}`,
        cause
      })
  })
})

/**
 * The projections and handlers a module exports: its `projections` export when
 * it is an array, otherwise every exported projection or handler.
 */
export const loadRunnables = (modulePath: string) =>
  importModule(modulePath).pipe(
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
