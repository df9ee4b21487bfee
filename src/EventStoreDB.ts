/**
 * The {@link EventSource} port over EventStoreDB / KurrentDB, through either
 * official client: `@eventstore/db-client` 6.x or `@kurrent/kurrentdb-client`
 * 1.3 (chosen by the connection string — `kurrentdb://` → KurrentDB — or by
 * the `client` option). One implementation serves both (src/internal/eventStoreClient.ts).
 *
 * - **catch-up**, one category: `$ce-<category>` with links resolved, from the
 *   engine's checkpoint (the link's revision) — or, through the KurrentDB
 *   client on a server with secondary indexes (25.1+), the category index
 *   `$idx-ce-<category>`, positioned like `$all`; several categories: `$all`
 *   filtered by a stream-name regex, positioned by prepare position.
 * - **persistent**: one consumer group per `$ce-<category>` stream (created if
 *   missing, Pinned by default; an existing group with another strategy is
 *   used as it is, with a warning), settled with ack / nack. `readStream` reads
 *   a stream's events for the engine when the group has not handed them over.
 *
 * Deliveries are pulled from the client's subscription (a bounded object-mode
 * readable) only as the engine asks for them, so the engine's backpressure
 * reaches the server (gRPC flow control). A dropped
 * subscription is resubscribed with jittered exponential backoff; when that
 * gives up, the stream fails with a retryable {@link EventSourceError}.
 *
 * Bad input never fails the stream: data that is not JSON, binary data and
 * unreadable metadata are handed over as recorded (raw bytes) for the engine
 * to decode and dead-letter; a link whose event is gone (deleted stream)
 * becomes a delivery of type `$>` carrying the link itself, which projections
 * do not declare, so the engine skips it by decision.
 *
 * @since 0.1.0
 */
import type {
  PersistentSubscriptionToStreamResolvedEvent,
  PersistentSubscriptionToStreamSettings,
  ResolvedEvent
} from "@eventstore/db-client"
import { Chunk, Config, ConfigError, Effect, Layer, Metric, Option, Redacted, Schedule, Stream } from "effect"
import type { Delivery, Settlement, Subscription } from "./EventSource.js"
import { categoryOf, EventSource, EventSourceError } from "./EventSource.js"
import type { AllPosition, ClientKind, GroupSubscription, StoreClient, StreamFilter, Unsubscribable } from "./internal/eventStoreClient.js"
import { ClientPackageConflict, esdb, kindOf, kurrentdb, versionAtLeast } from "./internal/eventStoreClient.js"

/**
 * Adapter options.
 *
 * @since 0.1.0
 */
export interface Options {
  /** e.g. `esdb://127.0.0.1:2113?tls=false` or `kurrentdb://…`; redacted, never logged. */
  readonly connectionString: Redacted.Redacted<string>
  /**
   * The official client to use: `"kurrentdb"` (`@kurrent/kurrentdb-client`,
   * maintained) or `"esdb"` (`@eventstore/db-client` 6.x, frozen). Default: by
   * the connection string's scheme, `kurrentdb://` → `"kurrentdb"`, else `"esdb"`.
   */
  readonly client?: ClientKind | undefined
  /**
   * How a catch-up subscription reads one category: `"links"` — the
   * `$ce-<category>` stream of the `$by_category` projection; `"index"` — the
   * `$idx-ce-<category>` secondary index of KurrentDB 25.1+ (no link events
   * needed), KurrentDB client only; `"auto"` (default) — the index where the
   * client can read it and the server reports 25.1 or later, else links. The
   * two paths position their checkpoints differently (link revision / log
   * position): a checkpoint one path wrote is refused by the other where it
   * can tell (see docs/embedded-eventstore.md), so pin the path of a running
   * projection before changing servers.
   */
  readonly categoryReads?: "auto" | "links" | "index" | undefined
  /**
   * Settings of consumer groups the adapter creates (persistent mode). Defaults:
   * start from the beginning, resolve links, Pinned consumer strategy, and the
   * client's defaults otherwise. Existing groups are used as they are.
   */
  readonly persistentSettings?: Partial<PersistentSubscriptionToStreamSettings> | undefined
  /**
   * How a dropped subscription is resubscribed before the failure is handed to
   * the engine. Default: jittered exponential from 100 ms capped at 5 s, 10 times.
   */
  readonly resubscribe?: Schedule.Schedule<unknown, EventSourceError> | undefined
}

/**
 * Options from configuration: `EVENTSTORE_CONNECTION_STRING` (redacted), and
 * optionally `EVENTSTORE_CLIENT` (`esdb` | `kurrentdb`) and
 * `EVENTSTORE_CATEGORY_READS` (`auto` | `links` | `index`).
 *
 * @since 0.1.0
 */
export const config: Config.Config<Options> = Config.all({
  connectionString: Config.redacted("EVENTSTORE_CONNECTION_STRING"),
  client: Config.literal("esdb", "kurrentdb")("EVENTSTORE_CLIENT").pipe(Config.option, Config.map(Option.getOrUndefined)),
  categoryReads: Config.literal("auto", "links", "index")("EVENTSTORE_CATEGORY_READS").pipe(
    Config.option,
    Config.map(Option.getOrUndefined)
  )
})

/**
 * Resubscriptions after a dropped subscription or an unavailable server.
 *
 * @since 0.1.0
 */
export const resubscriptions = Metric.counter("eventstore_resubscriptions", {
  description: "EventStoreDB subscriptions resubscribed after a drop",
  incremental: true
})

const defaultResubscribe: Schedule.Schedule<unknown, EventSourceError> = Schedule.exponential("100 millis").pipe(
  Schedule.union(Schedule.spaced("5 seconds")),
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(10))
)

// The clients' constants (the same in both packages), kept here so that importing this module loads neither client.
const START = "start" as const
const PINNED = "Pinned" as const

/** The consumer-group settings the adapter creates groups with (before `persistentSettings`). */
export const defaultPersistentSettings: Partial<PersistentSubscriptionToStreamSettings> = {
  startFrom: START,
  resolveLinkTos: true,
  consumerStrategyName: PINNED
}

// ---- errors ----------------------------------------------------------------

const errorType = (error: unknown): string | undefined =>
  typeof error === "object" && error !== null && "type" in error && typeof error.type === "string"
    ? error.type
    : undefined

/** Failures that resubscribing cannot fix. */
const permanent = new Set(["access-denied", "stream-deleted", "invalid-argument", "unsupported", "not-leader"])

const sourceError = (what: string) => (cause: unknown): EventSourceError => {
  const type = errorType(cause)
  const detail = cause instanceof Error ? cause.message : String(cause)
  return new EventSourceError({
    message: `${what}: ${type ?? "error"}${detail ? ` (${detail})` : ""}`,
    retryable: type === undefined || !permanent.has(type),
    cause
  })
}

// ---- conversion ------------------------------------------------------------

/** A protocol recorded event, as far as the adapter reads it. */
interface GrpcRecord {
  getId(): GrpcUUID | undefined
  getStreamIdentifier(): { getStreamName_asU8(): Uint8Array } | undefined
  getStreamRevision(): string | number
  getCommitPosition?(): string | number | undefined
  getPreparePosition?(): string | number | undefined
  getMetadataMap(): { get(key: string): string | undefined }
  getData_asU8(): Uint8Array
  getCustomMetadata_asU8(): Uint8Array
}
interface GrpcUUID {
  hasStructured(): boolean
  getStructured(): { getMostSignificantBits(): string | number; getLeastSignificantBits(): string | number } | undefined
  getString(): string
}
interface GrpcReadEvent {
  hasEvent(): boolean
  getEvent(): GrpcRecord | undefined
  hasLink(): boolean
  getLink(): GrpcRecord | undefined
  hasCommitPosition?(): boolean
  getCommitPosition?(): string | number
  hasRetryCount?(): boolean
  getRetryCount?(): number
}

const utf8 = new TextDecoder()
const TICKS_PER_MS = 10_000n

const hex64 = (n: string | number) => BigInt.asUintN(64, BigInt(n)).toString(16).padStart(16, "0")

const uuidOf = (uuid: GrpcUUID | undefined): string => {
  if (uuid === undefined) return ""
  if (!uuid.hasStructured()) return uuid.getString()
  const s = uuid.getStructured()!
  const h = hex64(s.getMostSignificantBits()) + hex64(s.getLeastSignificantBits())
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

/** Milliseconds since the epoch of a `created` tick count (100 ns since the epoch), in digits: no BigInt per event. */
const createdOf = (ticks: string | undefined): Date => {
  if (ticks === undefined) return new Date(0)
  // A positive decimal: drop the last four digits (ticks per ms); anything else the slow, exact way.
  if (/^\d{5,19}$/.test(ticks)) return new Date(Number(ticks.slice(0, -4)))
  try {
    return new Date(Number(BigInt(ticks) / TICKS_PER_MS))
  } catch {
    return new Date(0)
  }
}

const empty = new Uint8Array()

/** How a delivery settles: catch-up deliveries share this one (the engine never settles them; idempotent by nature). */
const settleNothing = (_: Settlement): Effect.Effect<void, EventSourceError> => Effect.void

/**
 * A delivery straight from a gRPC record: one object per event, nothing the
 * engine does not read (a link's own fields, positions it does not use) is
 * converted. A link whose event is gone is handed over as the link (type `$>`).
 */
const deliveryOf = (
  record: GrpcRecord,
  id: string,
  position: bigint,
  retryCount: number,
  settle: (settlement: Settlement) => Effect.Effect<void, EventSourceError>
): Delivery => {
  const metadata = record.getMetadataMap()
  const created = createdOf(metadata.get("created"))
  return {
    id,
    type: metadata.get("type") ?? "<no-event-type-provided>",
    streamId: utf8.decode(record.getStreamIdentifier()?.getStreamName_asU8() ?? empty),
    revision: BigInt(record.getStreamRevision()),
    position,
    data: record.getData_asU8(),
    metadata: record.getCustomMetadata_asU8(),
    isJson: metadata.get("content-type") === "application/json",
    created: Number.isNaN(created.getTime()) ? new Date(0) : created,
    retryCount,
    settle
  }
}

/** A record of a subscription's gRPC event: the event, or the link when its event is gone. */
const recordOf = (grpcEvent: GrpcReadEvent): GrpcRecord | undefined =>
  grpcEvent.hasEvent() ? grpcEvent.getEvent() : grpcEvent.getLink()

/** A revision in a category stream: the link's (the record's own when read unresolved). */
const linkRevisionOf = (grpcEvent: GrpcReadEvent): bigint =>
  BigInt((grpcEvent.hasLink() ? grpcEvent.getLink() : grpcEvent.getEvent())!.getStreamRevision())

/** The `$all` prepare position of a record, as the clients tell it (both commit and prepare set). */
const preparePositionOf = (record: GrpcRecord | undefined): bigint | undefined => {
  const commit = record?.getCommitPosition?.()
  const prepare = record?.getPreparePosition?.()
  return commit === undefined || commit === null || prepare === undefined || prepare === null ? undefined : BigInt(prepare)
}

/** A conversion that failed inside the client's readable: handed over as a value, failed typed by the pull. */
class ConversionFailed {
  constructor(readonly error: unknown) {}
}

/**
 * How one subscription makes deliveries: `light` from each gRPC event (the
 * hook the clients' subscription readables call for each event, replaced with
 * it), `resolved` from the client's own conversion where a client has no
 * such hook.
 */
interface Conversion {
  readonly light: (grpcEvent: GrpcReadEvent, subscription: Unsubscribable) => Delivery
  readonly resolved: (resolved: any, subscription: Unsubscribable) => Delivery
}

/**
 * Replaces a subscription's conversion of each gRPC event with `light`, so
 * that its readable buffers finished deliveries (no JSON parsing, no
 * intermediate objects). Never throws into the client's stream: a failure is
 * buffered as a {@link ConversionFailed}. False when the client has no hook.
 */
const convertLightly = (subscription: Unsubscribable, light: Conversion["light"]): boolean => {
  const s = subscription as unknown as { convertGrpcEvent?: (e: GrpcReadEvent) => object }
  if (typeof s.convertGrpcEvent !== "function") return false
  s.convertGrpcEvent = (grpcEvent) => {
    try {
      return light(grpcEvent, subscription)
    } catch (error) {
      return new ConversionFailed(error)
    }
  }
  return true
}

const encoder = new TextEncoder()

const bytesOf = (value: unknown): Uint8Array =>
  value === undefined || value === null
    ? new Uint8Array()
    : value instanceof Uint8Array
    ? value
    : typeof value === "string"
    ? encoder.encode(value)
    : encoder.encode(JSON.stringify(value))

type Recorded = NonNullable<ResolvedEvent["event"]>

type Settle = (settlement: Settlement) => Effect.Effect<void, EventSourceError>

/** A settle that counts only its first call. */
const once = (settle: Settle): Settle => {
  let settled = false
  return (settlement) =>
    Effect.suspend(() => {
      if (settled) return Effect.void
      settled = true
      return settle(settlement)
    })
}

/** Turns a resolved event into a delivery; `position` is the subscription's ordering position. */
export const toDelivery = (
  resolved: ResolvedEvent & { readonly retryCount?: number; readonly commitPosition?: bigint },
  position: bigint,
  settle?: Settle
): Delivery => {
  // A link whose event is gone is handed over as the link itself (type `$>`).
  const record: Recorded = (resolved.event ?? resolved.link)!
  return {
    id: record.id,
    type: record.type,
    streamId: record.streamId,
    revision: record.revision,
    position,
    data: bytesOf(record.data),
    metadata: bytesOf(record.metadata),
    isJson: record.isJson,
    created: record.created instanceof Date && !Number.isNaN(record.created.getTime()) ? record.created : new Date(0),
    retryCount: resolved.retryCount ?? 0,
    settle: settle === undefined ? settleNothing : once(settle)
  }
}

/** Catch-up along a category stream: ordered by link revision. */
const linkDeliveries: Conversion = {
  light: (grpcEvent) => {
    const record = recordOf(grpcEvent)!
    return deliveryOf(record, uuidOf(record.getId()), linkRevisionOf(grpcEvent), 0, settleNothing)
  },
  resolved: (resolved: ResolvedEvent) => toDelivery(resolved, (resolved.link ?? resolved.event)!.revision)
}

const noPosition = (id: string | undefined) =>
  new EventSourceError({ message: `an event of $all came without its position (${id})`, retryable: false })

/** Catch-up along filtered `$all`: ordered by prepare position. */
const allDeliveries: Conversion = {
  light: (grpcEvent) => {
    const event = grpcEvent.hasEvent() ? grpcEvent.getEvent() : undefined
    const position = preparePositionOf(event) ?? preparePositionOf(grpcEvent.hasLink() ? grpcEvent.getLink() : undefined)
    if (position === undefined) throw noPosition(event && uuidOf(event.getId()))
    const record = recordOf(grpcEvent)!
    return deliveryOf(record, uuidOf(record.getId()), position, 0, settleNothing)
  },
  resolved: (resolved: ResolvedEvent) => {
    const recorded = resolved.event?.position ?? resolved.link?.position
    if (recorded === undefined) throw noPosition(resolved.event?.id)
    return toDelivery(resolved, allPosition(recorded))
  }
}

/** How long an ack or nack may take before the settlement fails (retryably). */
const SETTLE_TIMEOUT_MS = 10_000

/**
 * Settles a group's delivery: ack / nack by the id the server knows it by
 * (the link's, else the event's), failing retryably once the subscription
 * closed or after {@link SETTLE_TIMEOUT_MS}. The timeout is a plain timer,
 * not `Effect.timeout` (a fiber and a race per delivery cost more than the
 * ack itself); it only guards against a call that never answers.
 */
const settleInGroup = (
  subscription: Unsubscribable,
  acked: { readonly event?: { readonly id: string }; readonly link?: { readonly id: string } },
  id: string,
  group: string
): Settle => {
  const sub = subscription as GroupSubscription
  const target = acked as PersistentSubscriptionToStreamResolvedEvent
  const what = () => `settling ${id} in ${group}`
  return (settlement) =>
    closed.has(sub)
      ? Effect.fail(
        new EventSourceError({ message: `${what()}: the subscription is closed; it will be redelivered`, retryable: true })
      )
      : Effect.async<void, EventSourceError>((resume) => {
        const timer = setTimeout(
          () => resume(Effect.fail(new EventSourceError({ message: `${what()}: timed out`, retryable: true }))),
          SETTLE_TIMEOUT_MS
        )
        timer.unref()
        const done = (outcome: Effect.Effect<void, EventSourceError>) => {
          clearTimeout(timer)
          resume(outcome)
        }
        let call: Promise<void>
        try {
          call = settlement._tag === "Ack" ? sub.ack(target) : sub.nack(settlement.action, settlement.reason, target)
        } catch (error) {
          call = Promise.reject(error)
        }
        call.then(() => done(Effect.void), (error) => done(Effect.fail(sourceError(what())(error))))
        return Effect.sync(() => clearTimeout(timer))
      })
}

/** A consumer group's deliveries: ordered by link revision, each settled with the group. */
const groupDeliveries = (group: string): Conversion => ({
  light: (grpcEvent, subscription) => {
    const record = recordOf(grpcEvent)!
    const link = grpcEvent.hasLink() ? grpcEvent.getLink() : undefined
    const id = uuidOf(record.getId())
    const acked = link === undefined ? { event: { id } } : { link: { id: uuidOf(link.getId()) } }
    return deliveryOf(
      record,
      id,
      BigInt((link ?? record).getStreamRevision()),
      grpcEvent.hasRetryCount?.() ? grpcEvent.getRetryCount!() : 0,
      once(settleInGroup(subscription, acked, id, group))
    )
  },
  resolved: (resolved: PersistentSubscriptionToStreamResolvedEvent, subscription) =>
    toDelivery(
      resolved,
      (resolved.link ?? resolved.event)!.revision,
      settleInGroup(subscription, resolved, (resolved.event ?? resolved.link)?.id ?? "", group)
    )
})

// ---- subscriptions ---------------------------------------------------------

const categoryStream = (category: string) => `$ce-${category}`
/** KurrentDB 25.1's secondary index of a category, read as a one-prefix stream filter of `$all`. */
const indexStream = (category: string) => `$idx-ce-${category}`

// Events appended together share their commit position and differ by prepare
// position; the prepare position is unique and grows along `$all`, and fits the
// 64 bits stores keep. Resuming after it may hand over the rest of its append
// again (those are recognised as applied).
/** The position a delivery of a filtered `$all` subscription carries: its prepare position. */
export const allPosition = (position: { readonly commit: bigint; readonly prepare: bigint }): bigint => position.prepare
/** The `$all` position to resume after a delivery position. */
export const positionOfAll = (prepare: bigint) => ({ commit: prepare, prepare })
const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
/** The `$all` stream-name filter of several categories. */
export const categoriesRegex = (categories: ReadonlyArray<string>) =>
  `^(?:${categories.map(escapeRegex).join("|")})-`

/** Events a subscription's readable buffers ahead of the engine (its high-water mark). */
const READ_AHEAD = 128

/**
 * How long a woken pull lets a backlog stream in before it takes what is
 * buffered: further turns of the event loop while the buffer still grows, at
 * most this many and this long. A lone live event waits one extra turn.
 */
const COALESCE_TURNS = 8
const COALESCE_MS = 2

/** Subscriptions whose scope closed: settling their deliveries is pointless (the server redelivers). */
const closed = new WeakSet<object>()

/** Subscriptions open on a client, failed when the client is disposed under them. */
type OpenSubscriptions = Set<Unsubscribable>

/**
 * Pulls a client subscription: each pull takes what the subscription has
 * buffered (at most {@link READ_AHEAD} events) as one chunk, or waits for the
 * next event. Not reading lets the buffers fill, and gRPC
 * flow control holds the server back. The scope owns the subscription:
 * closing it cancels the call. The stream fails with a retryable error when
 * the subscription fails or the server ends it (a drop).
 */
const pull = (
  live: OpenSubscriptions,
  open: () => Unsubscribable,
  what: string,
  conversion: Conversion,
  /** Called for each delivery as it is taken (the resume point moves here, not when the client buffers it). */
  taken: (delivery: Delivery) => void = () => {}
): Stream.Stream<Delivery, EventSourceError> =>
  Stream.unwrapScoped(
    Effect.gen(function*() {
      const subscription = yield* Effect.try({ try: open, catch: sourceError(what) })
      const light = convertLightly(subscription, conversion.light)
      live.add(subscription)
      // listeners stay for the subscription's life, so no error is ever unhandled
      let failure: EventSourceError | undefined
      let wake: (() => void) | undefined
      const notify = () => {
        const w = wake
        wake = undefined
        w?.()
      }
      const onError = (error: unknown) => {
        failure ??= error instanceof EventSourceError ? error : sourceError(what)(error)
        notify()
      }
      const onEnd = () => {
        failure ??= new EventSourceError({ message: `${what}: the subscription ended`, retryable: true })
        notify()
      }
      subscription.on("error", onError)
      subscription.on("end", onEnd)
      subscription.on("close", onEnd)
      subscription.on("readable", notify)
      // Closing: cancel the call, then destroy the readable. Finalizers are
      // uninterruptible: the step is made interruptible so its timeout holds.
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          closed.add(subscription)
          live.delete(subscription)
        }).pipe(
          // tryPromise: a rejection (say, the call never opened) must not become a defect.
          Effect.zipRight(Effect.tryPromise(() => subscription.unsubscribe())),
          Effect.interruptible,
          Effect.timeout("5 seconds"),
          Effect.ignore,
          Effect.zipRight(Effect.sync(() => {
            subscription.off("readable", notify)
            subscription.destroy()
          }))
        )
      )
      const next: Effect.Effect<Chunk.Chunk<Delivery>, Option.Option<EventSourceError>> = Effect.suspend(() => {
        const out: Array<Delivery> = []
        for (let a = subscription.read() as unknown; a !== null; a = subscription.read() as unknown) {
          let delivery: Delivery
          try {
            if (a instanceof ConversionFailed) throw a.error
            delivery = light ? (a as Delivery) : conversion.resolved(a, subscription)
          } catch (error) {
            // A record the source cannot position fails the stream, loudly and typed.
            return Effect.fail(Option.some(error instanceof EventSourceError ? error : sourceError(what)(error)))
          }
          taken(delivery)
          out.push(delivery)
          if (out.length >= READ_AHEAD) break
        }
        if (out.length > 0) return Effect.succeed(Chunk.unsafeFromArray(out))
        if (failure) return Effect.fail(Option.some(failure))
        // nothing buffered: wait for the next event (or the end), then pull again. Never an
        // empty chunk: the resubscribe schedule restarts on every chunk that passes.
        // Woken by the first event, it reads after the current turn of the event loop, and after
        // further turns while more keeps arriving, so that a backlog is taken in chunks (each
        // pull costs the stream's machinery once, whatever its size), not an event or two per pull.
        return Effect.async<void>((resume) => {
          if (subscription.readableLength > 0 || failure) return resume(Effect.void)
          let turn: ReturnType<typeof setImmediate> | undefined
          let seen = 0
          let turns = 0
          let woken = 0
          const settle = () => {
            const length = subscription.readableLength
            if (
              failure || length >= READ_AHEAD || length <= seen || ++turns >= COALESCE_TURNS ||
              performance.now() - woken >= COALESCE_MS
            ) {
              turn = undefined
              return resume(Effect.void)
            }
            seen = length
            turn = setImmediate(settle)
          }
          wake = () => {
            woken = performance.now()
            turn = setImmediate(settle)
          }
          return Effect.sync(() => {
            wake = undefined
            if (turn !== undefined) clearImmediate(turn)
          })
        }).pipe(Effect.zipRight(next))
      })
      return Stream.repeatEffectChunkOption(next)
    })
  )

const make = Effect.fn("EventStoreDB.make")(function*(options: Options) {
  const live: OpenSubscriptions = new Set()
  let disposed = false
  const connectionString = Redacted.value(options.connectionString)
  const kind = options.client ?? kindOf(connectionString)
  const client: StoreClient = yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: () => (kind === "kurrentdb" ? kurrentdb(connectionString) : esdb(connectionString)),
      // The parser's message quotes the connection string, which may hold credentials:
      // only the position is kept, and not the cause.
      catch: (cause) => {
        if (cause instanceof ClientPackageConflict) return new EventSourceError({ message: cause.message, retryable: false })
        const at = /position (\d+)/.exec(cause instanceof Error ? cause.message : "")?.[1]
        return new EventSourceError({
          message: `invalid EventStoreDB connection string${at === undefined ? "" : ` (at position ${at})`}`,
          retryable: false
        })
      }
    }),
    (client) =>
      Effect.tryPromise(async () => {
        disposed = true
        // A subscription still open now outlived its scope: it fails instead of waiting forever.
        for (const subscription of live) {
          subscription.destroy(
            new EventSourceError({ message: "the EventStoreDB client was closed under the subscription", retryable: false })
          )
        }
        await client.dispose()
      }).pipe(Effect.interruptible, Effect.timeout("5 seconds"), Effect.ignore)
  )
  yield* Effect.annotateCurrentSpan("client", kind)
  const categoryReads = options.categoryReads ?? "auto"
  if (categoryReads === "index" && client.readAllBackwards === undefined) {
    return yield* new EventSourceError({
      message: "categoryReads \"index\" needs the KurrentDB client (the 6.x client cannot read filtered $all)",
      retryable: false
    })
  }
  /** Whether one category is read from its secondary index (decided once, from the server's version). */
  const readsIndex = yield* Effect.cached(
    categoryReads === "links" || client.readAllBackwards === undefined
      ? Effect.succeed(false)
      : categoryReads === "index"
      ? Effect.succeed(true)
      : Effect.tryPromise({ try: () => client.serverVersion(), catch: sourceError("reading the server's features") }).pipe(
        Effect.map((version) => versionAtLeast(version, 25, 1))
      )
  )
  const resubscribe = options.resubscribe ?? defaultResubscribe
  const groupSettings: Partial<PersistentSubscriptionToStreamSettings> = {
    ...defaultPersistentSettings,
    ...options.persistentSettings
  }

  /** Resubscribes a subscription (built from the current resume point) while failures are retryable. */
  const resubscribing = <A>(open: () => Stream.Stream<A, EventSourceError>): Stream.Stream<A, EventSourceError> =>
    Stream.suspend(() =>
      disposed ? Stream.fail(new EventSourceError({ message: "the EventStoreDB client is closed", retryable: false })) : open()
    ).pipe(
      Stream.retry(
        Schedule.whileInput(resubscribe, (e: EventSourceError) => e.retryable).pipe(
          Schedule.tapInput((e: EventSourceError) =>
            e.retryable
              ? Effect.logWarning("EventStoreDB subscription dropped; resubscribing", e.message).pipe(
                Effect.zipRight(Metric.increment(resubscriptions))
              )
              : Effect.void
          )
        )
      )
    )

  const catchUpLinks = (category: string, after: Option.Option<bigint>): Stream.Stream<Delivery, EventSourceError> => {
    let last = after
    return resubscribing(() =>
      pull(
        live,
        () =>
          client.subscribeToStream(categoryStream(category), {
            after: Option.getOrUndefined(last),
            resolveLinkTos: true
          }, READ_AHEAD),
        `catch-up subscription to ${categoryStream(category)}`,
        linkDeliveries,
        (delivery) => {
          last = Option.some(delivery.position)
        }
      )
    )
  }

  /**
   * A checkpoint of the links path is a revision of `$ce-<category>`: one
   * beyond the stream's end was written by another path (the index's log
   * positions are far larger), and reading on from it would skip events.
   */
  const checkLinksCheckpoint = (category: string, after: Option.Option<bigint>) =>
    Option.match(after, {
      onNone: () => Effect.void,
      onSome: (checkpoint) =>
        newest(category).pipe(Effect.flatMap((h) =>
          h !== undefined && h.revision >= checkpoint
            ? Effect.void
            : Effect.fail(
              new EventSourceError({
                message: `the checkpoint ${checkpoint} is beyond the end of ${categoryStream(category)}${
                  h === undefined ? " (no such stream)" : ` (last revision ${h.revision})`
                }: it was not written by a $ce- subscription (an $idx-ce- index read positions by log position); set categoryReads to the path that wrote it, or rebuild`,
                retryable: false
              })
            )
        ))
    })

  const catchUpOne = (category: string, after: Option.Option<bigint>): Stream.Stream<Delivery, EventSourceError> =>
    Stream.unwrap(readsIndex.pipe(Effect.flatMap((index) =>
      index
        ? Effect.succeed(catchUpAll({ prefixes: [indexStream(category)] }, indexStream(category), after))
        : checkLinksCheckpoint(category, after).pipe(Effect.as(catchUpLinks(category, after)))
    )))

  const catchUpMany = (categories: ReadonlyArray<string>, after: Option.Option<bigint>) => {
    const regex = categoriesRegex(categories)
    return catchUpAll({ regex }, `$all (${regex})`, after)
  }

  /** A catch-up subscription to filtered `$all` (several categories, or one category's index), positioned by prepare position. */
  const catchUpAll = (
    filter: StreamFilter,
    label: string,
    after: Option.Option<bigint>
  ): Stream.Stream<Delivery, EventSourceError> => {
    let last = after
    return resubscribing(() =>
      pull(
        live,
        () =>
          client.subscribeToAll({
            after: Option.getOrUndefined(Option.map(last, positionOfAll)),
            filter
          }, READ_AHEAD),
        `catch-up subscription to ${label}`,
        allDeliveries,
        (delivery) => {
          last = Option.some(delivery.position)
        }
      )
    )
  }

  // An existing group is used as it is; another strategy than Pinned only costs holds (the engine restores order).
  const warned = new Set<string>()
  const warnStrategy = (stream: string, group: string) =>
    warned.has(`${group}::${stream}`) ? Effect.void : Effect.tryPromise(() => client.groupInfo(stream, group)).pipe(
      Effect.tap(() => Effect.sync(() => warned.add(`${group}::${stream}`))),
      Effect.flatMap((info) =>
        info.settings.consumerStrategyName === PINNED
          ? Effect.void
          : Effect.logWarning(
            `consumer group ${group} on ${stream} exists with strategy ${info.settings.consumerStrategyName}, not Pinned: ` +
              "it does not keep a stream on one consumer, so the engine holds deliveries that overtake their stream " +
              "until their predecessors are applied (correct, but slower)"
          )
      ),
      Effect.ignore
    )

  const ensureGroup = (stream: string, group: string) =>
    Effect.tryPromise({
      try: () => client.createGroup(stream, group, groupSettings),
      catch: (e) => e
    }).pipe(
      Effect.catchAll((e) =>
        errorType(e) === "persistent-subscription-exists"
          ? warnStrategy(stream, group)
          : Effect.fail(sourceError(`creating group ${group} on ${stream}`)(e))
      ),
      Effect.withSpan("EventStoreDB.ensureGroup", { attributes: { stream, group } })
    )

  const persistentOne = (category: string, group: string, bufferSize: number) => {
    const stream = categoryStream(category)
    return resubscribing(() =>
      Stream.unwrap(ensureGroup(stream, group).pipe(Effect.as(
        pull(
          live,
          (): GroupSubscription => client.subscribeToGroup(stream, group, bufferSize),
          `persistent subscription ${group} on ${stream}`,
          groupDeliveries(group)
        )
      )))
    )
  }

  const subscribe = (subscription: Subscription): Stream.Stream<Delivery, EventSourceError> =>
    Stream.suspend(() =>
      disposed
        ? Stream.fail(new EventSourceError({ message: "the EventStoreDB client is closed", retryable: false }))
        : subscribeOpen(subscription)
    )

  const subscribeOpen = (subscription: Subscription): Stream.Stream<Delivery, EventSourceError> => {
    const categories = [...new Set(subscription.categories)]
    if (categories.length === 0) {
      return Stream.fail(new EventSourceError({ message: "a subscription needs at least one category", retryable: false }))
    }
    if (subscription.mode === "catch-up") {
      return categories.length === 1
        ? catchUpOne(categories[0]!, subscription.after)
        : catchUpMany(categories, subscription.after)
    }
    const bufferSize = Math.max(1, subscription.bufferSize)
    return Stream.mergeAll(categories.map((c) => persistentOne(c, subscription.group, bufferSize)), {
      concurrency: "unbounded"
    })
  }

  /** The newest resolvable event of a category stream: its link revision and its `$all` (prepare) position. */
  const newest = (category: string) =>
    Effect.tryPromise({
      try: async () => {
        // read the page to its end (leaving a read half-consumed keeps its call open)
        const page: Array<ResolvedEvent> = []
        try {
          for await (const resolved of client.readStreamBackwards(categoryStream(category), 16)) page.push(resolved)
        } catch (e) {
          if (errorType(e) === "stream-not-found") return undefined
          throw e
        }
        const newestLink = page[0]?.link ?? page[0]?.event
        if (!newestLink) return undefined
        // the newest event still there, for its commit position
        const resolvable = page.find((r) => r.event?.position !== undefined)
        const position = resolvable?.event?.position
        return { revision: newestLink.revision, all: position === undefined ? undefined : allPosition(position) }
      },
      catch: sourceError(`reading the head of ${categoryStream(category)}`)
    })

  /** The `$all` (prepare) position of the newest event a filtered read of `$all` finds. */
  const newestOfAll = (filter: StreamFilter, label: string) =>
    Effect.tryPromise({
      try: async () => {
        let position: bigint | undefined
        // read the page to its end (leaving a read half-consumed keeps its call open)
        for await (const resolved of client.readAllBackwards!(filter, 1)) {
          const recorded = resolved.event?.position ?? resolved.link?.position
          if (position === undefined && recorded !== undefined) position = allPosition(recorded)
        }
        return position
      },
      catch: sourceError(`reading the head of ${label}`)
    })

  const head = (categories: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      const unique = [...new Set(categories)]
      if (unique.length === 0) return Option.none<bigint>()
      if (unique.length === 1) {
        if (yield* readsIndex) return Option.fromNullable(yield* newestOfAll({ prefixes: [indexStream(unique[0]!)] }, indexStream(unique[0]!)))
        const h = yield* newest(unique[0]!)
        return Option.fromNullable(h?.revision)
      }
      if (client.readAllBackwards !== undefined) {
        const regex = categoriesRegex(unique)
        return Option.fromNullable(yield* newestOfAll({ regex }, `$all (${regex})`))
      }
      const heads = yield* Effect.forEach(unique, newest, { concurrency: "unbounded" })
      let max: bigint | undefined
      for (const h of heads) if (h?.all !== undefined && (max === undefined || h.all > max)) max = h.all
      return Option.fromNullable(max)
    }).pipe(Effect.withSpan("EventStoreDB.head"))

  const readStream = (streamId: string, from: bigint, count: number) =>
    Effect.tryPromise({
      try: async () => {
        const out: Array<Delivery> = []
        try {
          for await (
            const resolved of client.readStreamForwards(streamId, from, count)
          ) {
            if (resolved.event !== undefined) out.push(toDelivery(resolved, resolved.event.revision))
          }
        } catch (e) {
          const type = errorType(e)
          if (type === "stream-not-found" || type === "stream-deleted") return out
          throw e
        }
        return out
      },
      catch: sourceError(`reading ${streamId} from revision ${from}`)
    }).pipe(Effect.withSpan("EventStoreDB.readStream", { attributes: { streamId } }))

  /** The first event of filtered `$all` after position `after` (an `$all` prepare position), with its creation time. */
  const firstOfAllAfter = (filter: StreamFilter, label: string, after: Option.Option<bigint>) =>
    Effect.tryPromise({
      try: async () => {
        let found: { position: bigint; created: Date } | undefined
        // The read includes `after` itself: two events, the first beyond it wins (read to the end: no open call left).
        for await (const resolved of client.readAllForwards!(filter, Option.getOrUndefined(Option.map(after, positionOfAll)), 2)) {
          const recorded = resolved.event?.position ?? resolved.link?.position
          if (found !== undefined || recorded === undefined) continue
          const position = allPosition(recorded)
          if (Option.isSome(after) && position <= after.value) continue
          const created = (resolved.event ?? resolved.link)?.created
          found = { position, created: created instanceof Date ? created : new Date(0) }
        }
        return found
      },
      catch: sourceError(`reading the first event after the checkpoint in ${label}`)
    })

  /** The first link after `after` in a category stream, with its event's creation time. */
  const firstLinkAfter = (category: string, after: Option.Option<bigint>) => {
    const stream = categoryStream(category)
    return Effect.tryPromise({
      try: async () => {
        let found: { position: bigint; created: Date } | undefined
        try {
          for await (
            const resolved of client.readStreamForwards(
              stream,
              Option.match(after, { onNone: () => 0n, onSome: (p) => p + 1n }),
              1,
              true
            )
          ) {
            const record = (resolved.link ?? resolved.event)!
            const created = resolved.event?.created ?? record.created
            found = { position: record.revision, created: created instanceof Date ? created : new Date(0) }
          }
        } catch (e) {
          if (errorType(e) === "stream-not-found") return undefined
          throw e
        }
        return found
      },
      catch: sourceError(`reading the first event after the checkpoint in ${stream}`)
    })
  }

  /**
   * The first event after `after`, in the positions the catch-up subscription
   * of these categories uses: a `$ce-` link revision, or — for the `$idx-ce-`
   * index and for several categories — an `$all` position (several
   * categories only with a client that filters reads).
   */
  const firstAfter = (categories: ReadonlyArray<string>, after: Option.Option<bigint>) =>
    Effect.gen(function*() {
      const unique = [...new Set(categories)]
      if (unique.length === 1) {
        return (yield* readsIndex)
          ? yield* firstOfAllAfter({ prefixes: [indexStream(unique[0]!)] }, indexStream(unique[0]!), after)
          : yield* firstLinkAfter(unique[0]!, after)
      }
      if (unique.length === 0 || client.readAllForwards === undefined) return undefined
      const regex = categoriesRegex(unique)
      return yield* firstOfAllAfter({ regex }, `$all (${regex})`, after)
    }).pipe(Effect.map(Option.fromNullable), Effect.withSpan("EventStoreDB.firstAfter"))

  /** The `$all` position of event `revision` of a stream (read from it when the append did not say). */
  const allPositionOf = (appended: { readonly streamId: string; readonly revision: bigint; readonly position?: AllPosition | undefined }) =>
    appended.position !== undefined
      ? Effect.succeed<bigint | undefined>(allPosition(appended.position))
      : Effect.tryPromise({
        try: async () => {
          let position: bigint | undefined
          try {
            for await (const resolved of client.readStreamForwards(appended.streamId, appended.revision, 1)) {
              if (resolved.event?.revision === appended.revision && resolved.event.position !== undefined) {
                position = allPosition(resolved.event.position)
              }
            }
          } catch (e) {
            const type = errorType(e)
            if (type === "stream-not-found" || type === "stream-deleted") return undefined
            throw e
          }
          return position
        },
        catch: sourceError(`reading ${appended.streamId}@${appended.revision}`)
      })

  /** The link at `revision` of a category stream: the linked event's `$all` position (undefined when the event is gone) and identity. */
  const linkAt = (stream: string, revision: bigint) =>
    Effect.tryPromise({
      try: async () => {
        let found: { all: bigint | undefined; streamId: string | undefined; revision: bigint | undefined } | undefined
        for await (const resolved of client.readStreamForwards(stream, revision, 1, true)) {
          const position = resolved.event?.position
          found = {
            all: position === undefined ? undefined : allPosition(position),
            streamId: resolved.event?.streamId,
            revision: resolved.event?.revision
          }
        }
        return found
      },
      catch: sourceError(`reading ${stream}@${revision}`)
    })

  /**
   * Where an appended event sits in the catch-up subscription of `categories`.
   * Along `$all` (the index, several categories): its `$all` position, no
   * read when the append reported it. Along `$ce-<category>`: the revision of
   * its link, by bisection over the links (`$by_category` writes them in `$all`
   * order): about log2(links) reads of one event each; none while the link is
   * not written yet.
   */
  const positionOf = (
    categories: ReadonlyArray<string>,
    appended: { readonly streamId: string; readonly revision: bigint; readonly position?: AllPosition | undefined }
  ) =>
    Effect.gen(function*() {
      const unique = [...new Set(categories)]
      const category = Option.getOrUndefined(categoryOf(appended.streamId))
      if (category === undefined || !unique.includes(category)) return Option.none<bigint>()
      const target = yield* allPositionOf(appended)
      if (target === undefined) return Option.none<bigint>()
      if (unique.length > 1 || (yield* readsIndex)) return Option.some(target)
      const stream = categoryStream(category)
      const head = yield* newest(category)
      if (head === undefined) return Option.none<bigint>()
      // The first link whose event is at or after the target; a link whose event is gone counts as before it
      // (a few such links can only make the answer later, never earlier).
      let lo = 0n
      let hi = head.revision + 1n
      while (lo < hi) {
        const mid = (lo + hi) / 2n
        const link = yield* linkAt(stream, mid)
        if (link?.all !== undefined && link.all >= target) hi = mid
        else lo = mid + 1n
      }
      if (lo > head.revision) return Option.none<bigint>() // not linked yet
      return Option.some(lo)
    }).pipe(Effect.withSpan("EventStoreDB.positionOf"))

  /** The group's info on each category stream, summed. */
  const groupStatus = (categories: ReadonlyArray<string>, group: string) =>
    Effect.forEach([...new Set(categories)], (category) =>
      Effect.tryPromise({
        try: () => client.groupInfo(categoryStream(category), group),
        catch: (e) => e
      }).pipe(
        Effect.map(Option.some),
        Effect.catchAll((e) =>
          errorType(e) === "persistent-subscription-does-not-exist"
            ? Effect.succeed(Option.none())
            : Effect.fail(sourceError(`reading group ${group} on ${categoryStream(category)}`)(e))
        ),
        Effect.zip(newest(category))
      )).pipe(
        Effect.map((infos) => {
          let found = false
          let outstanding = 0
          let parked = 0
          let pending = 0
          for (const [info, head] of infos) {
            if (Option.isNone(info)) continue
            found = true
            const stats = info.value.stats
            outstanding += stats.outstandingMessagesCount
            parked += Number(stats.parkedMessageCount)
            // Not yet read by the group (its last known event is behind the head), buffered, in flight.
            const known = stats.lastKnownEventRevision
            const unread = head === undefined ? 0n : known === undefined ? head.revision + 1n : head.revision > known ? head.revision - known : 0n
            pending += Number(unread) + stats.readBufferCount + Number(stats.liveBufferCount) + stats.retryBufferCount +
              stats.outstandingMessagesCount
          }
          return found ? Option.some({ outstanding, parked, pending }) : Option.none()
        }),
        Effect.withSpan("EventStoreDB.groupStatus", { attributes: { group } })
      )

  /** Replays the group's parked messages on each category stream. */
  const replayParked = (categories: ReadonlyArray<string>, group: string) =>
    Effect.forEach([...new Set(categories)], (category) =>
      Effect.tryPromise({
        try: () => client.replayParked(categoryStream(category), group),
        catch: sourceError(`replaying the parked messages of group ${group} on ${categoryStream(category)}`)
      }), { discard: true }).pipe(Effect.withSpan("EventStoreDB.replayParked", { attributes: { group } }))

  return EventSource.of({ subscribe, head, readStream, firstAfter, positionOf, groupStatus, replayParked })
})

/**
 * The EventStoreDB event source. The layer owns the client: it is created on
 * acquire and disposed (every subscription cancelled, the channel closed) when
 * the layer's scope closes — after the engine that depends on it has stopped.
 *
 * @since 0.1.0
 */
export const layer = (options: Options): Layer.Layer<EventSource, EventSourceError> => Layer.scoped(EventSource, make(options))

/**
 * {@link layer} from configuration (by default {@link config}: `EVENTSTORE_CONNECTION_STRING`).
 *
 * @since 0.1.0
 */
export const layerConfig = (
  options: Config.Config<Options> = config
): Layer.Layer<EventSource, EventSourceError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(options, layer))
