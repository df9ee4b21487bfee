/**
 * In-memory ports for tests, experiments and benchmarks: an event log that serves
 * catch-up and persistent subscriptions (with faults on demand), and a read-model
 * store (with transient failures on demand) that fails loudly when used after its
 * scope has closed.
 *
 * @since 0.1.0
 */
import { Chunk, Context, Deferred, Effect, FiberId, Layer, Option, Stream } from "effect"
import type { Delivery, Settlement, Subscription } from "./EventSource.js"
import { categoryOf, EventSource, EventSourceError } from "./EventSource.js"
import type { Checkpoint, DeadLetter, DocumentWrite, HeldEvent, Resolution, SkippedGap, StoredDocument, StreamProgress, WriteBatch, WriteResult } from "./ReadModelStore.js"
import type { Registration } from "./ReadModelStore.js"
import { ReadModelStore, StoreError } from "./ReadModelStore.js"
import { random } from "./internal/random.js"

// ---- the event log --------------------------------------------------------------

/** An event to append: JSON data (any value) or raw bytes. @since 0.1.0 */
export interface NewEvent {
  readonly type: string
  readonly data: unknown
  readonly id?: string | undefined
  readonly metadata?: unknown
}

/** An event as the log keeps it. `position` is its 1-based place in the whole log. @since 0.1.0 */
export interface RecordedEvent extends Omit<Delivery, "retryCount" | "settle"> {
  /** By the server's `$by_category` rule; `undefined` for a stream in no category. */
  readonly category: string | undefined
}

/**
 * Faults the log injects into its subscriptions, decided by a seeded generator so
 * that a failing run can be replayed.
 *
 * @since 0.1.0
 */
export interface SourceFaults {
  readonly seed?: number | undefined
  /** Probability that a delivery is delivered a second time. */
  readonly duplicateRate?: number | undefined
  /** Persistent mode: probability that a delivery swaps places with the next one of another stream. */
  readonly reorderRate?: number | undefined
  /** Probability, per delivery, that the subscription drops (a retryable error). */
  readonly dropRate?: number | undefined
  /**
   * After this many deliveries (all subscriptions together), subscriptions go
   * silent: they neither deliver nor fail (resubscribing does not help) until
   * {@link EventLog.resume} is called.
   */
  readonly silentAfter?: number | undefined
}

/** @since 0.1.0 */
export interface EventLogOptions {
  /** End subscriptions when there is nothing more to deliver (and, persistent, nothing unsettled). */
  readonly endAtHead?: boolean | undefined
  /** Deliveries per pulled chunk. Default 1, so that pulled means handed over. */
  readonly chunkSize?: number | undefined
  /** Persistent groups park a delivery nacked for retry this many times. Default 10. */
  readonly maxRetryCount?: number | undefined
  readonly faults?: SourceFaults | undefined
}

/** A parked delivery of a persistent group. @since 0.1.0 */
export interface Parked {
  readonly event: RecordedEvent
  readonly reason: string
}

/**
 * The in-memory event log and its observations.
 *
 * @since 0.1.0
 */
export interface EventLog {
  readonly append: (streamId: string, events: ReadonlyArray<NewEvent>) => Effect.Effect<ReadonlyArray<RecordedEvent>>
  readonly events: ReadonlyArray<RecordedEvent>
  /** Persistent deliveries handed over and not settled yet, now and at most. */
  readonly unsettled: () => { readonly now: number; readonly max: number }
  /** All deliveries handed over so far, both modes. */
  readonly pulled: () => number
  /** Makes the next `times` pulls (of any subscription) fail with `error`. */
  readonly failNext: (error: EventSourceError, times?: number) => void
  /** Parked deliveries of a persistent group. */
  readonly parked: (group: string) => ReadonlyArray<Parked>
  /** Subscriptions go silent after `deliveries` more deliveries (see {@link SourceFaults.silentAfter}). */
  readonly goSilent: (deliveries: number) => void
  /** Silent subscriptions deliver again. */
  readonly resume: () => void
  readonly port: EventSource["Type"]
}

/** @since 0.1.0 */
export class InMemoryEventLog extends Context.Tag("effect-reconciler/InMemoryEventLog")<InMemoryEventLog, EventLog>() {}

interface Pending {
  readonly event: RecordedEvent
  readonly retryCount: number
}

interface Group {
  next: number
  outstanding: number
  readonly retry: Array<Pending>
  readonly parked: Array<Parked>
}

const noMetadata = new Uint8Array(0)

/** Catch-up deliveries are never settled (the engine's checkpoint acknowledges them). */
const settleNothing = (): Effect.Effect<void> => Effect.void

/** A recorded event kept in the shape of its catch-up delivery, so that handing it over copies nothing. */
type LogRecord = RecordedEvent & Pick<Delivery, "retryCount" | "settle">

/**
 * Makes an in-memory event log serving the {@link EventSource} port.
 *
 * @since 0.1.0
 */
export const makeEventLog = (options: EventLogOptions = {}): Effect.Effect<EventLog> =>
  Effect.sync(() => {
    const log: Array<LogRecord> = []
    const revisions = new Map<string, bigint>()
    const groups = new Map<string, Group>()
    const chunkSize = Math.max(1, options.chunkSize ?? 1)
    const maxRetryCount = options.maxRetryCount ?? 10
    const faults = options.faults ?? {}
    const next = random(faults.seed ?? 1)
    // Made only when a subscriber waits, so that appends and settles stay cheap.
    let signal: Deferred.Deferred<void> | undefined
    const wake = () => {
      if (signal === undefined) return
      const current = signal
      signal = undefined
      Deferred.unsafeDone(current, Effect.void)
    }
    const waitForChange = Effect.suspend(() => {
      signal ??= Deferred.unsafeMake<void>(FiberId.none)
      return Deferred.await(signal)
    })
    let unsettledNow = 0
    let unsettledMax = 0
    // Deliveries left before subscriptions go silent (undefined: never).
    let voice: number | undefined = faults.silentAfter
    const silent = () => voice !== undefined && voice <= 0
    const waitWhileSilent = Effect.suspend(function loop(): Effect.Effect<void> {
      return silent() ? Effect.zipRight(waitForChange, Effect.suspend(loop)) : Effect.void
    })

    const append: EventLog["append"] = (streamId, events) =>
      Effect.sync(() => {
        const recorded = events.map((event) => {
          const revision = (revisions.get(streamId) ?? -1n) + 1n
          revisions.set(streamId, revision)
          const bytes = event.data instanceof Uint8Array
          const record: LogRecord = {
            id: event.id ?? crypto.randomUUID(),
            type: event.type,
            streamId,
            category: Option.getOrUndefined(categoryOf(streamId)),
            revision,
            position: BigInt(log.length + 1),
            // Buffer.from packs small payloads into shared slabs: a large log stays compact.
            data: bytes ? event.data as Uint8Array : Buffer.from(JSON.stringify(event.data)),
            metadata: event.metadata === undefined ? noMetadata : Buffer.from(JSON.stringify(event.metadata)),
            isJson: !bytes,
            created: new Date(),
            retryCount: 0,
            settle: settleNothing
          }
          log.push(record)
          return record
        })
        wake()
        return recorded
      })

    let pulled = 0
    /** A delivery; `onSettle` only for persistent ones. */
    const deliver = (event: RecordedEvent, retryCount: number, onSettle?: (s: Settlement) => void): Delivery => {
      pulled++
      if (voice !== undefined) voice--
      let settle: Delivery["settle"] = settleNothing
      if (onSettle !== undefined) {
        unsettledNow++
        if (unsettledNow > unsettledMax) unsettledMax = unsettledNow
        let settled = false
        settle = (settlement) =>
          Effect.sync(() => {
            if (settled) return
            settled = true
            unsettledNow--
            onSettle(settlement)
            wake()
          })
      }
      return {
        id: event.id,
        type: event.type,
        streamId: event.streamId,
        revision: event.revision,
        position: event.position,
        data: event.data,
        metadata: event.metadata,
        isJson: event.isJson,
        created: event.created,
        retryCount,
        settle
      }
    }

    /** A catch-up delivery: the record itself (immutable), counted as handed over. */
    const handOver = (event: LogRecord): Delivery => {
      pulled++
      if (voice !== undefined) voice--
      return event
    }

    // A failure on demand: every subscription's next pull fails with it, once.
    let failure: EventSourceError | undefined
    let failuresLeft = 0
    const injected = Effect.suspend(() => {
      if (failure === undefined || failuresLeft === 0) return Effect.void
      failuresLeft--
      return Effect.fail(Option.some(failure))
    })

    const dropped = () => new EventSourceError({ message: "in-memory subscription dropped (injected fault)", retryable: true })

    const catchUp = (categories: ReadonlySet<string>, after: bigint | undefined): Stream.Stream<Delivery, EventSourceError> => {
      let index = after === undefined ? 0 : Number(after)
      let duplicate: LogRecord | undefined
      return Stream.repeatEffectChunkOption(Effect.gen(function*() {
        while (true) {
          yield* waitWhileSilent
          yield* injected
          const chunk: Array<Delivery> = []
          while (chunk.length < chunkSize && !silent()) {
            if (duplicate !== undefined) {
              chunk.push(handOver(duplicate))
              duplicate = undefined
              continue
            }
            if (index >= log.length) break
            const event = log[index++]!
            if (event.category === undefined || !categories.has(event.category)) continue
            if (faults.dropRate !== undefined && next() < faults.dropRate) {
              index--
              if (chunk.length > 0) break
              return yield* Effect.fail(Option.some(dropped()))
            }
            const delivery = handOver(event)
            chunk.push(delivery)
            if (faults.duplicateRate !== undefined && next() < faults.duplicateRate) {
              duplicate = event
            }
          }
          if (chunk.length > 0) return Chunk.unsafeFromArray(chunk)
          if (options.endAtHead) return yield* Effect.fail(Option.none())
          yield* waitForChange
        }
      }))
    }

    const persistent = (
      categories: ReadonlySet<string>,
      name: string
    ): Stream.Stream<Delivery, EventSourceError> =>
      Stream.unwrapScoped(Effect.gen(function*() {
        let group = groups.get(name)
        if (group === undefined) {
          group = { next: 0, outstanding: 0, retry: [], parked: [] }
          groups.set(name, group)
        }
        const g = group
        // What this subscriber holds; handed back to the group when it goes away.
        const outstanding = new Set<Pending>()
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            g.retry.unshift(...outstanding)
            g.outstanding -= outstanding.size
            outstanding.clear()
            wake()
          })
        )
        const settleOf = (pending: Pending) => (settlement: Settlement) => {
          if (outstanding.delete(pending)) g.outstanding--
          if (settlement._tag === "Ack") return
          if (settlement.action === "park") g.parked.push({ event: pending.event, reason: settlement.reason })
          if (settlement.action === "retry") {
            if (pending.retryCount + 1 >= maxRetryCount) {
              g.parked.push({ event: pending.event, reason: `retried ${maxRetryCount} times: ${settlement.reason}` })
            } else g.retry.push({ event: pending.event, retryCount: pending.retryCount + 1 })
          }
        }
        const take = (): Pending | undefined => {
          const retried = g.retry.shift()
          if (retried !== undefined) return retried
          while (g.next < log.length) {
            const event = log[g.next++]!
            if (event.category !== undefined && categories.has(event.category)) return { event, retryCount: 0 }
          }
          return undefined
        }
        const hand = (pending: Pending): Delivery => {
          if (!outstanding.has(pending)) g.outstanding++
          outstanding.add(pending)
          return deliver(pending.event, pending.retryCount, settleOf(pending))
        }
        return Stream.repeatEffectChunkOption(Effect.gen(function*() {
          while (true) {
            yield* waitWhileSilent
            yield* injected
            const chunk: Array<Delivery> = []
            while (chunk.length < chunkSize && !silent()) {
              const pending = take()
              if (pending === undefined) break
              if (faults.dropRate !== undefined && next() < faults.dropRate) {
                g.retry.unshift(pending)
                if (chunk.length > 0) break
                return yield* Effect.fail(Option.some(dropped()))
              }
              if (faults.reorderRate !== undefined && next() < faults.reorderRate) {
                const following = take()
                if (following !== undefined && following.event.streamId !== pending.event.streamId) {
                  chunk.push(hand(following))
                } else if (following !== undefined) g.retry.unshift(following)
              }
              chunk.push(hand(pending))
              if (faults.duplicateRate !== undefined && next() < faults.duplicateRate) {
                // As if the server's message timeout fired while the first copy was in flight.
                g.retry.push({ event: pending.event, retryCount: pending.retryCount + 1 })
              }
            }
            if (chunk.length > 0) return Chunk.unsafeFromArray(chunk)
            if (options.endAtHead && outstanding.size === 0 && g.retry.length === 0 && g.next >= log.length) {
              return yield* Effect.fail(Option.none())
            }
            yield* waitForChange
          }
        }))
      }))

    const port: EventSource["Type"] = {
      subscribe: (subscription: Subscription) => {
        const categories = new Set(subscription.categories)
        return subscription.mode === "catch-up"
          ? catchUp(categories, Option.getOrUndefined(subscription.after))
          : persistent(categories, `${[...categories].sort().join(",")}::${subscription.group}`)
      },
      readStream: (streamId, from, count) =>
        Effect.sync(() => {
          const found: Array<Delivery> = []
          for (const event of log) {
            if (found.length >= count) break
            if (event.streamId === streamId && event.revision >= from) found.push(deliver(event, 0))
          }
          return found
        }),
      head: (categories) =>
        Effect.sync(() => {
          for (let i = log.length - 1; i >= 0; i--) {
            const category = log[i]!.category
            if (category !== undefined && categories.includes(category)) return Option.some(log[i]!.position)
          }
          return Option.none()
        }),
      firstAfter: (categories, after) =>
        Effect.sync(() => {
          // Positions are 1-based places in the log: the first after `after` is at index `after` or later.
          for (let i = Option.match(after, { onNone: () => 0, onSome: Number }); i < log.length; i++) {
            const event = log[i]!
            if (event.category !== undefined && categories.includes(event.category)) return Option.some({ position: event.position, created: event.created })
          }
          return Option.none()
        }),
      positionOf: (categories, appended) =>
        Effect.sync(() => {
          // Every subscription is positioned along the one log.
          const event = log.find((e) => e.streamId === appended.streamId && e.revision === appended.revision)
          return event !== undefined && event.category !== undefined && categories.includes(event.category)
            ? Option.some(event.position)
            : Option.none()
        }),
      replayParked: (categories, group) =>
        Effect.sync(() => {
          // As the server: the parked messages go to the group's subscribers first, retry count 0.
          const g = groups.get(`${[...new Set(categories)].sort().join(",")}::${group}`)
          if (g === undefined) return
          g.retry.unshift(...g.parked.splice(0).map(({ event }) => ({ event, retryCount: 0 })))
          wake()
        }),
      groupStatus: (categories, group) =>
        Effect.sync(() => {
          const set = new Set(categories)
          const g = groups.get(`${[...set].sort().join(",")}::${group}`)
          if (g === undefined) return Option.none()
          let unread = 0
          for (let i = g.next; i < log.length; i++) if (log[i]!.category !== undefined && set.has(log[i]!.category!)) unread++
          return Option.some({
            outstanding: g.outstanding,
            parked: g.parked.length,
            pending: unread + g.retry.length + g.outstanding
          })
        })
    }

    return {
      append,
      get events() {
        return log
      },
      unsettled: () => ({ now: unsettledNow, max: unsettledMax }),
      pulled: () => pulled,
      failNext: (error, times = 1) => {
        failure = error
        failuresLeft = times
        wake()
      },
      goSilent: (deliveries) => {
        voice = deliveries
      },
      resume: () => {
        voice = undefined
        wake()
      },
      parked: (group) => {
        const found: Array<Parked> = []
        for (const [name, g] of groups) if (name.endsWith(`::${group}`)) found.push(...g.parked)
        return found
      },
      port
    }
  })

// ---- the store ------------------------------------------------------------------

/** @since 0.1.0 */
export interface StoreOptions {
  readonly seed?: number | undefined
  /** Probability that a call fails with a transient error (before it changes anything). */
  readonly transientFailureRate?: number | undefined
  /** Probability that a call succeeds but reports a transient error (its acknowledgement lost). */
  readonly lostAcknowledgementRate?: number | undefined
  /** Called after each committed checkpoint, with the store as it is then. */
  readonly onCheckpoint?: ((checkpoint: Checkpoint, store: MemoryStore) => void) | undefined
  /**
   * Refuses a write for good (as a unique index or a size limit would), with the
   * reason; the rest of the batch applies.
   */
  readonly reject?: ((collection: string, write: DocumentWrite, store: MemoryStore) => string | undefined) | undefined
}

/**
 * The in-memory store and its observations.
 *
 * @since 0.1.0
 */
export interface MemoryStore {
  readonly port: ReadModelStore["Type"]
  /** Stored documents of a collection, tombstones excluded. */
  readonly documents: (collection: string) => ReadonlyMap<string, StoredDocument>
  /** Everything stored in a collection, tombstones included. */
  readonly stored: (collection: string) => ReadonlyMap<string, StoredDocument>
  readonly checkpoint: (projection: string) => bigint | undefined
  readonly letters: () => ReadonlyArray<DeadLetter>
  /** Every held event, all projections. */
  readonly held: () => ReadonlyArray<HeldEvent>
  /** Every resolved letter, all projections. */
  readonly resolved: () => ReadonlyArray<Resolution>
  /** Persistent mode: the stored per-stream progress of a projection. */
  readonly progress: (projection: string) => ReadonlyMap<string, StreamProgress>
  /** Persistent mode: the gaps a projection skipped. */
  readonly gaps: (projection: string) => ReadonlyArray<SkippedGap>
  /** Makes the next `n` calls fail with a transient error. */
  readonly failNext: (n: number) => void
  /** Calls made after the store's scope closed (each also died loudly). */
  readonly callsAfterClose: () => number
  readonly calls: () => number
}

/** @since 0.1.0 */
export class InMemoryStore extends Context.Tag("effect-reconciler/InMemoryStore")<InMemoryStore, MemoryStore>() {}

/**
 * Makes an in-memory store, open for the enclosing scope. Any call after the scope
 * closes dies with a defect: a use-after-close is a bug to be seen, not hidden.
 *
 * @since 0.1.0
 */
export const makeStore = (options: StoreOptions = {}) =>
  Effect.acquireRelease(
    Effect.sync((): { store: MemoryStore; close: () => void } => {
      const collections = new Map<string, Map<string, StoredDocument>>()
      const registrations = new Map<string, Registration>()
      const checkpoints = new Map<string, bigint>()
      const deadLetters = new Map<string, DeadLetter>()
      const heldEvents = new Map<string, HeldEvent>()
      const resolutions = new Map<string, Resolution>()
      const heldKey = (projection: string, document: string, streamId: string, revision: bigint) =>
        JSON.stringify([projection, document, streamId, String(revision)])
      const progressOf = new Map<string, Map<string, StreamProgress>>()
      const skipped = new Map<string, SkippedGap>()
      const projectionProgress = (projection: string) => {
        let found = progressOf.get(projection)
        if (found === undefined) {
          found = new Map()
          progressOf.set(projection, found)
        }
        return found
      }
      const next = random(options.seed ?? 1)
      let closed = false
      let afterClose = 0
      let failures = 0
      let calls = 0
      const collection = (name: string) => {
        let found = collections.get(name)
        if (found === undefined) {
          found = new Map()
          collections.set(name, found)
        }
        return found
      }
      const guarded = <A>(operation: string, body: () => A): Effect.Effect<A, StoreError> =>
        Effect.suspend(() => {
          calls++
          if (closed) {
            afterClose++
            return Effect.dieMessage(`ReadModelStore.${operation} called after the store's scope closed`)
          }
          if (failures > 0 || (options.transientFailureRate !== undefined && next() < options.transientFailureRate)) {
            if (failures > 0) failures--
            return Effect.fail(new StoreError({ message: `injected transient failure in ${operation}`, transient: true }))
          }
          if (options.lostAcknowledgementRate !== undefined && next() < options.lostAcknowledgementRate) {
            body()
            return Effect.fail(new StoreError({ message: `injected lost acknowledgement of ${operation}`, transient: true }))
          }
          return Effect.sync(body)
        })
      const write = (batch: WriteBatch): WriteResult => {
        const documents = collection(batch.collection)
        const conflicts: Array<string> = []
        const rejected: Array<{ id: string; reason: string }> = []
        for (const w of batch.writes) {
          const current = documents.get(w.id)
          if ((current?.meta.version ?? 0) !== w.expectedVersion) {
            conflicts.push(w.id)
            continue
          }
          const refusal = options.reject?.(batch.collection, w, store)
          if (refusal !== undefined) {
            rejected.push({ id: w.id, reason: refusal })
            continue
          }
          documents.set(w.id, w) // a write has the shape of a stored document
        }
        if (batch.checkpoint !== undefined) commit(batch.checkpoint)
        return rejected.length > 0 ? { conflicts, rejected } : { conflicts }
      }
      const commit = (checkpoint: Checkpoint) => {
        const current = checkpoints.get(checkpoint.projection)
        if (current !== undefined && current >= checkpoint.position) return
        checkpoints.set(checkpoint.projection, checkpoint.position)
        options.onCheckpoint?.(checkpoint, store)
      }
      const store: MemoryStore = {
        port: {
          registration: (readModel) => guarded("registration", () => Option.fromNullable(registrations.get(readModel))),
          register: (registration, expectedRevision) =>
            guarded("register", () => {
              if ((registrations.get(registration.readModel)?.revision ?? 0) !== expectedRevision) return false
              registrations.set(registration.readModel, registration)
              return true
            }),
          scan: (name) =>
            Stream.unwrap(guarded("scan", () => Stream.fromIterable([...collection(name).values()]))),
          dropCollection: (name) => guarded("dropCollection", () => void collections.delete(name)),
          removeCheckpoint: (projection) => guarded("removeCheckpoint", () => void checkpoints.delete(projection)),
          load: (name, ids) =>
            guarded("load", () => {
              const documents = collection(name)
              const found = new Map<string, StoredDocument>()
              for (const id of ids) {
                const doc = documents.get(id)
                if (doc !== undefined) found.set(id, doc)
              }
              return found
            }),
          write: (batch) => guarded("write", () => write(batch)),
          readCheckpoint: (projection) => guarded("readCheckpoint", () => Option.fromNullable(checkpoints.get(projection))),
          commitCheckpoint: (checkpoint) => guarded("commitCheckpoint", () => commit(checkpoint)),
          deadLetter: (letter) => guarded("deadLetter", () => void deadLetters.set(letter.id, letter)),
          deadLetters: (projection) =>
            guarded("deadLetters", () => [...deadLetters.values()].filter((l) => l.projection === projection)),
          removeDeadLetter: (id) => guarded("removeDeadLetter", () => void deadLetters.delete(id)),
          hold: (events) =>
            guarded("hold", () => {
              for (const e of events) {
                const key = heldKey(e.projection, e.document, e.streamId, e.revision)
                if (!heldEvents.has(key)) heldEvents.set(key, e)
              }
            }),
          heldEvents: (projection, document) =>
            guarded("heldEvents", () =>
              [...heldEvents.values()]
                .filter((e) => e.projection === projection && e.document === document)
                .sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0))),
          releaseHeld: (projection, document, events) =>
            guarded("releaseHeld", () => {
              for (const e of events) heldEvents.delete(heldKey(projection, document, e.streamId, e.revision))
            }),
          resolveDeadLetter: (resolution) =>
            guarded("resolveDeadLetter", () => {
              if (!resolutions.has(resolution.letter.id)) resolutions.set(resolution.letter.id, resolution)
              deadLetters.delete(resolution.letter.id)
            }),
          resolutions: (projection) =>
            guarded("resolutions", () => [...resolutions.values()].filter((r) => r.letter.projection === projection)),
          loadProgress: (projection, streams) =>
            guarded("loadProgress", () => {
              const stored = projectionProgress(projection)
              const found = new Map<string, StreamProgress>()
              for (const stream of streams) {
                const record = stored.get(stream)
                if (record !== undefined) found.set(stream, record)
              }
              return found
            }),
          commitProgress: (projection, progress, gaps = []) =>
            guarded("commitProgress", () => {
              for (const gap of gaps) skipped.set(JSON.stringify([projection, gap.stream, String(gap.from)]), gap)
              const stored = projectionProgress(projection)
              for (const { parked = [], revision, stream } of progress) {
                const current = stored.get(stream)
                const all = [...new Set([...(current?.parked ?? []), ...parked])].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
                stored.set(stream, {
                  stream,
                  revision: current === undefined || revision > current.revision ? revision : current.revision,
                  parked: all
                })
              }
            }),
          gaps: (projection) => guarded("gaps", () => [...skipped.values()].filter((g) => g.projection === projection))
        },
        progress: (projection) => new Map(projectionProgress(projection)),
        gaps: (projection) => [...skipped.values()].filter((g) => g.projection === projection),
        documents: (name) => {
          const live = new Map<string, StoredDocument>()
          for (const [id, doc] of collection(name)) if (!doc.meta.deleted) live.set(id, doc)
          return live
        },
        stored: (name) => new Map(collection(name)),
        checkpoint: (projection) => checkpoints.get(projection),
        letters: () => [...deadLetters.values()],
        held: () => [...heldEvents.values()],
        resolved: () => [...resolutions.values()],
        failNext: (n) => {
          failures = n
        },
        callsAfterClose: () => afterClose,
        calls: () => calls
      }
      return {
        store,
        close: () => {
          closed = true
        }
      }
    }),
    ({ close }) => Effect.sync(close)
  ).pipe(Effect.map(({ store }) => store))

/**
 * The in-memory event log as the {@link EventSource}, and as {@link InMemoryEventLog}
 * for appending and observing.
 *
 * @since 0.1.0
 */
export const eventLogLayer = (options: EventLogOptions = {}): Layer.Layer<EventSource | InMemoryEventLog> =>
  Layer.effectContext(
    makeEventLog(options).pipe(
      Effect.map((log) => Context.make(InMemoryEventLog, log).pipe(Context.add(EventSource, log.port)))
    )
  )

/**
 * The in-memory store as the {@link ReadModelStore}, and as {@link InMemoryStore}
 * for observing; closed when the layer is released.
 *
 * @since 0.1.0
 */
export const storeLayer = (options: StoreOptions = {}): Layer.Layer<ReadModelStore | InMemoryStore> =>
  Layer.scopedContext(
    makeStore(options).pipe(
      Effect.map((store) => Context.make(InMemoryStore, store).pipe(Context.add(ReadModelStore, store.port)))
    )
  )

/** Both in-memory ports. @since 0.1.0 */
export const layer = (options: { readonly log?: EventLogOptions; readonly store?: StoreOptions } = {}) =>
  Layer.merge(eventLogLayer(options.log), storeLayer(options.store))
