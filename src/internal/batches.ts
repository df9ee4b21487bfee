/**
 * A lane's batch: for a projection, fold per document and one guarded write;
 * for a handler, each event in order with retries.
 */
import { Cause, Effect, Either, Metric } from "effect"
import type { ReconcilerError } from "../Errors.js"
import type { Handler, Projection } from "../Projection.js"
import type { Context } from "./context.js"
import type { Current } from "./fold.js"
import { decodeStored, documentCodec, foldBatch } from "./fold.js"
import type { HeldPart } from "./quarantine.js"
import { fromDelivery } from "./quarantine.js"
import type { StreamOrder } from "./streamOrder.js"
import type { Part, Tracked } from "./tracked.js"
import { partDone } from "./tracked.js"
import type { Watermark } from "./watermark.js"

/** Processes a lane's batch; returns the deliveries it finished. */
export type Batch = (parts: ReadonlyArray<Part>) => Effect.Effect<ReadonlyArray<Tracked>, ReconcilerError>

/** The batch processor of a lane (each lane has its own: it owns a cache). */
export const make = (ctx: Context, watermark: Watermark, order?: StreamOrder): Batch =>
  ctx.runnable._tag === "Projection" ? projectionBatch(ctx, ctx.runnable, watermark, order) : handlerBatch(ctx, ctx.runnable)

/**
 * A lane's batch of a projection: fold per document, one guarded write.
 *
 * Each lane caches the documents it wrote last (a lane owns its keys, so it is
 * their usual writer). The cache is only a guess of the stored version: every
 * write is still guarded, and a conflict evicts the entry and reloads.
 *
 * No checkpoint travels with the write unless `transactional` is set: guarded
 * writes are idempotent by themselves, and the committer alone moves the
 * checkpoint, after them.
 *
 * The per-batch spans capture no stack trace: it would point into the engine's
 * own batch loop, tells a user nothing, and capturing it cost 2% of the
 * engine's CPU (bench/engine.ts profile).
 */
const projectionBatch = (
  ctx: Context,
  projection: Projection<any, any>,
  watermark: Watermark,
  order: StreamOrder | undefined
): Batch => {
  const { durably, options, store } = ctx
  const codec = documentCodec(projection)
  const cache = new Map<string, Current | undefined>()
  /** Persistent mode: when each cached document was loaded (see {@link StreamOrder.loaded}). */
  const loadedAt = new Map<string, number>()
  // Least recently written first, once full: while the cache has room its order
  // does not matter, so an entry is moved to the end (two map operations) only then.
  const remember = (id: string, current: Current | undefined) => {
    if (cache.size < options.cacheSize) {
      cache.set(id, current)
      return
    }
    cache.delete(id)
    cache.set(id, current)
    if (cache.size > options.cacheSize) {
      const oldest = cache.keys().next().value!
      cache.delete(oldest)
      loadedAt.delete(oldest)
    }
  }
  const checkpoint = () =>
    options.transactional && options.mode === "catch-up" && watermark.current !== undefined
      ? { projection: ctx.id, position: watermark.current }
      : undefined
  const attributes = { projection: projection.name }
  const load = (missing: ReadonlyArray<string>) =>
    durably(store.load(projection.collection, missing), "loading documents").pipe(
      Effect.withSpan("Reconciler.load", { captureStackTrace: false, attributes: { ...attributes, documents: missing.length } })
    )
  const write = (writes: Parameters<typeof store.write>[0]["writes"]) =>
    Effect.suspend(() => {
      const started = performance.now()
      return durably(
        store.write({ collection: projection.collection, writes, checkpoint: checkpoint() }),
        "writing documents"
      ).pipe(
        Effect.tap(() => Metric.update(ctx.metrics.writeLatency, performance.now() - started)),
        Effect.withSpan("Reconciler.write", { captureStackTrace: false, attributes: { ...attributes, documents: writes.length } })
      )
    })
  const quarantine = ctx.quarantine
  return (parts) =>
    Effect.gen(function*() {
      yield* Metric.update(ctx.metrics.batchSizes, parts.length)
      const poison = new Map<Part, string>()
      // Quarantine (catch-up): the first poison part of a document, and its parts after it.
      const blocking = new Map<string, { part: Part; reason: string }>()
      const held: Array<Part> = []
      let applied = 0
      let duplicates = 0
      let todo = parts
      if (quarantine !== undefined && quarantine.documents.size > 0) {
        const holding = parts.filter((part) => quarantine.documents.has(part.key))
        if (holding.length > 0) {
          todo = parts.filter((part) => !quarantine.documents.has(part.key))
          const released = yield* durably(quarantine.hold(holding.map(heldPart)), "holding events of quarantined documents")
          for (const docId of released) cache.delete(docId)
        }
      }
      // Guard conflicts mean another writer moved a document: reload it and fold its events again.
      while (todo.length > 0) {
        // The batch folds onto its own copy of the documents it touches: remembering what
        // it loads may evict a cached one it also needs (a document only `read`, never
        // written, would then look absent with no guard to catch it).
        const current = new Map<string, Current | undefined>()
        const missing: Array<string> = []
        for (const part of todo) {
          if (current.has(part.key)) continue
          const cached = cache.get(part.key)
          if (cached === undefined && !cache.has(part.key)) missing.push(part.key)
          current.set(part.key, cached)
        }
        const unreadable = new Map<string, string>()
        if (missing.length > 0) {
          // One query for every document the batch misses.
          const loaded = yield* load(missing)
          for (const docId of missing) {
            const decoded = decodeStored(projection, codec, loaded.get(docId))
            if (Either.isRight(decoded)) {
              current.set(docId, decoded.right)
              remember(docId, decoded.right)
            } else unreadable.set(docId, decoded.left)
          }
          if (order !== undefined) {
            const epoch = order.loaded()
            for (const docId of missing) loadedAt.set(docId, epoch)
          }
        }
        // Persistent mode: a document is folded onto only with its streams' progress read
        // after it was loaded, so that a marker another consumer pruned is known from it.
        if (order !== undefined) yield* order.refreshSince(todo, (key) => loadedAt.get(key) ?? 0)
        let foldable: ReadonlyArray<Part> = todo
        if (unreadable.size > 0) {
          const readable: Array<Part> = []
          for (const part of todo) {
            const reason = unreadable.get(part.key)
            if (reason === undefined) readable.push(part)
            else if (quarantine === undefined) poison.set(part, reason)
            else if (!blocking.has(part.key)) blocking.set(part.key, { part, reason })
            else held.push(part)
          }
          foldable = readable
        }
        const result = yield* Effect.sync(() =>
          foldBatch(projection, codec, options.mode, (docId) => current.has(docId) ? current.get(docId) : cache.get(docId), foldable, quarantine !== undefined, order?.durable)
        ).pipe(Effect.withSpan("Reconciler.fold", { captureStackTrace: false, attributes: { ...attributes, events: foldable.length } }))
        const outcome = result.writes.length === 0
          ? { conflicts: [] as ReadonlyArray<string>, rejected: undefined }
          : yield* write(result.writes)
        const conflicts = outcome.conflicts.length === 0 ? noConflicts : new Set(outcome.conflicts)
        const rejected = outcome.rejected === undefined || outcome.rejected.length === 0
          ? noRejections
          : new Map(outcome.rejected.map((r) => [r.id, r.reason]))
        const poisonedDocs = new Set<string>()
        if (quarantine === undefined) {
          // Poison found in any attempt stays poison. A conflict may be our own write
          // whose acknowledgement was lost: folded again, the poison event then looks
          // applied (the markers passed it), yet it never was and must be parked.
          for (const { part, reason } of result.poisoned) {
            poison.set(part, reason)
            if (!conflicts.has(part.key)) poisonedDocs.add(part.key)
          }
        } else {
          // A document stops at its poison event (or, refused by the store, at the first
          // event the write carried); a conflicting one is folded again and finds it again.
          for (const [docId, reason] of rejected) {
            const before = current.get(docId)?.meta.position
            const first = foldable.find((part) => part.key === docId && (before === undefined || part.event.position > before))
            if (first === undefined) continue
            blocking.set(docId, { part: first, reason })
            for (const part of foldable) {
              if (part.key === docId && part !== first && part.event.position > first.event.position) held.push(part)
            }
          }
          for (const { part, reason } of result.poisoned) {
            if (conflicts.has(part.key) || rejected.has(part.key)) continue
            blocking.set(part.key, { part, reason })
            poisonedDocs.add(part.key)
          }
          for (const part of result.blocked) if (!conflicts.has(part.key) && !rejected.has(part.key)) held.push(part)
        }
        const clean = conflicts.size === 0 && rejected.size === 0 && poisonedDocs.size === 0
        for (const [docId, fold] of result.documents) {
          applied += fold.applied
          duplicates += fold.duplicates
          if (clean) {
            remember(docId, fold.next)
            continue
          }
          if (conflicts.has(docId) || rejected.has(docId)) {
            applied -= fold.applied
            duplicates -= fold.duplicates
            cache.delete(docId)
            continue
          }
          // A throwing evolve may have changed its input: forget it rather than trust it.
          if (poisonedDocs.has(docId)) cache.delete(docId)
          else remember(docId, fold.next)
        }
        todo = conflicts.size === 0 ? [] : foldable.filter((part) => conflicts.has(part.key))
      }
      if (quarantine !== undefined && (blocking.size > 0 || held.length > 0)) {
        // Durable before the parts count as done: the watermark never passes an event
        // that is neither applied nor quarantined nor held.
        yield* durably(
          quarantine.quarantine(
            [...blocking.values()].map(({ part, reason }) => ({ ...heldPart(part), reason })),
            held.map(heldPart)
          ),
          "quarantining documents"
        )
        ctx.totals.deadLettered += blocking.size
        yield* Metric.incrementBy(ctx.metrics.deadLettered, blocking.size)
      }
      ctx.totals.processed += applied
      yield* Metric.incrementBy(ctx.metrics.processed, applied)
      if (duplicates > 0) {
        ctx.totals.duplicates += duplicates
        yield* Metric.incrementBy(ctx.metrics.duplicates, duplicates)
      }
      yield* Metric.set(ctx.metrics.lag, Math.max(0, Date.now() - parts[parts.length - 1]!.event.created.getTime()))
      const finished: Array<Tracked> = []
      for (const part of parts) {
        const done = partDone(part.tracked, poison.get(part))
        if (done !== undefined) finished.push(done)
      }
      return finished
    }).pipe(Effect.withSpan("Reconciler.batch", { captureStackTrace: false, attributes: { ...attributes, events: parts.length } }))
}

const noConflicts: ReadonlySet<string> = new Set()
const noRejections: ReadonlyMap<string, string> = new Map()

const heldPart = (part: Part): HeldPart => ({ document: part.key, event: fromDelivery(part.tracked.delivery) })

/**
 * A lane's batch of a handler: each event handled in order, retried on the
 * engine's schedule (`handlerAttempts` attempts). Catch-up: an event that keeps
 * failing quarantines its key (the key's later events are held); persistent:
 * it is parked.
 */
const handlerBatch = (ctx: Context, handler: Handler<any, any, any>): Batch => (parts) =>
  Effect.gen(function*() {
    const { durably, quarantine } = ctx
    const finished: Array<Tracked> = []
    let todo = parts
    if (quarantine !== undefined) {
      const holding = parts.filter((part) => quarantine.documents.has(part.key))
      if (holding.length > 0) {
        todo = parts.filter((part) => !quarantine.documents.has(part.key))
        yield* durably(quarantine.hold(holding.map(heldPart)), "holding events of quarantined keys")
      }
    }
    const toHandle = new Set(todo)
    for (const part of parts) {
      let poison: string | undefined
      if (toHandle.has(part) && quarantine?.documents.has(part.key)) {
        // Quarantined earlier in this batch: held behind its poison event.
        yield* durably(quarantine.quarantine([], [heldPart(part)]), "holding events of quarantined keys")
      } else if (toHandle.has(part)) {
        poison = yield* handler.handle(part.event as never).pipe(
          Effect.tapError(() => Metric.increment(ctx.metrics.retries)),
          Effect.retry(ctx.handlerSchedule),
          Effect.matchCauseEffect({
            onSuccess: () => {
              ctx.totals.processed++
              return Metric.increment(ctx.metrics.processed).pipe(Effect.as(undefined))
            },
            onFailure: (cause) =>
              Cause.isInterruptedOnly(cause)
                ? Effect.interrupt
                : Effect.succeed(`handler ${handler.name} failed on ${part.event.type}: ${Cause.pretty(cause)}`)
          })
        )
        if (poison !== undefined && quarantine !== undefined) {
          yield* durably(quarantine.quarantine([{ ...heldPart(part), reason: poison }], []), "quarantining a key")
          ctx.totals.deadLettered++
          yield* Metric.increment(ctx.metrics.deadLettered)
          poison = undefined
        }
      }
      const done = partDone(part.tracked, poison)
      if (done !== undefined) finished.push(done)
    }
    return finished
  }).pipe(Effect.withSpan("Reconciler.batch", { captureStackTrace: false, attributes: { projection: handler.name, events: parts.length } }))
