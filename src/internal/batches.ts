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
import type { Part, Tracked } from "./tracked.js"
import { partDone } from "./tracked.js"
import type { Watermark } from "./watermark.js"

/** Processes a lane's batch; returns the deliveries it finished. */
export type Batch = (parts: ReadonlyArray<Part>) => Effect.Effect<ReadonlyArray<Tracked>, ReconcilerError>

/** The batch processor of a lane (each lane has its own: it owns a cache). */
export const make = (ctx: Context, watermark: Watermark): Batch =>
  ctx.runnable._tag === "Projection" ? projectionBatch(ctx, ctx.runnable, watermark) : handlerBatch(ctx, ctx.runnable)

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
 */
const projectionBatch = (ctx: Context, projection: Projection<any, any>, watermark: Watermark): Batch => {
  const { durably, options, store } = ctx
  const codec = documentCodec(projection)
  const cache = new Map<string, Current | undefined>()
  const remember = (id: string, current: Current | undefined) => {
    cache.delete(id)
    cache.set(id, current)
    if (cache.size > options.cacheSize) cache.delete(cache.keys().next().value!)
  }
  const checkpoint = () =>
    options.transactional && options.mode === "catch-up" && watermark.current !== undefined
      ? { projection: ctx.id, position: watermark.current }
      : undefined
  const attributes = { projection: projection.name }
  const load = (missing: ReadonlyArray<string>) =>
    durably(store.load(projection.collection, missing), "loading documents").pipe(
      Effect.withSpan("Reconciler.load", { attributes: { ...attributes, documents: missing.length } })
    )
  const write = (writes: Parameters<typeof store.write>[0]["writes"]) =>
    Effect.suspend(() => {
      const started = performance.now()
      return durably(
        store.write({ collection: projection.collection, writes, checkpoint: checkpoint() }),
        "writing documents"
      ).pipe(
        Effect.tap(() => Metric.update(ctx.metrics.writeLatency, performance.now() - started)),
        Effect.withSpan("Reconciler.write", { attributes: { ...attributes, documents: writes.length } })
      )
    })
  return (parts) =>
    Effect.gen(function*() {
      yield* Metric.update(ctx.metrics.batchSizes, parts.length)
      const poison = new Map<Part, string>()
      let applied = 0
      let duplicates = 0
      let todo = parts
      // Guard conflicts mean another writer moved a document: reload it and fold its events again.
      while (todo.length > 0) {
        const missing: Array<string> = []
        const seen = new Set<string>()
        for (const part of todo) {
          if (seen.has(part.key)) continue
          seen.add(part.key)
          if (!cache.has(part.key)) missing.push(part.key)
        }
        const unreadable = new Map<string, string>()
        if (missing.length > 0) {
          // One query for every document the batch misses.
          const loaded = yield* load(missing)
          for (const docId of missing) {
            const decoded = decodeStored(projection, codec, loaded.get(docId))
            if (Either.isRight(decoded)) remember(docId, decoded.right)
            else unreadable.set(docId, decoded.left)
          }
        }
        const foldable: Array<Part> = []
        for (const part of todo) {
          const reason = unreadable.get(part.key)
          if (reason === undefined) foldable.push(part)
          else poison.set(part, reason)
        }
        const result = yield* Effect.sync(() =>
          foldBatch(projection, codec, options.mode, (docId) => cache.get(docId), foldable)
        ).pipe(Effect.withSpan("Reconciler.fold", { attributes: { ...attributes, events: foldable.length } }))
        const outcome = result.writes.length === 0 ? { conflicts: [] as ReadonlyArray<string> } : yield* write(result.writes)
        const conflicts = new Set(outcome.conflicts)
        const poisonedDocs = new Set<string>()
        // Poison found in any attempt stays poison. A conflict may be our own write
        // whose acknowledgement was lost: folded again, the poison event then looks
        // applied (the markers passed it), yet it never was and must be dead-lettered.
        for (const { part, reason } of result.poisoned) {
          poison.set(part, reason)
          if (!conflicts.has(part.key)) poisonedDocs.add(part.key)
        }
        for (const [docId, fold] of result.documents) {
          if (conflicts.has(docId)) {
            cache.delete(docId)
            continue
          }
          applied += fold.applied
          duplicates += fold.duplicates
          // A throwing evolve may have changed its input: forget it rather than trust it.
          if (poisonedDocs.has(docId)) cache.delete(docId)
          else remember(docId, fold.next)
        }
        todo = conflicts.size === 0 ? [] : foldable.filter((part) => conflicts.has(part.key))
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
    }).pipe(Effect.withSpan("Reconciler.batch", { attributes: { ...attributes, events: parts.length } }))
}

/** A lane's batch of a handler: at-least-once, in order, retried, poison after `handlerAttempts`. */
const handlerBatch = (ctx: Context, handler: Handler<any, any>): Batch => (parts) =>
  Effect.gen(function*() {
    const finished: Array<Tracked> = []
    for (const part of parts) {
      const poison = yield* handler.handle(part.event as never).pipe(
        Effect.tapError(() => Metric.increment(ctx.metrics.retries)),
        Effect.retry({ times: Math.max(0, ctx.options.handlerAttempts - 1) }),
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
      const done = partDone(part.tracked, poison)
      if (done !== undefined) finished.push(done)
    }
    return finished
  }).pipe(Effect.withSpan("Reconciler.batch", { attributes: { projection: handler.name, events: parts.length } }))
