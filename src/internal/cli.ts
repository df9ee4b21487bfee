/**
 * What the `reconciler` command line needs beyond the library: loading the
 * projections of a module and printing tables (dead letters: see deadLetters.ts).
 */
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
