/**
 * Changing a projection without downtime: build its new version beside the live
 * one, compare the two, switch readers in one step, remove the old one.
 *
 * ```
 * rebuild  ── version N+1 folds the whole source into <read model>__v<N+1>
 *             (the engine, full batching; resumable from its own checkpoint)
 * diff     ── live version vs new version, document by document
 * cutover  ── the registry's live version becomes N+1 (one single-document update)
 * cleanup  ── drop the old collection, its checkpoint and dead letters
 * ```
 *
 * While a rebuild runs the live version keeps serving and updating; readers that
 * resolve the live version ({@link ReadModels.live}) see the old version until
 * the cut-over and the new one after it, never a mix.
 *
 * @since 0.1.0
 */
import { Clock, Data, Duration, Effect, Fiber, Option, Schedule } from "effect"
import { EventSource } from "./EventSource.js"
import type { Projection } from "./Projection.js"
import { checkpointId } from "./Projection.js"
import * as ReadModels from "./ReadModels.js"
import type { Registration } from "./ReadModelStore.js"
import { ReadModelStore } from "./ReadModelStore.js"
import * as Reconciler from "./Reconciler.js"
import type { Comparison } from "./internal/compare.js"
import { compareCollections } from "./internal/compare.js"

/**
 * The version asked for is already the live one: a rebuild writes a new version
 * beside the live one (bump `version`).
 *
 * @since 0.1.0
 */
export class AlreadyLive extends Data.TaggedError("AlreadyLive")<{
  readonly projection: string
  readonly version: number
}> {
  override get message() {
    return `version ${this.version} of ${this.projection} is the live version; bump the projection's version to rebuild it beside the live one`
  }
}

/**
 * The version has no collection of its own yet: rebuild it first.
 *
 * @since 0.1.0
 */
export class NotBuilt extends Data.TaggedError("NotBuilt")<{
  readonly projection: string
  readonly version: number
}> {
  override get message() {
    return `version ${this.version} of ${this.projection} has not been built: run reconciler rebuild first`
  }
}

/**
 * The new version is behind what readers see now; cutting over would take them
 * back in time.
 *
 * @since 0.1.0
 */
export class NotCaughtUp extends Data.TaggedError("NotCaughtUp")<{
  readonly projection: string
  readonly version: number
  readonly checkpoint: Option.Option<bigint>
  readonly required: bigint
}> {
  override get message() {
    return `version ${this.version} of ${this.projection} is at ${Option.getOrElse(Option.map(this.checkpoint, String), () => "nothing")}, ` +
      `behind ${this.required}: let the rebuild catch up before cutting over`
  }
}

/**
 * `requireIdentical` was asked and the versions differ.
 *
 * @since 0.1.0
 */
export class NotIdentical extends Data.TaggedError("NotIdentical")<{
  readonly projection: string
  readonly diff: Diff
}> {
  override get message() {
    const d = this.diff.comparison
    return `versions ${this.diff.from} and ${this.diff.to} of ${this.projection} differ (${d.changed} differing, ` +
      `${d.rightOnly} added, ${d.leftOnly} removed): not cutting over`
  }
}

/**
 * Where a rebuild stands. `position` and `head` are positions of the
 * projection's subscription; `rate` in positions per second; `eta` when known.
 *
 * @since 0.1.0
 */
export interface Progress {
  readonly projection: string
  readonly version: number
  readonly collection: string
  readonly position: Option.Option<bigint>
  readonly head: Option.Option<bigint>
  readonly rate: number
  readonly eta: Option.Option<Duration.Duration>
  readonly caughtUp: boolean
}

/** @since 0.1.0 */
export interface RebuildOptions {
  /** The engine's settings (batching, lanes...); the mode is always catch-up. */
  readonly run?: Omit<Reconciler.RunOptions, "mode" | "group"> | undefined
  /** Called with the progress every `interval` (default 500 ms). */
  readonly onProgress?: ((progress: Progress) => Effect.Effect<void>) | undefined
  readonly interval?: Duration.DurationInput | undefined
  /** Cut over once caught up (and clean up when asked). */
  readonly cutover?: CutoverOptions | undefined
}

/**
 * Reserves the collection the projection's version is built into (its own
 * `<read model>__v<version>`), creating the registration if needed. Resuming a
 * rebuild finds the same collection.
 *
 * @since 0.1.0
 */
export const prepare = Effect.fn("Rebuild.prepare")(function*(projection: Projection<any, any>) {
  const readModel = projection.collection
  const version = String(projection.version)
  return yield* ReadModels.update(readModel, (current) =>
    Effect.gen(function*(): Generator<any, readonly [string, Registration | undefined], any> {
      if (Option.isNone(current)) {
        const collection = ReadModels.versionCollection(readModel, projection.version)
        return [collection, {
          readModel,
          projection: projection.name,
          live: undefined,
          versions: { [version]: collection },
          revision: 0
        }] as const
      }
      const r = current.value
      if (r.projection !== projection.name) {
        return yield* new ReadModels.ReadModelTaken({ readModel, owner: r.projection, projection: projection.name })
      }
      if (r.live === projection.version) return yield* new AlreadyLive({ projection: projection.name, version: projection.version })
      const own = r.versions[version]
      if (own !== undefined) return [own, undefined] as const
      const collection = ReadModels.versionCollection(readModel, projection.version)
      return [collection, { ...r, versions: { ...r.versions, [version]: collection } }] as const
    }) as Effect.Effect<readonly [string, Registration | undefined], ReadModels.ReadModelTaken | AlreadyLive>)
})

/** The collection a built version writes, or {@link NotBuilt}. */
const builtCollection = (projection: Projection<any, any>) =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const found = yield* store.registration(projection.collection)
    const r = Option.getOrUndefined(found)
    const collection = r?.versions[String(projection.version)]
    if (r === undefined || collection === undefined) {
      return yield* new NotBuilt({ projection: projection.name, version: projection.version })
    }
    return { registration: r, collection }
  })

/**
 * Builds the projection's current version from the start of its source into its
 * own collection, through the engine (full batching), while the live version
 * keeps running elsewhere; returns when it has caught up with the head as it
 * stood at the start (then cuts over when asked). Stopped or crashed, it resumes
 * from its checkpoint.
 *
 * @since 0.1.0
 */
export const run = Effect.fn("Rebuild.run")(function*(projection: Projection<any, any>, options: RebuildOptions = {}) {
  const source = yield* EventSource
  const store = yield* ReadModelStore
  const collection = yield* prepare(projection)
  const id = checkpointId(projection)
  const interval = options.interval ?? "500 millis"
  const target = yield* source.head(projection.categories)
  return yield* Effect.scoped(Effect.gen(function*() {
    const engine = yield* Effect.forkScoped(
      Reconciler.run(ReadModels.withCollection(projection, collection), { ...options.run, mode: "catch-up" })
    )
    let last: { at: number; position: bigint } | undefined
    let rate = 0
    const observe = Effect.gen(function*() {
      const position = yield* store.readCheckpoint(id)
      const head = yield* source.head(projection.categories)
      const now = yield* Clock.currentTimeMillis
      if (Option.isSome(position)) {
        if (last !== undefined && now > last.at) {
          const instant = Number(position.value - last.position) / ((now - last.at) / 1000)
          rate = rate === 0 ? instant : 0.7 * rate + 0.3 * instant // smoothed
        }
        last = { at: now, position: position.value }
      }
      const caughtUp = Option.isNone(target) ||
        (Option.isSome(position) && position.value >= target.value)
      const remaining = Option.isSome(head) ? Number(head.value - Option.getOrElse(position, () => -1n)) : 0
      const progress: Progress = {
        projection: projection.name,
        version: projection.version,
        collection,
        position,
        head,
        rate,
        eta: caughtUp ? Option.some(Duration.zero) : rate > 0 ? Option.some(Duration.seconds(remaining / rate)) : Option.none(),
        caughtUp
      }
      if (options.onProgress !== undefined) yield* options.onProgress(progress)
      return progress
    })
    const caughtUp = Effect.gen(function*() {
      while (true) {
        const progress = yield* observe
        if (progress.caughtUp) return progress
        yield* Effect.sleep(interval)
      }
    })
    // A failing engine ends the wait with its error, never a wait forever.
    const final = yield* Effect.raceFirst(
      caughtUp,
      Fiber.join(engine).pipe(Effect.zipRight(Effect.dieMessage("the rebuild's engine stopped before catching up")))
    )
    if (options.cutover !== undefined) {
      // The live version may still be moving: keep building until the new one is at least as far.
      const cutoverOptions = options.cutover
      yield* Effect.raceFirst(
        cutover(projection, cutoverOptions).pipe(
          Effect.retry({ schedule: Schedule.spaced(interval), while: (e) => e._tag === "NotCaughtUp" })
        ),
        Fiber.join(engine).pipe(Effect.zipRight(Effect.dieMessage("the rebuild's engine stopped before the cut-over")))
      )
    }
    yield* Fiber.interrupt(engine)
    return final
  }))
})

/**
 * What {@link diff} found between the live version (`from`) and `to`.
 *
 * @since 0.1.0
 */
export interface Diff {
  readonly from: number | undefined
  readonly to: number
  readonly fromCollection: string
  readonly toCollection: string
  /** left: the live version, right: the new one. */
  readonly comparison: Comparison
}

/**
 * Compares the live version of the projection's read model with the
 * projection's version, document by document: how many differ, were added or
 * removed, and up to `sample` differences field by field.
 *
 * @since 0.1.0
 */
export const diff = Effect.fn("Rebuild.diff")(function*(
  projection: Projection<any, any>,
  options: { readonly sample?: number } = {}
) {
  const { collection, registration } = yield* builtCollection(projection)
  const live = yield* ReadModels.live(projection.collection)
  const fromCollection = registration.live === undefined ? projection.collection : live.collection
  const comparison = yield* compareCollections(fromCollection, collection, { keep: options.sample ?? 10 })
  return { from: registration.live, to: projection.version, fromCollection, toCollection: collection, comparison } satisfies Diff
})

/** @since 0.1.0 */
export interface CutoverOptions {
  /** Refuse ({@link NotIdentical}) when the versions differ in any document. */
  readonly requireIdentical?: boolean | undefined
  /** Then remove the replaced version (see {@link cleanup}). */
  readonly cleanup?: boolean | undefined
}

/**
 * Makes the projection's version the one readers see, in one compare-and-set of
 * the registry. Requires it to be built and at least as far as the live version
 * (or the head, when nothing is live); with `requireIdentical`, identical to it.
 * Cutting over to the live version again is a no-op. Returns the version that
 * was live before.
 *
 * @since 0.1.0
 */
export const cutover = Effect.fn("Rebuild.cutover")(function*(
  projection: Projection<any, any>,
  options: CutoverOptions = {}
) {
  const store = yield* ReadModelStore
  const source = yield* EventSource
  const { registration } = yield* builtCollection(projection)
  const previous = registration.live
  if (previous !== projection.version) {
    const checkpoint = yield* store.readCheckpoint(checkpointId(projection))
    const required = previous !== undefined
      ? yield* store.readCheckpoint(`${projection.name}@${previous}`)
      : yield* source.head(projection.categories)
    if (Option.isSome(required) && (Option.isNone(checkpoint) || checkpoint.value < required.value)) {
      return yield* new NotCaughtUp({ projection: projection.name, version: projection.version, checkpoint, required: required.value })
    }
    if (options.requireIdentical === true) {
      const found = yield* diff(projection)
      const c = found.comparison
      if (c.changed + c.leftOnly + c.rightOnly > 0) return yield* new NotIdentical({ projection: projection.name, diff: found })
    }
    yield* ReadModels.update(projection.collection, (current) =>
      Effect.gen(function*(): Generator<any, readonly [undefined, Registration | undefined], any> {
        if (Option.isNone(current)) return yield* new NotBuilt({ projection: projection.name, version: projection.version })
        // Someone else cut over meanwhile: the checks above no longer hold.
        if (current.value.live !== previous) {
          return yield* new NotCaughtUp({ projection: projection.name, version: projection.version, checkpoint, required: -1n })
        }
        return [undefined, { ...current.value, live: projection.version }] as const
      }) as Effect.Effect<readonly [undefined, Registration | undefined], NotBuilt | NotCaughtUp>)
  }
  if (options.cleanup === true) yield* cleanup(projection)
  return previous
})

/**
 * Removes the versions of the read model before the live one: their
 * collections, checkpoints, dead letters and registrations (versions after it,
 * being built, stay). Readers that resolved an old version before the cut-over
 * and still read it find it gone. Returns the versions removed.
 *
 * @since 0.1.0
 */
export const cleanup = Effect.fn("Rebuild.cleanup")(function*(projection: Projection<any, any>) {
  const store = yield* ReadModelStore
  const found = yield* store.registration(projection.collection)
  if (Option.isNone(found) || found.value.live === undefined) return [] as ReadonlyArray<number>
  const live = found.value.live
  const removed: Array<number> = []
  for (const [version, collection] of Object.entries(found.value.versions)) {
    // Versions after the live one are being built: not ours to remove.
    if (Number(version) >= live) continue
    // Unregistered first: a restarted old version is refused from now on.
    yield* ReadModels.update(projection.collection, (current) =>
      Effect.succeed([undefined, Option.match(current, {
        onNone: () => undefined,
        onSome: (r) => {
          const { [version]: _gone, ...versions } = r.versions
          return r.versions[version] === undefined ? undefined : { ...r, versions }
        }
      })] as const))
    yield* store.dropCollection(collection)
    const id = `${projection.name}@${version}`
    yield* store.removeCheckpoint(id)
    for (const letter of yield* store.deadLetters(id)) yield* store.removeDeadLetter(letter.id)
    removed.push(Number(version))
  }
  return removed as ReadonlyArray<number>
})
