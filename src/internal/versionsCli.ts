/**
 * The `reconciler rebuild | cutover | diff | verify` commands: what they print
 * and their exit codes, over the library's Rebuild and Verify.
 */
import { Console, Duration, Effect, Option } from "effect"
import type { Projection, Runnable } from "../Projection.js"
import * as ReadModels from "../ReadModels.js"
import * as Rebuild from "../Rebuild.js"
import * as Verify from "../Verify.js"
import * as Cli from "./cli.js"
import { describeDifference } from "./compare.js"
import * as ProgressBar from "./progress.js"

/** The registry, for commands that resolve each version's collection. */
export { ReadModels }

const projectionsOnly = (runnables: ReadonlyArray<Runnable>) =>
  runnables.filter((r): r is Projection<any, any> => r._tag === "Projection")

/** The one projection named `name` in the module. */
export const projectionOf = (module: string, name: string) =>
  Cli.loadRunnables(module).pipe(
    Effect.flatMap((runnables) => Cli.select(runnables, [name])),
    Effect.flatMap((found) => {
      const projection = projectionsOnly(found)[0]
      return projection !== undefined
        ? Effect.succeed(projection)
        : Effect.fail(new Cli.ModuleError({ message: `${name} is a handler, not a projection: it has no read model` }))
    })
  )

const show = (o: Option.Option<bigint>) => Option.match(o, { onNone: () => "-", onSome: String })

const progressText = (p: Rebuild.Progress) =>
  `${p.projection}@${p.version} → ${p.collection}: position ${show(p.position)} / head ${show(p.head)}, ` +
  `${Math.round(p.rate)} positions/s, ETA ${
    Option.match(p.eta, { onNone: () => "?", onSome: (d) => `${Math.ceil(Duration.toSeconds(d))} s` })
  }`

const fractionOf = (p: Rebuild.Progress) =>
  Option.isSome(p.head) && p.head.value > 0n
    ? Number(Option.getOrElse(p.position, () => -1n) + 1n) / Number(p.head.value + 1n)
    : p.caughtUp ? 1 : 0

/** `reconciler rebuild`: builds beside the live version with a progress bar; cuts over when asked. */
export const rebuild = (args: {
  readonly module: string
  readonly projection: string
  readonly cutover: boolean
  readonly requireIdentical: boolean
  readonly cleanup: boolean
  readonly run: { readonly lanes?: number | undefined; readonly batchSize?: number | undefined }
}) =>
  Effect.gen(function*() {
    const projection = yield* projectionOf(args.module, args.projection)
    const bar = ProgressBar.make()
    const last = yield* Rebuild.run(projection, {
      run: args.run,
      onProgress: (p) => Effect.sync(() => bar.update({ fraction: fractionOf(p), text: progressText(p) })),
      ...(args.cutover ? { cutover: { requireIdentical: args.requireIdentical, cleanup: args.cleanup } } : {})
    })
    bar.done({ fraction: 1, text: progressText(last) })
    yield* Console.log(
      `rebuilt ${projection.name}@${projection.version} into ${last.collection} up to position ${show(last.position)}` +
        (args.cutover ? `; cut over: readers now see version ${projection.version}` : "")
    )
  })

/** `reconciler cutover`. */
export const cutover = (args: {
  readonly module: string
  readonly projection: string
  readonly requireIdentical: boolean
  readonly cleanup: boolean
}) =>
  Effect.gen(function*() {
    const projection = yield* projectionOf(args.module, args.projection)
    const previous = yield* Rebuild.cutover(projection, { requireIdentical: args.requireIdentical, cleanup: args.cleanup })
    yield* Console.log(
      previous === projection.version
        ? `${projection.name}@${projection.version} was already live`
        : `cut over ${projection.name}: readers now see version ${projection.version} (was ${previous ?? "none"})`
    )
    if (args.cleanup) yield* Console.log(`cleaned up: only version ${projection.version} remains`)
  })

/** `reconciler diff`: exit 1 when the versions differ. */
export const diff = (args: { readonly module: string; readonly projection: string; readonly sample: number }) =>
  Effect.gen(function*() {
    const projection = yield* projectionOf(args.module, args.projection)
    const found = yield* Rebuild.diff(projection, { sample: args.sample })
    const c = found.comparison
    const names = { left: `v${found.from ?? "?"}`, right: `v${found.to}` }
    yield* Console.log(
      `${projection.name}: ${names.left} (${found.fromCollection}) vs ${names.right} (${found.toCollection}): ` +
        `${c.compared} documents, ${c.changed} differing, ${c.rightOnly} added, ${c.leftOnly} removed`
    )
    for (const d of c.differences) yield* Console.log(`  ${describeDifference(d, names)}`)
    if (c.changed + c.rightOnly + c.leftOnly > 0) yield* Effect.sync(() => (process.exitCode = 1))
  })

/** `reconciler verify`: exit 1 on any mismatch (left after repair). */
export const verify = (args: { readonly module: string; readonly projections: ReadonlyArray<string>; readonly repair: boolean }) =>
  Effect.gen(function*() {
    const runnables = yield* Cli.loadRunnables(args.module).pipe(Effect.flatMap((all) => Cli.select(all, args.projections)))
    let documents = 0
    let left = 0
    // One read of the events for projections over the same categories (verifyAll shares the fold).
    for (const report of yield* Verify.verifyAll(projectionsOnly(runnables), { repair: args.repair })) {
      for (const line of Verify.describe(report)) yield* Console.log(line)
      documents += report.documents
      left += report.mismatches.length - report.repaired.length
    }
    yield* Console.log(`verified ${documents} documents, ${left} mismatch${left === 1 ? "" : "es"}${args.repair ? " left after repair" : ""}`)
    if (left > 0) yield* Effect.sync(() => (process.exitCode = 1))
  })
