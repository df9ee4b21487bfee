/**
 * Per-document quarantine: what happens to a document after one of its events
 * turned out poison, and how it is released.
 *
 * A quarantined document D has one open dead letter (`document` = D, the
 * blocking event) and the events of D that came after it, held in the store in
 * position order. The engine holds D's events instead of applying them; a
 * letter ends when it is retried (the blocking event is applied, then the held
 * ones) or skipped (the blocking event is marked passed without evolving, then
 * the held ones apply). An event that fails during a release quarantines D again
 * at that event, so the letter that ended is replaced, never lost.
 *
 * Releases may race with a running engine that keeps holding D's events: the
 * rule that makes this safe is that held events are forgotten only once
 * applied, that every writer of D goes through the guarded write (a second
 * application is a no-op by the document's markers), and that whoever finds D
 * released applies D's held events, in order, before anything newer.
 */
import { Cause, Effect, Either, Metric, Schedule } from "effect"
import type { Delivery } from "../EventSource.js"
import type { Event, Handler, Projection, Runnable } from "../Projection.js"
import { checkpointId, decoderOf } from "../Projection.js"
import type { DeadLetter, HeldEvent, Resolution, StoredDocument } from "../ReadModelStore.js"
import type { StoreError } from "../ReadModelStore.js"
import { letterId, ReadModelStore } from "../ReadModelStore.js"
import type { Current, Mode } from "./fold.js"
import { decodeStored, describe, documentCodec, foldBatch } from "./fold.js"

/** A recorded event as the quarantine keeps it: identity by position (stream, revision). */
export type Recorded = Omit<HeldEvent, "projection" | "document">

/** A delivery as the quarantine keeps it (raw bytes, identity by position). */
export const fromDelivery = (delivery: Delivery): Recorded => ({
  eventId: delivery.id,
  eventType: delivery.type,
  streamId: delivery.streamId,
  revision: delivery.revision,
  position: delivery.position,
  data: delivery.data,
  metadata: delivery.metadata,
  created: delivery.created
})

/** A letter's event; `created` is when it was dead-lettered (letters do not keep the recorded time). */
export const fromLetter = (letter: DeadLetter): Recorded => ({
  eventId: letter.eventId,
  eventType: letter.eventType,
  streamId: letter.streamId,
  revision: letter.revision,
  position: letter.position,
  data: letter.data,
  metadata: letter.metadata,
  created: letter.at
})

/** The dead letter of `event` for `document` (undefined: an event whose documents are unknown). */
export const letterFor = (
  projection: string,
  document: string | undefined,
  event: Recorded,
  reason: string,
  at: Date
): DeadLetter => ({
  id: letterId(projection, document, event.streamId, event.revision),
  projection,
  ...(document !== undefined ? { document } : {}),
  ...eventFields(event),
  reason,
  at
})

/** The held record of `event` for `document`. */
export const heldFor = (projection: string, document: string, event: Recorded): HeldEvent => ({
  projection,
  document,
  ...eventFields(event),
  created: event.created
})

/** What a letter and a held record keep of their event (a letter has no created time). */
const eventFields = (event: Recorded) => ({
  eventId: event.eventId,
  eventType: event.eventType,
  streamId: event.streamId,
  revision: event.revision,
  position: event.position,
  data: event.data,
  metadata: event.metadata
})

const samePosition = (a: Recorded, b: Recorded) => a.streamId === b.streamId && a.revision === b.revision
const byPosition = (a: Recorded, b: Recorded) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0)

const decodeRecorded = (runnable: Runnable) => {
  const decode = decoderOf(runnable)
  return (event: Recorded) =>
    decode({
      type: event.eventType,
      data: event.data,
      metadata: event.metadata,
      id: event.eventId,
      streamId: event.streamId,
      revision: event.revision,
      position: event.position,
      created: event.created
    })
}

/** Options of a release. */
export interface ReleaseOptions {
  /** Retries of a handler that fails, before it counts as failed again. */
  readonly handlerSchedule?: Schedule.Schedule<unknown> | undefined
  /**
   * How the projection runs (default catch-up): it decides which markers tell
   * an event applied — the document's position (catch-up) or its per-stream
   * revisions (persistent).
   */
  readonly mode?: Mode | undefined
}

/** One step of a release: apply the event, or (skip) mark it passed without evolving. */
interface Step {
  readonly event: Recorded
  readonly skip: boolean
}

/** What applying a document's events did: how many applied, and the first that failed (with why). */
export interface Applied {
  readonly applied: number
  readonly failed: { readonly event: Recorded; readonly reason: string } | undefined
}

/** The keys of an event as the projection gives them now, or why it cannot tell. */
const keysOf = (runnable: Runnable, event: Event): ReadonlyArray<string> | string => {
  try {
    const key = runnable.key(event as never)
    if (typeof key === "string") return [key]
    if (Array.isArray(key) && key.every((k) => typeof k === "string")) return [...new Set(key as Array<string>)]
    return `key returned ${String(key)}`
  } catch (error) {
    return `key failed on ${event.type}: ${describe(error)}`
  }
}

/**
 * Applies `steps` to one document in order, one guarded write per step. Stops
 * at the first step that fails. Steps already applied (by the markers) are
 * no-ops; each step's held copy is forgotten once it is durable.
 */
const applySteps = (
  runnable: Runnable,
  document: string,
  steps: ReadonlyArray<Step>,
  options: ReleaseOptions
): Effect.Effect<Applied, StoreError, ReadModelStore> =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const id = checkpointId(runnable)
    const decode = decodeRecorded(runnable)
    let applied = 0
    for (const step of steps) {
      const failure = runnable._tag === "Projection"
        ? yield* projectionStep(runnable, document, step, decode, options.mode ?? "catch-up")
        : yield* handlerStep(runnable, step, decode, options)
      if (failure !== undefined) return { applied, failed: { event: step.event, reason: failure } }
      yield* store.releaseHeld(id, document, [step.event])
      applied++
    }
    return { applied, failed: undefined }
  })

/** One step for a projection; the reason when it fails. */
const projectionStep = (
  projection: Projection<any, any, any>,
  document: string,
  step: Step,
  decode: ReturnType<typeof decodeRecorded>,
  mode: Mode
): Effect.Effect<string | undefined, StoreError, ReadModelStore> =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const codec = documentCodec(projection)
    const decoded = step.skip ? undefined : decode(step.event)
    if (typeof decoded === "string") return decoded
    // The event's other documents, so that `read` sees them (as they stand now).
    const others = decoded === undefined ? [] : keysOf(projection, decoded)
    while (true) {
      const ids = [document, ...(typeof others === "string" ? [] : others.filter((k) => k !== document))]
      const loaded = yield* store.load(projection.collection, ids)
      const stored = loaded.get(document)
      if (step.skip || decoded === undefined) {
        // Skipped (or no longer a declared type): the markers pass it without evolving.
        const write = passWrite(document, stored, step.event, mode)
        if (write === undefined) return undefined
        const outcome = yield* store.write({ collection: projection.collection, writes: [write] })
        if (outcome.conflicts.includes(document)) continue
        const refused = outcome.rejected?.find((r) => r.id === document)
        return refused?.reason
      }
      const current = new Map<string, Current | undefined>()
      for (const k of ids) {
        const result = decodeStored(projection, codec, loaded.get(k))
        if (Either.isLeft(result)) {
          if (k === document) return result.left
          continue
        }
        current.set(k, result.right)
      }
      // Persistent mode: no stream progress here (it passed the held events when they were held), only the markers.
      const fold = foldBatch(projection, codec, mode, (k) => current.get(k), [{ event: decoded, key: document }], true)
      if (fold.poisoned.length > 0) return fold.poisoned[0]!.reason
      if (fold.writes.length === 0) return undefined // already applied
      const outcome = yield* store.write({ collection: projection.collection, writes: fold.writes })
      if (outcome.conflicts.includes(document)) continue
      const refused = outcome.rejected?.find((r) => r.id === document)
      return refused?.reason
    }
  })

/** The write that marks `event` passed on a document without evolving it; `undefined` when the markers already pass it. */
const passWrite = (document: string, stored: StoredDocument | undefined, event: Recorded, mode: Mode) => {
  const meta = stored?.meta
  const streams = meta?.streams ?? {}
  if (mode === "catch-up" ? meta?.position !== undefined && meta.position >= event.position : (streams[event.streamId] ?? -1n) >= event.revision) {
    return undefined
  }
  return {
    id: document,
    expectedVersion: meta?.version ?? 0,
    body: stored?.body,
    meta: {
      version: (meta?.version ?? 0) + 1,
      position: mode === "catch-up" ? event.position : meta?.position,
      streams: mode === "catch-up" ? streams : { ...streams, [event.streamId]: event.revision },
      deleted: stored === undefined ? true : meta!.deleted
    }
  }
}

const defaultHandlerSchedule: Schedule.Schedule<unknown> = Schedule.exponential("50 millis").pipe(
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(4))
)

/** One step for a handler: handle it (retried on the schedule); the reason when it keeps failing. */
const handlerStep = (
  handler: Handler<any, any, any>,
  step: Step,
  decode: ReturnType<typeof decodeRecorded>,
  options: ReleaseOptions
): Effect.Effect<string | undefined> => {
  if (step.skip) return Effect.succeed(undefined)
  const decoded = decode(step.event)
  if (decoded === undefined) return Effect.succeed(undefined)
  if (typeof decoded === "string") return Effect.succeed(decoded)
  return handler.handle(decoded as never).pipe(
    Effect.retry(options.handlerSchedule ?? defaultHandlerSchedule),
    Effect.as(undefined),
    Effect.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Effect.interrupt
        : Effect.succeed(`handler ${handler.name} failed on ${decoded.type}: ${Cause.pretty(cause)}`)
    )
  )
}

/** What a release did to a letter. */
export type Release =
  /** The letter ended; its document applied everything held. */
  | { readonly _tag: "Released"; readonly letter: DeadLetter; readonly applied: number }
  /** The letter ended, but a later held event failed: the document is quarantined again at it. */
  | { readonly _tag: "Requarantined"; readonly letter: DeadLetter; readonly applied: number; readonly next: DeadLetter }
  /** Retry: the blocking event failed again; the letter stays, with the new reason. */
  | { readonly _tag: "FailedAgain"; readonly letter: DeadLetter; readonly reason: string }
  /**
   * Retry of an event whose documents were unknown: some of its documents have
   * moved past it meanwhile, so it cannot apply to them in order. The letter
   * stays (skip it, or rebuild the projection).
   */
  | { readonly _tag: "Late"; readonly letter: DeadLetter; readonly documents: ReadonlyArray<string> }

/** Who decided, and why. */
export interface Decision {
  readonly action: "retried" | "skipped"
  readonly by: string
  readonly reason?: string | undefined
}

/**
 * Applies a quarantined document's held events in order (the sweep after its
 * letter ended). A failure quarantines it again at that event; returns the new
 * letter then.
 */
export const sweep = (
  runnable: Runnable,
  document: string,
  options: ReleaseOptions = {}
): Effect.Effect<{ readonly applied: number; readonly next: DeadLetter | undefined }, StoreError, ReadModelStore> =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const id = checkpointId(runnable)
    let applied = 0
    while (true) {
      const held = yield* store.heldEvents(id, document)
      if (held.length === 0) return { applied, next: undefined }
      const outcome = yield* applySteps(runnable, document, held.map((event) => ({ event, skip: false })), options)
      applied += outcome.applied
      if (outcome.failed !== undefined) {
        const next = letterFor(id, document, outcome.failed.event, outcome.failed.reason, new Date())
        yield* store.deadLetter(next)
        return { applied, next }
      }
    }
  })

/**
 * Ends a letter: retry applies its event (after a fix), skip passes it by
 * decision; then the document's held events apply in order and the document is
 * released. The resolution (who, why) is recorded.
 */
export const resolve = (
  runnable: Runnable,
  letter: DeadLetter,
  decision: Decision,
  options: ReleaseOptions = {}
): Effect.Effect<Release, StoreError, ReadModelStore> =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const id = checkpointId(runnable)
    const resolution: Resolution = {
      letter,
      action: decision.action,
      by: decision.by,
      reason: decision.reason,
      at: new Date()
    }
    const blocking = fromLetter(letter)
    if (letter.document === undefined) return yield* resolveUnknown(runnable, letter, resolution, options)
    const document = letter.document
    const held = (yield* store.heldEvents(id, document)).filter((event) => !samePosition(event, blocking))
    // In position order, the blocking event among them (an event held while its
    // document was known to be quarantined may come before it).
    const steps: Array<Step> = [...held.map((event) => ({ event: event as Recorded, skip: false })), {
      event: blocking,
      skip: decision.action === "skipped"
    }].sort((a, b) => byPosition(a.event, b.event))
    const outcome = yield* applySteps(runnable, document, steps, options)
    if (outcome.failed !== undefined) {
      if (samePosition(outcome.failed.event, blocking)) {
        return { _tag: "FailedAgain", letter, reason: outcome.failed.reason } as const
      }
      const next = letterFor(id, document, outcome.failed.event, outcome.failed.reason, new Date())
      // An earlier held event failed before the blocking one applied: a retried blocking event
      // waits among the held ones (a skipped one is simply not applied).
      if (decision.action === "retried" && outcome.failed.event.position < blocking.position) {
        yield* store.hold([heldFor(id, document, blocking)])
      }
      // The new letter first: the document is never without one while it is blocked.
      yield* store.deadLetter(next)
      yield* store.resolveDeadLetter(resolution)
      return { _tag: "Requarantined", letter, applied: outcome.applied, next } as const
    }
    yield* store.resolveDeadLetter(resolution)
    // An engine may have held more of D's events meanwhile.
    const swept = yield* sweep(runnable, document, options)
    return swept.next === undefined
      ? { _tag: "Released", letter, applied: outcome.applied + swept.applied } as const
      : { _tag: "Requarantined", letter, applied: outcome.applied + swept.applied, next: swept.next } as const
  })

/** Ends a letter whose documents were unknown when it failed (it did not decode, or `key` failed). */
const resolveUnknown = (
  runnable: Runnable,
  letter: DeadLetter,
  resolution: Resolution,
  options: ReleaseOptions
): Effect.Effect<Release, StoreError, ReadModelStore> =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const id = checkpointId(runnable)
    if (resolution.action === "skipped") {
      yield* store.resolveDeadLetter(resolution)
      return { _tag: "Released", letter, applied: 0 } as const
    }
    const event = fromLetter(letter)
    const decoded = decodeRecorded(runnable)(event)
    if (typeof decoded === "string") return { _tag: "FailedAgain", letter, reason: decoded } as const
    const keys = decoded === undefined ? [] : keysOf(runnable, decoded)
    if (typeof keys === "string") return { _tag: "FailedAgain", letter, reason: keys } as const
    const quarantined = new Set((yield* store.deadLetters(id)).flatMap((l) => (l.document !== undefined ? [l.document] : [])))
    const late: Array<string> = []
    const fresh: Array<string> = []
    if (runnable._tag === "Projection") {
      const loaded = yield* store.load(runnable.collection, keys)
      for (const key of keys) {
        const position = loaded.get(key)?.meta.position
        // Moved past it (a quarantined document too, by the events it applied before its block).
        if (position !== undefined && position > event.position) late.push(key)
        // At the event's position exactly: applied by an earlier run of this retry that stopped.
        else if (!quarantined.has(key) && position !== event.position) fresh.push(key)
      }
    } else fresh.push(...keys.filter((k) => !quarantined.has(k)))
    if (late.length > 0) return { _tag: "Late", letter, documents: late } as const
    // A quarantined document gets the event among its held ones, in position order.
    yield* store.hold(keys.filter((k) => quarantined.has(k)).map((k) => heldFor(id, k, event)))
    let applied = 0
    let next: DeadLetter | undefined
    for (const key of fresh) {
      const outcome = yield* applySteps(runnable, key, [{ event, skip: false }], options)
      applied += outcome.applied
      if (outcome.failed !== undefined) {
        // Known now: the document is quarantined at this event like any other.
        next = letterFor(id, key, event, outcome.failed.reason, new Date())
        yield* store.deadLetter(next)
      }
    }
    yield* store.resolveDeadLetter(resolution)
    return next === undefined
      ? { _tag: "Released", letter, applied } as const
      : { _tag: "Requarantined", letter, applied, next } as const
  })

/** The documents quarantined by a list of letters. */
export const quarantinedDocuments = (letters: ReadonlyArray<DeadLetter>): Set<string> =>
  new Set(letters.flatMap((l) => (l.document !== undefined ? [l.document] : [])))

/** A document's part of an event, as the engine routes it. */
export interface HeldPart {
  readonly document: string
  readonly event: Recorded
}

/**
 * The engine's side of the quarantine for one run (catch-up mode): which
 * documents are quarantined (loaded at start, then kept up to date), holding
 * their events, and quarantining documents at their poison events. A lane only
 * consults the documents it owns, so the set needs no lock.
 */
export interface EngineQuarantine {
  readonly documents: Set<string>
  /**
   * Holds events of quarantined documents durably. A document found released
   * meanwhile (its letter retried or skipped) gets its held events applied in
   * order now; those documents are returned (their cached state is stale).
   */
  readonly hold: (parts: ReadonlyArray<HeldPart>) => Effect.Effect<ReadonlySet<string>, StoreError>
  /** Quarantines documents at their poison events and holds the events that came after, all durably. */
  readonly quarantine: (
    letters: ReadonlyArray<HeldPart & { readonly reason: string }>,
    held: ReadonlyArray<HeldPart>
  ) => Effect.Effect<void, StoreError>
  /** Sets the `reconciler_quarantined_documents` gauge to the number quarantined now. */
  readonly report: Effect.Effect<void>
  /**
   * Persistent mode: the recorded progress of a source stream as the engine
   * knows it (set by the pipeline). A part at or below it is a copy of an event
   * that completed already (applied, held, or blocking): it is not held again.
   */
  progress: ((stream: string) => bigint | undefined) | undefined
  /**
   * Persistent mode: whether the event at (stream, revision) quarantined a
   * document in this run, with the reason; asked once, when its delivery
   * settles: it is then parked in the group, where `retry`/`skip` find it.
   */
  readonly takeBlocking: (stream: string, revision: bigint) => string | undefined
}

/** Documents (or handler keys) quarantined now, tagged with `projection`. */
export const quarantinedGauge = Metric.gauge("reconciler_quarantined_documents", {
  description: "documents (or handler keys) quarantined behind a dead letter"
})

/** The engine's quarantine for one run, starting from the projection's open letters. */
export const makeEngineQuarantine = (
  runnable: Runnable,
  store: ReadModelStore["Type"],
  letters: ReadonlyArray<DeadLetter>,
  options: ReleaseOptions = {}
): EngineQuarantine => {
  const id = checkpointId(runnable)
  const persistent = options.mode === "persistent"
  const documents = quarantinedDocuments(letters)
  /** Persistent mode: the blocking events of this run whose deliveries have not settled yet. */
  const blockingNow = new Map<string, string>()
  const key = (stream: string, revision: bigint) => `${revision}@${stream}`
  const takeBlocking = (stream: string, revision: bigint) => {
    const k = key(stream, revision)
    const reason = blockingNow.get(k)
    blockingNow.delete(k)
    return reason
  }
  const gauge = Metric.tagged(quarantinedGauge, "projection", runnable.name)
  const report = Effect.suspend(() => Metric.set(gauge, documents.size))
  const hold = (all: ReadonlyArray<HeldPart>) =>
    Effect.gen(function*() {
      // Persistent mode: a copy of an event its stream's progress covers completed already.
      const covered = (p: HeldPart) => {
        const progress = engine.progress?.(p.event.streamId)
        return progress !== undefined && p.event.revision <= progress
      }
      const parts = persistent && engine.progress !== undefined ? all.filter((p) => !covered(p)) : all
      if (parts.length === 0) return new Set<string>()
      // Held first, then the letters read: a release that races with this either sees
      // the held events or is seen here (see the module's comment).
      yield* store.hold(parts.map((p) => heldFor(id, p.document, p.event)))
      const blocking = new Map<string, DeadLetter>()
      for (const letter of yield* store.deadLetters(id)) {
        if (letter.document !== undefined) blocking.set(letter.document, letter)
      }
      // Redelivered after a restart: the blocking event itself, or events the document applied before it
      // (persistent mode: before it in its stream; the order of different streams is not kept).
      const stale = parts.filter((p) => {
        const letter = blocking.get(p.document)
        if (letter === undefined) return false
        return persistent
          ? p.event.streamId === letter.streamId && p.event.revision <= letter.revision
          : p.event.position <= letter.position
      })
      for (const p of stale) yield* store.releaseHeld(id, p.document, [p.event])
      const released = new Set<string>()
      for (const part of parts) {
        if (blocking.has(part.document) || released.has(part.document)) continue
        released.add(part.document)
        documents.delete(part.document)
        const swept = yield* sweep(runnable, part.document, options).pipe(Effect.provideService(ReadModelStore, store))
        // (its new letter is logged where it is recorded: see deadLetterLog)
        if (swept.next !== undefined) documents.add(part.document)
      }
      if (released.size > 0) yield* report
      return released
    })
  const quarantine = (
    poisoned: ReadonlyArray<HeldPart & { readonly reason: string }>,
    held: ReadonlyArray<HeldPart>
  ) =>
    Effect.gen(function*() {
      const at = new Date()
      for (const p of poisoned) {
        const letter = letterFor(id, p.document, p.event, p.reason, at)
        yield* store.deadLetter(letter)
        documents.add(p.document)
        if (persistent) blockingNow.set(key(p.event.streamId, p.event.revision), p.reason)
      }
      // A duplicate of the blocking event (or of one applied before it) in the same batch is not held.
      const blockingOf = new Map(poisoned.map((p) => [p.document, p.event]))
      const before = (p: HeldPart) => {
        const blocking = blockingOf.get(p.document)
        if (blocking === undefined) return false
        return persistent
          ? p.event.streamId === blocking.streamId && p.event.revision <= blocking.revision
          : p.event.position <= blocking.position
      }
      const later = held.filter((p) => !before(p))
      if (later.length > 0) yield* store.hold(later.map((p) => heldFor(id, p.document, p.event)))
      if (poisoned.length > 0) yield* report
    })
  // `hold` reads `progress` from it: the pipeline sets it once the stream order exists.
  const engine: EngineQuarantine = { documents, hold, quarantine, report, progress: undefined, takeBlocking }
  return engine
}
