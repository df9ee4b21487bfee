/**
 * Read models and their versions: which version of a projection writes which
 * collection, and which version readers see.
 *
 * A read model is named by its projection's `collection`. The first version that
 * runs writes the collection of that name; every later version is built beside
 * it in a collection of its own (`<read model>__v<version>`, see `Rebuild`) and
 * becomes the one readers see at cut-over. The registry (see
 * `ReadModelStore.Registration`) is changed by compare-and-set only.
 *
 * Guarantees:
 * - a projection version never writes documents another version wrote: starting
 *   a version that has no collection of its own on a read model another version
 *   serves fails with {@link VersionConflict};
 * - two projections never write one read model: {@link ReadModelTaken};
 * - {@link live} names the collection of the live version, switched in one step.
 *
 * @since 0.1.0
 */
import { Data, Effect, Option } from "effect"
import type { Projection, Runnable } from "./Projection.js"
import type { Registration } from "./ReadModelStore.js"
import { ReadModelStore, StoreError } from "./ReadModelStore.js"

/**
 * A projection version would write documents another version of it wrote.
 *
 * @since 0.1.0
 */
export class VersionConflict extends Data.TaggedError("VersionConflict")<{
  readonly readModel: string
  readonly projection: string
  readonly version: number
  readonly live: number | undefined
}> {
  override get message() {
    return `read model "${this.readModel}" is served by version ${this.live ?? "(none)"} of projection ${this.projection}; ` +
      `version ${this.version} would write into documents another version wrote. Build version ${this.version} beside it ` +
      `(reconciler rebuild --module <module> --projection ${this.projection}), then switch readers to it ` +
      `(reconciler cutover --module <module> --projection ${this.projection}).`
  }
}

/**
 * Another projection already writes this read model.
 *
 * @since 0.1.0
 */
export class ReadModelTaken extends Data.TaggedError("ReadModelTaken")<{
  readonly readModel: string
  readonly owner: string
  readonly projection: string
}> {
  override get message() {
    return `read model "${this.readModel}" is written by projection ${this.owner}; projection ${this.projection} ` +
      `cannot write it too (give it another collection)`
  }
}

/** The registry of a read model changed under us too often (a busy contention). */
const retries = 20

/** The collection a rebuilt version writes. @since 0.1.0 */
export const versionCollection = (readModel: string, version: number): string => `${readModel}__v${version}`

/**
 * Compare-and-set loop over a read model's registration: `change` returns the
 * result and the next record (or none to leave it).
 */
export const update = <A, E>(
  readModel: string,
  change: (current: Option.Option<Registration>) => Effect.Effect<readonly [A, Registration | undefined], E>
): Effect.Effect<A, E | StoreError, ReadModelStore> =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    for (let attempt = 0; attempt < retries; attempt++) {
      const current = yield* store.registration(readModel)
      const [result, next] = yield* change(current)
      if (next === undefined) return result
      const expected = Option.match(current, { onNone: () => 0, onSome: (r) => r.revision })
      if (yield* store.register({ ...next, revision: expected + 1 }, expected)) return result
    }
    return yield* new StoreError({ message: `the registration of ${readModel} kept changing`, transient: true })
  })

/**
 * Claims the collection a projection version writes, for running it live
 * (`App.run`, `reconciler run`): its own collection when it has one; the read
 * model's name for the first version of a read model (or an existing one that
 * predates the registry, while no version is live). Fails with
 * {@link VersionConflict} or {@link ReadModelTaken} otherwise.
 *
 * @since 0.1.0
 */
export const claim = Effect.fn("ReadModels.claim")(function*(projection: Projection<any, any>) {
  const readModel = projection.collection
  const version = String(projection.version)
  return yield* update(readModel, (current) =>
    Effect.gen(function*(): Generator<any, readonly [string, Registration | undefined], any> {
      if (Option.isNone(current)) {
        return [readModel, {
          readModel,
          projection: projection.name,
          live: projection.version,
          versions: { [version]: readModel },
          revision: 0
        }] as const
      }
      const r = current.value
      if (r.projection !== projection.name) {
        return yield* new ReadModelTaken({ readModel, owner: r.projection, projection: projection.name })
      }
      const own = r.versions[version]
      if (own !== undefined) return [own, undefined] as const
      if (r.live === undefined && !Object.values(r.versions).includes(readModel)) {
        // Nothing live yet and the plain name is no version's: this version has been writing it.
        return [readModel, { ...r, live: projection.version, versions: { ...r.versions, [version]: readModel } }] as const
      }
      return yield* new VersionConflict({ readModel, projection: projection.name, version: projection.version, live: r.live })
    }) as Effect.Effect<readonly [string, Registration | undefined], VersionConflict | ReadModelTaken>)
})

/**
 * The projections with the collections their versions write (see {@link claim});
 * handlers unchanged.
 *
 * @since 0.1.0
 */
export const resolve = (runnables: ReadonlyArray<Runnable>) => Effect.forEach(runnables, guard)

/**
 * The read model a projection moved to another collection belongs to. A symbol
 * key, so that it survives a spread (`{ ...withCollection(p, c), name }`) and
 * stays out of JSON.
 */
const readModelKey: unique symbol = Symbol.for("effect-reconciler/ReadModels/readModel")

/** The read model a projection writes: its `collection`, or the one it was moved from by {@link withCollection}. @since 0.1.0 */
export const readModelOf = (projection: Projection<any, any>): string =>
  (projection as { readonly [readModelKey]?: string })[readModelKey] ?? projection.collection

/** The projection writing `collection` instead of its own (it remembers its read model). @since 0.1.0 */
export const withCollection = <P extends Projection<any, any>>(projection: P, collection: string): P =>
  collection === projection.collection
    ? projection
    : { ...projection, collection, [readModelKey]: readModelOf(projection) }

/**
 * The guard every engine run passes (`Reconciler.run` / `runAll`, and so
 * `App.run`, `Rebuild` and `Verify`): a projection writing its read model's own
 * name is {@link claim}ed — the first version registers it, a version that has
 * a collection of its own is moved to it, any other fails with
 * {@link VersionConflict} (or {@link ReadModelTaken}); a projection moved to
 * another collection by {@link withCollection} (a rebuild's version
 * collection, a scratch collection) fails with {@link VersionConflict} when
 * that collection is another version's. Already-claimed projections cost one
 * read of the registry and no write. Handlers pass unchanged.
 *
 * @since 0.1.0
 */
export const guard = Effect.fn("ReadModels.guard")(function*(runnable: Runnable) {
  if (runnable._tag !== "Projection") return runnable
  const readModel = readModelOf(runnable)
  if (readModel === runnable.collection) return withCollection(runnable, yield* claim(runnable))
  const store = yield* ReadModelStore
  const found = yield* store.registration(readModel)
  if (Option.isSome(found)) {
    const r = found.value
    const other = Object.entries(r.versions).find(([v, c]) => c === runnable.collection && v !== String(runnable.version))
    if (other !== undefined) {
      return yield* new VersionConflict({ readModel, projection: runnable.name, version: runnable.version, live: r.live })
    }
  }
  return runnable
})

/**
 * Where the live version of a read model is: its collection (the read model's
 * own name when nothing is registered), and the version readers see.
 *
 * @since 0.1.0
 */
export interface Live {
  readonly readModel: string
  readonly collection: string
  readonly version: number | undefined
}

/**
 * The live version of read model `readModel`: read the documents of
 * `collection`. Resolve it per query (or cache it briefly): a cut-over changes it
 * in one step, and a cleanup drops the collection it replaced.
 *
 * @since 0.1.0
 */
export const live = Effect.fn("ReadModels.live")(function*(readModel: string) {
  const store = yield* ReadModelStore
  const found = yield* store.registration(readModel)
  return Option.match(found, {
    onNone: (): Live => ({ readModel, collection: readModel, version: undefined }),
    onSome: (r): Live => ({
      readModel,
      collection: r.live === undefined ? readModel : r.versions[String(r.live)] ?? readModel,
      version: r.live
    })
  })
})

/**
 * The collection the projection's version writes: its own when registered,
 * otherwise the read model's name (the projection has not run under the registry yet).
 *
 * @since 0.1.0
 */
export const collectionOf = Effect.fn("ReadModels.collectionOf")(function*(projection: Projection<any, any>) {
  const store = yield* ReadModelStore
  const found = yield* store.registration(projection.collection)
  return Option.match(found, {
    onNone: () => projection.collection,
    onSome: (r) => r.versions[String(projection.version)] ?? projection.collection
  })
})
