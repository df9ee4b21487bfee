/**
 * The read-model store port: documents, checkpoints and dead letters.
 *
 * The store deals in *encoded* documents (plain data as the projection's document
 * Schema encodes them) plus the engine's bookkeeping, {@link DocumentMeta}, which
 * makes every write guarded: a write names the version it read, and a redelivered
 * event is recognised from the applied markers.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"
import { Context, Data, Effect, Option } from "effect"
import type { Stream } from "effect"

/**
 * What the engine keeps beside each document.
 *
 * - `version` counts the writes of the document: a write succeeds only if the
 *   stored version is the one that was read (optimistic concurrency).
 * - `position`: the highest catch-up position applied to the document.
 * - `streams` (persistent mode): per source stream, the highest revision applied
 *   to the document, kept only for streams whose {@link StreamProgress} had not
 *   reached it when the document was last written (the progress record carries
 *   the rest), so it stays small however many streams feed the document.
 * - `deleted`: the projection removed the document; the store keeps a tombstone
 *   with the markers so that a redelivered event cannot bring it back.
 *
 * @since 0.1.0
 */
export interface DocumentMeta {
  readonly version: number
  readonly position: bigint | undefined
  readonly streams: Readonly<Record<string, bigint>>
  readonly deleted: boolean
}

/** @since 0.1.0 */
export interface StoredDocument {
  readonly id: string
  /** The encoded document; `undefined` for a tombstone. */
  readonly body: Readonly<Record<string, unknown>> | undefined
  readonly meta: DocumentMeta
}

/**
 * One guarded write: replace the document `id` if its stored version is still
 * `expectedVersion` (`0`: the document must not exist yet).
 *
 * @since 0.1.0
 */
export interface DocumentWrite {
  readonly id: string
  readonly expectedVersion: number
  /** The new encoded body; `undefined` writes a tombstone. */
  readonly body: Readonly<Record<string, unknown>> | undefined
  readonly meta: DocumentMeta
}

/**
 * A batch of guarded writes to one collection, optionally with a checkpoint that
 * the store commits together with the documents when it can (a transaction), and
 * otherwise after them.
 *
 * @since 0.1.0
 */
export interface WriteBatch {
  readonly collection: string
  readonly writes: ReadonlyArray<DocumentWrite>
  readonly checkpoint?: Checkpoint | undefined
}

/**
 * The writes whose guard did not hold: another writer got there first. The engine
 * reloads those documents and folds again; everything else in the batch is durable.
 *
 * @since 0.1.0
 */
export interface WriteResult {
  readonly conflicts: ReadonlyArray<string>
  /**
   * Writes the store refused for that document alone, for good (a unique-index
   * violation, a document too large): not applied, the rest of the batch is.
   * The engine quarantines those documents instead of stopping.
   */
  readonly rejected?: ReadonlyArray<{ readonly id: string; readonly reason: string }> | undefined
}

/** @since 0.1.0 */
export interface Checkpoint {
  readonly projection: string
  readonly position: bigint
}

/**
 * Persistent mode, per projection and source stream: every event of `stream`
 * up to `revision` is durably applied to its documents, parked, or skipped by
 * a recorded decision. Written after the documents it covers, so it may lag
 * them but never lead them.
 *
 * @since 0.1.0
 */
export interface StreamProgress {
  readonly stream: string
  readonly revision: bigint
  /**
   * Revisions of the stream parked as poison (added to those stored): a replay
   * of one is parked again rather than taken as a duplicate.
   */
  readonly parked?: ReadonlyArray<bigint> | undefined
}

/**
 * A gap skipped by decision (persistent mode): revisions `from`…`to` of
 * `stream` can never be delivered (deleted, truncated by `$maxCount`/`$maxAge`),
 * so the projection moved past them.
 *
 * @since 0.1.0
 */
export interface SkippedGap {
  readonly projection: string
  readonly stream: string
  readonly from: bigint
  readonly to: bigint
  readonly reason: string
  readonly at: Date
}

/**
 * A recorded event as dead letters and held events keep it: identified by its
 * position (stream and revision), with its raw bytes.
 *
 * @since 0.1.0
 */
export interface RecordedEvent {
  readonly eventId: string
  readonly eventType: string
  readonly streamId: string
  readonly revision: bigint
  readonly position: bigint
  readonly data: Uint8Array
  readonly metadata: Uint8Array
}

/**
 * An event the engine could not apply, kept with its raw bytes and the reason.
 *
 * When `document` is set the letter quarantines that document: its later events
 * are held (see {@link HeldEvent}) until the letter is retried or skipped. A
 * letter without `document` is an event whose documents could not be known (it
 * did not decode, or `key` failed on it).
 *
 * @since 0.1.0
 */
export interface DeadLetter extends RecordedEvent {
  /** {@link letterId} of the projection, the document and the event's position: never the event id alone. */
  readonly id: string
  readonly projection: string
  /** The quarantined document (or a handler's key); absent for an event whose documents are unknown. */
  readonly document?: string | undefined
  readonly reason: string
  readonly at: Date
}

/**
 * Which versions of a projection write which collections, and which version
 * readers see: one record per read model (the projection's `collection`).
 * Changed only by compare-and-set on `revision`, so that two processes never
 * both claim a collection or both cut over.
 *
 * @since 0.1.0
 */
export interface Registration {
  /** The read model's name: the projection's `collection`. */
  readonly readModel: string
  /** The one projection allowed to write this read model. */
  readonly projection: string
  /** The version readers see; `undefined` until one is live. */
  readonly live: number | undefined
  /** Per version (as a decimal string), the collection that version writes. */
  readonly versions: Readonly<Record<string, string>>
  /** Bumped by every change (1 for a new record). */
  readonly revision: number
}

/**
 * The id of a dead letter: a short digest of the projection, the document and
 * the event's recorded position (stream and revision). Two streams may hold
 * events with one id; their letters never collide.
 *
 * @since 0.1.0
 */
export const letterId = (projection: string, document: string | undefined, streamId: string, revision: bigint): string =>
  createHash("sha256")
    .update(JSON.stringify([projection, document ?? null, streamId, String(revision)]))
    .digest("hex")
    .slice(0, 16)

/**
 * An event of a quarantined document, held durably and in order while the
 * document is quarantined, and applied when its letter is retried or skipped.
 * Identified by projection, document and position (stream, revision).
 *
 * @since 0.1.0
 */
export interface HeldEvent extends RecordedEvent {
  readonly projection: string
  readonly document: string
  readonly created: Date
}

/**
 * How a dead letter ended: `retried` (applied after a fix) or `skipped` by
 * decision, by whom and why. Kept as the audit trail once the letter is gone.
 *
 * @since 0.1.0
 */
export interface Resolution {
  readonly letter: DeadLetter
  readonly action: "retried" | "skipped"
  readonly by: string
  readonly reason: string | undefined
  readonly at: Date
}

/**
 * A store failure. `transient` failures (network, failover, write conflicts a
 * transaction may retry) are retried by the engine while it holds back the source.
 *
 * @since 0.1.0
 */
export class StoreError extends Data.TaggedError("StoreError")<{
  readonly message: string
  readonly transient: boolean
  readonly cause?: unknown
}> {}

/**
 * The read-model store port.
 *
 * @since 0.1.0
 */
export class ReadModelStore extends Context.Tag("effect-reconciler/ReadModelStore")<
  ReadModelStore,
  {
    /** The registration of a read model (see {@link Registration}). */
    readonly registration: (readModel: string) => Effect.Effect<Option.Option<Registration>, StoreError>
    /**
     * Stores `next` if the stored record's revision is still `expectedRevision`
     * (`0`: there must be none); `false` when another writer changed it first.
     */
    readonly register: (next: Registration, expectedRevision: number) => Effect.Effect<boolean, StoreError>
    /** Every stored document of a collection (tombstones included), in pages; order unspecified. */
    readonly scan: (collection: string) => Stream.Stream<StoredDocument, StoreError>
    /** Drops a collection with its documents; a missing collection is not an error. */
    readonly dropCollection: (collection: string) => Effect.Effect<void, StoreError>
    /** Removes a checkpoint (a projection version that is gone). */
    readonly removeCheckpoint: (projection: string) => Effect.Effect<void, StoreError>
    /** The stored documents (tombstones included) among `ids`, in one round trip. */
    readonly load: (
      collection: string,
      ids: ReadonlyArray<string>
    ) => Effect.Effect<ReadonlyMap<string, StoredDocument>, StoreError>
    /** All guarded writes of a batch, in one round trip where the store allows. */
    readonly write: (batch: WriteBatch) => Effect.Effect<WriteResult, StoreError>
    readonly readCheckpoint: (projection: string) => Effect.Effect<Option.Option<bigint>, StoreError>
    /** Commits a checkpoint; a lower position than the stored one is ignored. */
    readonly commitCheckpoint: (checkpoint: Checkpoint) => Effect.Effect<void, StoreError>
    /** Stores a dead letter; storing the same letter twice keeps one. */
    readonly deadLetter: (letter: DeadLetter) => Effect.Effect<void, StoreError>
    readonly deadLetters: (projection: string) => Effect.Effect<ReadonlyArray<DeadLetter>, StoreError>
    readonly removeDeadLetter: (id: string) => Effect.Effect<void, StoreError>
    /** Holds events of quarantined documents; holding one (projection, document, stream, revision) twice keeps one. */
    readonly hold: (events: ReadonlyArray<HeldEvent>) => Effect.Effect<void, StoreError>
    /** The held events of a document, in position order. */
    readonly heldEvents: (projection: string, document: string) => Effect.Effect<ReadonlyArray<HeldEvent>, StoreError>
    /** Forgets held events (once applied or skipped), by position. */
    readonly releaseHeld: (
      projection: string,
      document: string,
      events: ReadonlyArray<{ readonly streamId: string; readonly revision: bigint }>
    ) => Effect.Effect<void, StoreError>
    /** Records how a letter ended, then removes the letter; recording one twice keeps one. */
    readonly resolveDeadLetter: (resolution: Resolution) => Effect.Effect<void, StoreError>
    /** The resolved letters of a projection, oldest first. */
    readonly resolutions: (projection: string) => Effect.Effect<ReadonlyArray<Resolution>, StoreError>
    /** Persistent mode: the stored progress of `streams` (streams without a record are absent). */
    readonly loadProgress: (
      projection: string,
      streams: ReadonlyArray<string>
    ) => Effect.Effect<ReadonlyMap<string, StreamProgress>, StoreError>
    /**
     * Persistent mode: records `gaps` (idempotent), then moves each stream's
     * progress up to its revision and adds its parked revisions, in one write
     * per stream; a lower revision than the stored one is ignored, so
     * concurrent engines can only move it forward.
     */
    readonly commitProgress: (
      projection: string,
      progress: ReadonlyArray<StreamProgress>,
      gaps?: ReadonlyArray<SkippedGap>
    ) => Effect.Effect<void, StoreError>
    /** Persistent mode: the gaps a projection skipped, oldest first. */
    readonly gaps: (projection: string) => Effect.Effect<ReadonlyArray<SkippedGap>, StoreError>
  }
>() {}

/** The bookkeeping of a document that does not exist yet. @since 0.1.0 */
export const emptyMeta: DocumentMeta = { version: 0, position: undefined, streams: {}, deleted: false }
