/**
 * The event source port: what the engine needs from an event store.
 *
 * A source hands over {@link Delivery deliveries} as an Effect `Stream` that pulls
 * from the underlying client, so the engine's backpressure reaches the server.
 *
 * @since 0.1.0
 */
import { Context, Data, Effect, Option, Stream } from "effect"

/**
 * How a delivery is settled once the engine is done with it.
 *
 * - `Ack`: durably handled (or skipped by decision); never delivered again.
 * - `Nack`: `retry` delivers it again later with `retryCount + 1`; `park` sets it
 *   aside with its reason (a persistent subscription's parked stream); `skip`
 *   drops it on purpose.
 *
 * @since 0.1.0
 */
export type Settlement =
  | { readonly _tag: "Ack" }
  | { readonly _tag: "Nack"; readonly action: NackAction; readonly reason: string }

/** @since 0.1.0 */
export type NackAction = "park" | "retry" | "skip"

/** @since 0.1.0 */
export const ack: Settlement = { _tag: "Ack" }

/** @since 0.1.0 */
export const nack = (action: NackAction, reason: string): Settlement => ({ _tag: "Nack", action, reason })

/**
 * One recorded event as the source hands it over.
 *
 * `position` orders deliveries of one catch-up subscription: it strictly grows
 * along the subscription (for a `$ce-<category>` stream it is the link's
 * revision, for a filtered `$all` subscription the commit position). A catch-up
 * subscription started after position `p` delivers only positions greater than `p`.
 *
 * @since 0.1.0
 */
export interface Delivery {
  /** The recorded event's id (the original event, not the link). */
  readonly id: string
  readonly type: string
  /** The stream the event was appended to, e.g. `account-42`. */
  readonly streamId: string
  /** The event's revision in {@link streamId}. */
  readonly revision: bigint
  /** The subscription's ordering position (see above). */
  readonly position: bigint
  readonly data: Uint8Array
  readonly metadata: Uint8Array
  /** Whether the event was appended as JSON. */
  readonly isJson: boolean
  readonly created: Date
  /** How often this delivery was retried before (persistent subscriptions). */
  readonly retryCount: number
  /**
   * Settles the delivery with its source. Idempotent: only the first call counts.
   * Only persistent deliveries are settled: for a catch-up subscription the
   * engine's checkpoint is the acknowledgement, and the engine does not call this.
   */
  readonly settle: (settlement: Settlement) => Effect.Effect<void, EventSourceError>
}

/**
 * Subscriptions the engine asks for.
 *
 * - `catch-up`: an ordered subscription to the given categories, starting after
 *   `after` (or from the start); the engine stores the checkpoint. With one
 *   category this is the `$ce-<category>` stream with links resolved.
 * - `persistent`: a server-side consumer group; at-least-once, may redeliver.
 *   The group is created if missing.
 *
 * @since 0.1.0
 */
export type Subscription =
  | {
    readonly mode: "catch-up"
    readonly categories: ReadonlyArray<string>
    readonly after: Option.Option<bigint>
  }
  | {
    readonly mode: "persistent"
    readonly categories: ReadonlyArray<string>
    readonly group: string
    /** How many unsettled deliveries the server may push to this subscriber. */
    readonly bufferSize: number
  }

/**
 * A source failure. `retryable` failures (connection lost, server unavailable,
 * subscription dropped) are met by resubscribing with backoff.
 *
 * @since 0.1.0
 */
export class EventSourceError extends Data.TaggedError("EventSourceError")<{
  readonly message: string
  readonly retryable: boolean
  readonly cause?: unknown
}> {}

/**
 * The event source port.
 *
 * @since 0.1.0
 */
export class EventSource extends Context.Tag("effect-reconciler/EventSource")<
  EventSource,
  {
    /**
     * The deliveries of a subscription. The stream pulls from the client; its
     * scope owns the subscription, which closes when the stream's scope closes.
     */
    readonly subscribe: (subscription: Subscription) => Stream.Stream<Delivery, EventSourceError>
    /**
     * The position of the newest event in the given categories, if any: the
     * head a catch-up subscription's checkpoint is compared with to tell lag.
     */
    readonly head: (categories: ReadonlyArray<string>) => Effect.Effect<Option.Option<bigint>, EventSourceError>
    /**
     * Persistent mode: up to `count` events of one stream from revision `from`
     * on, in order, as deliveries that need no settling — the engine reads the
     * events a consumer group has not handed it yet. The first one is the
     * stream's first available event at or after `from`: a higher revision
     * means the events before it are gone (deleted, or truncated by
     * `$maxCount`/`$maxAge`). A missing or deleted stream gives none. Without
     * it, the engine waits for the group to redeliver.
     */
    readonly readStream?: (
      streamId: string,
      from: bigint,
      count: number
    ) => Effect.Effect<ReadonlyArray<Delivery>, EventSourceError>
    /**
     * Optional. The first event of the given categories after position `after`
     * (from the start when none), in the positions of a catch-up subscription:
     * the oldest event a projection whose checkpoint is `after` has not applied.
     * Sources that cannot tell (or not for several categories) answer none.
     */
    readonly firstAfter?: (
      categories: ReadonlyArray<string>,
      after: Option.Option<bigint>
    ) => Effect.Effect<Option.Option<{ readonly position: bigint; readonly created: Date }>, EventSourceError>
    /**
     * Optional. The position of one appended event in the catch-up
     * subscription of the given categories — the position a projection's
     * checkpoint reaches once it has applied that event — found without
     * reading the subscription. Its `$all` position helps where the append
     * reported it. None while the source cannot place it yet (a category link
     * the server has not written), or never for an event outside the categories.
     */
    readonly positionOf?: (
      categories: ReadonlyArray<string>,
      event: {
        readonly streamId: string
        readonly revision: bigint
        readonly position?: { readonly commit: bigint; readonly prepare: bigint } | undefined
      }
    ) => Effect.Effect<Option.Option<bigint>, EventSourceError>
    /**
     * Optional, persistent mode. Replays the parked messages of a consumer
     * group (on each category's subscription): the server pushes them to the
     * group's subscribers again before new events, with `retryCount` 0 and
     * their positions unchanged, and removes them from the parked stream. The
     * replay is not durable (a server restart before delivery loses it from the
     * group), so nothing may depend on the copies arriving.
     */
    readonly replayParked?: (categories: ReadonlyArray<string>, group: string) => Effect.Effect<void, EventSourceError>
    /**
     * Optional. A consumer group as the server sees it, summed over the
     * group's subscriptions (one per category); none when it does not exist.
     */
    readonly groupStatus?: (
      categories: ReadonlyArray<string>,
      group: string
    ) => Effect.Effect<Option.Option<GroupStatus>, EventSourceError>
  }
>() {}

/**
 * What a persistent subscription's consumer group has, from the server.
 *
 * @since 0.1.0
 */
export interface GroupStatus {
  /** Delivered to a subscriber and not acknowledged yet. */
  readonly outstanding: number
  /** Parked (in the group's parked stream), waiting for a replay. */
  readonly parked: number
  /**
   * Events of the group's streams not acknowledged yet: not yet read by the
   * group, buffered for delivery or retry, and outstanding.
   */
  readonly pending: number
}

/**
 * The category of a stream id by EventStoreDB's `$by_category` rule: the part
 * before the first `-`. A stream id without `-`, one starting with `-`, and a
 * system stream (`$…`) have no category: the server links them into no
 * `$ce-` stream, so no category subscription sees them.
 *
 * @since 0.1.0
 */
export const categoryOf = (streamId: string): Option.Option<string> => {
  if (streamId.startsWith("$")) return Option.none()
  const dash = streamId.indexOf("-")
  return dash > 0 ? Option.some(streamId.slice(0, dash)) : Option.none()
}
