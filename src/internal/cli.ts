/**
 * What the `reconciler` command line needs beyond the library: loading the
 * projections of a module and printing tables (dead letters: see deadLetters.ts).
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { Data, Effect } from "effect"
import type { Runnable } from "../Projection.js"
import { checkpointId } from "../Projection.js"

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

