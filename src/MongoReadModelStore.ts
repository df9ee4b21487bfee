/**
 * The {@link ReadModelStore} over MongoDB, through the official `mongodb` driver.
 *
 * Layout: a read model's document is its encoded body at top level with `_id` =
 * the document id, and the engine's bookkeeping in the reserved field
 * `_reconciler`: `{ version, position, streams: [{ s, r }], deleted, token }`.
 * Positions and revisions are stored as BSON `Long` (read back as `bigint`);
 * stream ids are values, not field names, so any stream id is safe. A tombstone
 * keeps only `_id` and `_reconciler`. Persistent mode keeps one record per
 * projection and source stream in `reconciler_stream_progress` (`$max` on the
 * revision, so it only moves forward) and skipped gaps in `reconciler_gaps`.
 *
 * Guarantees:
 * - `load` is one `find({ _id: { $in } })`.
 * - `write` is one unordered `bulkWrite` of guarded replacements: version 0 is an
 *   upsert whose filter requires the document to be new (an existing `_id` raises
 *   11000: a conflict); version n replaces only `{ _id, "_reconciler.version": n }`.
 *   Conflicts are reported, never applied; everything else is durable on return.
 * - A batch's checkpoint commits in the same transaction as its documents when the
 *   deployment supports transactions (replica set or mongos), otherwise after them.
 *   Checkpoints never move backwards (`$max`).
 * - Transient driver errors (retryable/transient labels, network, pool cleared,
 *   server selection) become `StoreError { transient: true }`; the rest
 *   `transient: false`, with the driver error as `cause`.
 * - After the layer's scope closes, every call fails with a non-transient
 *   `StoreError` saying so.
 *
 * @since 0.1.0
 */
import { randomBytes } from "node:crypto"
import { Config, ConfigError, Effect, Layer, Option, Redacted } from "effect"
import { Chunk, Stream } from "effect"
import {
  type AnyBulkWriteOperation,
  Binary,
  type BulkWriteResult,
  type ClientSession,
  type Collection,
  type Db,
  type Document,
  Long,
  MongoBulkWriteError,
  MongoClient,
  type MongoClientOptions,
  MongoError,
  MongoNetworkError,
  MongoServerSelectionError,
  MongoTopologyClosedError,
  MongoClientClosedError,
  MongoNotConnectedError,
  type WriteConcernSettings
} from "mongodb"
import {
  type Checkpoint,
  type DeadLetter,
  type DocumentMeta,
  type HeldEvent,
  type RecordedEvent,
  type Resolution,
  type DocumentWrite,
  ReadModelStore,
  type SkippedGap,
  StoreError,
  type StoredDocument,
  type StreamProgress,
  type WriteBatch,
  type WriteResult
} from "./ReadModelStore.js"
import type { Registration } from "./ReadModelStore.js"

/** The reserved field holding the engine's bookkeeping. @since 0.1.0 */
export const META_FIELD = "_reconciler"
/**
 * The read-model registry: one document per read model,
 * `{ _id: <read model>, projection, live, collection, versions: { "<version>": <collection> }, revision }`.
 * `collection` is the collection of the live version (`null` until one is live):
 * readers in any language find the live version of read model X with
 * `findOne({ _id: X })` here and query `collection`. Cut-over changes it in one
 * single-document update, so a reader sees either the old or the new version.
 *
 * @since 0.1.0
 */
export const READ_MODELS = "reconciler_read_models"

/** Documents per page when scanning a collection. */
const SCAN_PAGE = 1000
/** @since 0.1.0 */
export const CHECKPOINTS = "reconciler_checkpoints"
/** @since 0.1.0 */
export const DEAD_LETTERS = "reconciler_dead_letters"
/** Events held for quarantined documents, `_id` = projection, document, stream and revision. @since 0.1.0 */
export const HELD_EVENTS = "reconciler_held_events"
/** Resolved dead letters (retried or skipped, by whom and why). @since 0.1.0 */
export const RESOLVED_LETTERS = "reconciler_resolved_letters"
/** Persistent mode: one record per projection and source stream, `{ projection, stream, revision }`. @since 0.1.0 */
export const STREAM_PROGRESS = "reconciler_stream_progress"
/** Persistent mode: gaps skipped by decision. @since 0.1.0 */
export const GAPS = "reconciler_gaps"

/** @since 0.1.0 */
export interface Options {
  /** The connection string; kept redacted, never logged. */
  readonly uri: string | Redacted.Redacted<string>
  /** Default `read_models`. */
  readonly database?: string | undefined
  /** Extra driver options (`useBigInt64` is always on). */
  readonly clientOptions?: MongoClientOptions | undefined
  /** `auto` (default): transactions when the server is a replica-set member or mongos. */
  readonly transactions?: "auto" | "always" | "never" | undefined
  /** For writes outside transactions; default `{ w: "majority" }` so a returned write is durable. */
  readonly writeConcern?: WriteConcernSettings | undefined
  /** Read-model indexes to ensure at start (e.g. unique constraints); a violation fails the write with a non-transient error. */
  readonly indexes?: ReadonlyArray<IndexDefinition> | undefined
}

/** An index on a read-model collection, on fields of the encoded body. @since 0.1.0 */
export interface IndexDefinition {
  readonly collection: string
  readonly key: Readonly<Record<string, 1 | -1>>
  readonly unique?: boolean | undefined
  readonly name?: string | undefined
}

/** Configuration from the environment: `MONGODB_URI` (redacted) and `MONGODB_DATABASE` (default `read_models`). @since 0.1.0 */
export const config: Config.Config<Options> = Config.all({
  uri: Config.redacted("MONGODB_URI"),
  database: Config.string("MONGODB_DATABASE").pipe(Config.withDefault("read_models"))
})

const transientCodes = new Set([6, 7, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 251])

const closedError = () =>
  new StoreError({ message: "MongoReadModelStore used after its scope closed (the MongoClient is closed)", transient: false })

const TRANSACTION_RETRIES = 5

/**
 * A write's token tells its own earlier attempt (a retry after a lost reply) from
 * another writer's write: 72 random bits per process, then a batch counter.
 */
const processNonce = randomBytes(9).toString("base64url")
let batchCounter = 0

/** Whether a driver error, or the error it wraps, carries `label`. */
const hasLabel = (cause: unknown, label: string, depth = 0): boolean => {
  if (depth > 4 || cause === null || typeof cause !== "object") return false
  if (cause instanceof MongoError && cause.hasErrorLabel(label)) return true
  const wrapped = cause as { errorResponse?: unknown; cause?: unknown }
  return hasLabel(wrapped.errorResponse, label, depth + 1) || hasLabel(wrapped.cause, label, depth + 1)
}

/** Whether a driver error (or the error it wraps, as a bulk write wraps a network error) is transient. */
const isTransient = (cause: unknown, depth = 0): boolean => {
  if (depth > 4 || cause === null || typeof cause !== "object") return false
  if (cause instanceof MongoNetworkError || cause instanceof MongoServerSelectionError) return true
  if (
    cause instanceof MongoError &&
    (cause.hasErrorLabel("RetryableWriteError") ||
      cause.hasErrorLabel("TransientTransactionError") ||
      cause.hasErrorLabel("UnknownTransactionCommitResult") ||
      cause.hasErrorLabel("ResetPool") ||
      cause.hasErrorLabel("PoolRequestedRetry") ||
      (typeof cause.code === "number" && transientCodes.has(cause.code)) ||
      cause.name === "MongoPoolClearedError")
  ) {
    return true
  }
  const wrapped = cause as { errorResponse?: unknown; cause?: unknown }
  return isTransient(wrapped.errorResponse, depth + 1) || isTransient(wrapped.cause, depth + 1)
}

/** Classifies a driver error. @since 0.1.0 */
export const toStoreError = (operation: string, cause: unknown, closed = false): StoreError => {
  if (closed || cause instanceof MongoTopologyClosedError || cause instanceof MongoClientClosedError || cause instanceof MongoNotConnectedError) {
    return closed
      ? closedError()
      : new StoreError({ message: `${operation}: the MongoClient is closed`, transient: false, cause })
  }
  const detail = cause instanceof Error ? cause.message : String(cause)
  return new StoreError({ message: `${operation} failed: ${detail}`, transient: isTransient(cause), cause })
}

const toLong = (n: bigint): Long => Long.fromBigInt(n)

const toBigInt = (v: unknown): bigint | undefined => {
  if (v === undefined || v === null) return undefined
  if (typeof v === "bigint") return v
  if (typeof v === "number") return BigInt(Math.trunc(v))
  if (typeof v === "string") return BigInt(v)
  if (v instanceof Long) return v.toBigInt()
  return undefined
}

const encodeMeta = (meta: DocumentMeta, token: string): Document => ({
  version: meta.version,
  position: meta.position === undefined ? null : toLong(meta.position),
  streams: Object.entries(meta.streams).map(([s, r]) => ({ s, r: toLong(r) })),
  deleted: meta.deleted,
  token
})

const decodeMeta = (raw: unknown): DocumentMeta => {
  if (raw === null || typeof raw !== "object") return { version: 0, position: undefined, streams: {}, deleted: false }
  const m = raw as Document
  const streams: Record<string, bigint> = {}
  if (Array.isArray(m.streams)) {
    for (const e of m.streams as Array<Document>) {
      const r = toBigInt(e.r)
      if (typeof e.s === "string" && r !== undefined) streams[e.s] = r
    }
  }
  return { version: Number(m.version ?? 0), position: toBigInt(m.position), streams, deleted: m.deleted === true }
}

/** The stored form of one write (throws on a body that uses a reserved field). */
const encodeDocument = (w: DocumentWrite, token: string): Document => {
  const meta = encodeMeta(w.meta, token)
  if (w.body === undefined || w.meta.deleted) return { _id: w.id, [META_FIELD]: meta }
  if ("_id" in w.body || META_FIELD in w.body) {
    throw new StoreError({ message: `document ${w.id}: the body uses a reserved field (_id or ${META_FIELD})`, transient: false })
  }
  return { _id: w.id, ...w.body, [META_FIELD]: meta }
}

const decodeDocument = (doc: Document): StoredDocument => {
  const { _id, [META_FIELD]: meta, ...body } = doc
  const decoded = decodeMeta(meta)
  return { id: String(_id), body: decoded.deleted ? undefined : body, meta: decoded }
}

/** A duplicate key on the `_id` index (bulk write errors carry only the message, as the server words it). */
const isIdDuplicate = (e: { code?: unknown; keyPattern?: unknown; errmsg?: unknown }): boolean => {
  if (e.code !== 11000) return false
  const pattern = e.keyPattern as Document | undefined
  if (pattern !== undefined && pattern !== null) return Object.keys(pattern).length === 1 && "_id" in pattern
  return typeof e.errmsg === "string" && /index: _id_ /.test(e.errmsg)
}

interface WriteError {
  readonly index: number
  readonly code: number | undefined
  readonly errmsg: string
  readonly keyPattern: unknown
  readonly keyValue: unknown
}

const writeErrorsOf = (e: MongoBulkWriteError): Array<WriteError> => {
  const list = Array.isArray(e.writeErrors) ? e.writeErrors : [e.writeErrors]
  return list.map((w) => {
    const err = ((w as unknown as { err?: Document }).err ?? {}) as Document
    return {
      index: w.index,
      code: w.code,
      errmsg: w.errmsg ?? "",
      keyPattern: err.keyPattern,
      keyValue: err.keyValue
    }
  })
}

/**
 * Makes the store in the current scope: connects, ensures indexes, and closes the
 * client when the scope closes.
 *
 * @since 0.1.0
 */
export const make = Effect.fn("MongoReadModelStore.make")(function*(options: Options) {
  let closed = false
  const client = yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: () => {
        const uri = Redacted.isRedacted(options.uri) ? Redacted.value(options.uri) : options.uri
        return new MongoClient(uri, { ...options.clientOptions, useBigInt64: true }).connect()
      },
      catch: (cause) => toStoreError("connect", cause)
    }),
    (client) =>
      // A close that fails or hangs must not turn a clean stop into a defect or a hang.
      Effect.tryPromise(() => {
        closed = true
        return client.close()
      }).pipe(
        Effect.interruptible,
        Effect.timeout("10 seconds"),
        Effect.catchAll((error) => Effect.logWarning("closing the MongoDB client failed", String(error)))
      )
  )
  const db: Db = client.db(options.database ?? "read_models", { writeConcern: options.writeConcern ?? { w: "majority" } })
  const readModels = db.collection<Document>(READ_MODELS)
  const checkpoints = db.collection<Document>(CHECKPOINTS)
  const letters = db.collection<Document>(DEAD_LETTERS)
  const held = db.collection<Document>(HELD_EVENTS)
  const resolved = db.collection<Document>(RESOLVED_LETTERS)
  const streamProgress = db.collection<Document>(STREAM_PROGRESS)
  const gapRecords = db.collection<Document>(GAPS)

  const call = <A>(operation: string, f: () => Promise<A>): Effect.Effect<A, StoreError> =>
    Effect.suspend(() =>
      closed
        ? Effect.fail(closedError())
        : Effect.tryPromise({ try: f, catch: (cause) => (cause instanceof StoreError ? cause : toStoreError(operation, cause, closed)) })
    )

  const supportsTransactions = yield* call("hello", async () => {
    if (options.transactions === "always") return true
    if (options.transactions === "never") return false
    const hello = await client.db("admin").command({ hello: 1 })
    return hello.logicalSessionTimeoutMinutes != null && (typeof hello.setName === "string" || hello.msg === "isdbgrid")
  })

  yield* call("ensureIndexes", async () => {
    await letters.createIndex({ projection: 1, at: 1 }, { name: "projection_at" })
    await held.createIndex({ projection: 1, document: 1, position: 1 }, { name: "projection_document_position" })
    await resolved.createIndex({ "letter.projection": 1, at: 1 }, { name: "projection_at" })
    await gapRecords.createIndex({ projection: 1, at: 1 }, { name: "projection_at" })
    for (const index of options.indexes ?? []) {
      await db.collection(index.collection).createIndex({ ...index.key }, {
        unique: index.unique === true,
        ...(index.name !== undefined ? { name: index.name } : {})
      })
    }
  })

  const commitCheckpointWith = async (checkpoint: Checkpoint, session: ClientSession | undefined) => {
    const filter = { _id: checkpoint.projection }
    const update = { $max: { position: toLong(checkpoint.position) } }
    try {
      await checkpoints.updateOne(filter as Document, update, { upsert: true, ...(session ? { session } : {}) })
    } catch (e) {
      // Two first commits raced on the upsert: the other one inserted; `$max` again.
      if (session === undefined && e instanceof MongoError && e.code === 11000) await checkpoints.updateOne(filter as Document, update)
      else throw e
    }
  }

  /**
   * Runs the guarded bulk write; returns the conflicting writes and those the
   * server refused for that document alone (unique index, size); throws on
   * anything else.
   */
  const guardedWrite = async (
    collection: Collection<Document>,
    writes: ReadonlyArray<DocumentWrite>,
    session: ClientSession | undefined
  ): Promise<{ conflicts: Set<number>; rejected: Map<number, string>; error?: unknown }> => {
    // Short tokens: every byte is serialized, parsed and stored once more per document.
    const nonce = `${processNonce}${(batchCounter++).toString(36)}`
    const tokens = writes.map((_, i) => `${nonce}:${i.toString(36)}`)
    const ops: Array<AnyBulkWriteOperation<Document>> = writes.map((w, i) => {
      const replacement = encodeDocument(w, tokens[i]!)
      return w.expectedVersion === 0
        ? { replaceOne: { filter: { _id: w.id, [`${META_FIELD}.version`]: { $exists: false } } as Document, replacement, upsert: true } }
        : { replaceOne: { filter: { _id: w.id, [`${META_FIELD}.version`]: w.expectedVersion } as Document, replacement } }
    })
    const conflicts = new Set<number>()
    const rejected = new Map<number, string>()
    let result: BulkWriteResult
    try {
      result = await collection.bulkWrite(ops, { ordered: false, ...(session ? { session } : {}) })
    } catch (e) {
      // A bulk error without per-operation errors is a failure of the whole command (network, write concern…).
      if (!(e instanceof MongoBulkWriteError) || writeErrorsOf(e).length === 0 || e.writeConcernError !== undefined) throw e
      const errors = writeErrorsOf(e)
      const others = errors.filter((w) => !(isIdDuplicate(w) && writes[w.index]!.expectedVersion === 0))
      // A transient per-operation error fails the call (the engine retries it); any other refuses that document only.
      const transient = others.find((w) => w.code !== undefined && transientCodes.has(w.code) && w.code !== 11000)
      if (transient !== undefined) {
        throw new StoreError({
          message: `write to ${collection.collectionName} failed for document ${writes[transient.index]!.id}: ${transient.errmsg}`,
          transient: true,
          cause: e
        })
      }
      for (const w of others) {
        rejected.set(
          w.index,
          w.code === 11000
            ? `write to ${collection.collectionName}: unique index violation for document ${writes[w.index]!.id}: ${w.errmsg}`
            : `write to ${collection.collectionName} refused for document ${writes[w.index]!.id}: ${w.errmsg}`
        )
      }
      if (session !== undefined) {
        // The transaction is aborted: the caller runs it again without these.
        for (const w of errors) if (!rejected.has(w.index)) conflicts.add(w.index)
        return { conflicts, rejected, error: e }
      }
      // Outside a transaction a duplicate `_id` is a conflict, unless it is our own write applied by an
      // earlier attempt (a retry after a lost reply): the read-back below tells them apart by token.
      result = e.result
    }
    const settled = result.matchedCount + result.upsertedCount
    if (settled + rejected.size < writes.length) {
      // Some guarded write matched nothing or collided: read back the undecided ids by their tokens.
      const upserted = new Set(Object.keys(result.upsertedIds).map(Number))
      const undecided = writes.map((_, i) => i).filter((i) => !conflicts.has(i) && !upserted.has(i) && !rejected.has(i))
      const found = await collection
        .find({ _id: { $in: undecided.map((i) => writes[i]!.id) } } as Document, {
          projection: { [`${META_FIELD}.token`]: 1 },
          ...(session ? { session } : {})
        })
        .toArray()
      const tokenOf = new Map(found.map((d) => [String(d._id), (d[META_FIELD] as Document | undefined)?.token]))
      for (const i of undecided) if (tokenOf.get(writes[i]!.id) !== tokens[i]) conflicts.add(i)
    }
    return { conflicts, rejected }
  }

  const resultOf = (
    writes: ReadonlyArray<DocumentWrite>,
    conflicts: Iterable<number>,
    rejected: ReadonlyMap<number, string>
  ): WriteResult => {
    const ids = [...conflicts].sort((a, b) => a - b).map((i) => writes[i]!.id)
    return rejected.size === 0
      ? { conflicts: ids }
      : { conflicts: ids, rejected: [...rejected].sort(([a], [b]) => a - b).map(([i, reason]) => ({ id: writes[i]!.id, reason })) }
  }

  const write = async (batch: WriteBatch): Promise<WriteResult> => {
    const collection = db.collection<Document>(batch.collection)
    const writes = batch.writes
    if (batch.checkpoint === undefined || !supportsTransactions) {
      const outcome = writes.length === 0
        ? { conflicts: new Set<number>(), rejected: new Map<number, string>() }
        : await guardedWrite(collection, writes, undefined)
      if (batch.checkpoint !== undefined) await commitCheckpointWith(batch.checkpoint, undefined)
      return resultOf(writes, outcome.conflicts, outcome.rejected)
    }
    // In a transaction a duplicate key aborts everything: drop the conflicting (and refused) writes and run
    // it again. A transient transaction error (a write conflict, typically two batches moving the checkpoint)
    // runs it again too, a few times, before the engine sees a transient error.
    const session = client.startSession()
    try {
      const known = new Set<number>()
      const refused = new Map<number, string>()
      let retries = 0
      for (;;) {
        const remaining = writes.map((_, i) => i).filter((i) => !known.has(i) && !refused.has(i))
        session.startTransaction({ readConcern: { level: "snapshot" }, writeConcern: { w: "majority" } })
        try {
          const outcome =
            remaining.length === 0
              ? { conflicts: new Set<number>(), rejected: new Map<number, string>(), error: undefined }
              : await guardedWrite(collection, remaining.map((i) => writes[i]!), session)
          for (const [j, reason] of outcome.rejected) refused.set(remaining[j]!, reason)
          if (outcome.error !== undefined) {
            await session.abortTransaction().catch(() => undefined)
            if (outcome.conflicts.size === 0 && outcome.rejected.size === 0) throw outcome.error
            for (const j of outcome.conflicts) known.add(remaining[j]!)
            continue
          }
          for (const j of outcome.conflicts) known.add(remaining[j]!)
          await commitCheckpointWith(batch.checkpoint, session)
          await session.commitTransaction()
          return resultOf(writes, known, refused)
        } catch (e) {
          if (session.inTransaction()) await session.abortTransaction().catch(() => undefined)
          if (retries++ < TRANSACTION_RETRIES && hasLabel(e, "TransientTransactionError")) continue
          throw e
        }
      }
    } finally {
      await session.endSession().catch(() => undefined)
    }
  }

  const port: ReadModelStore["Type"] = {
    registration: Effect.fn("MongoReadModelStore.registration")(function*(readModel: string) {
      const doc = yield* call("registration", () => readModels.findOne({ _id: readModel } as Document))
      return Option.fromNullable(doc === null ? undefined : decodeRegistration(doc))
    }),
    register: Effect.fn("MongoReadModelStore.register")(function*(next: Registration, expectedRevision: number) {
      const doc = encodeRegistration(next)
      return yield* call("register", async () => {
        if (expectedRevision === 0) {
          try {
            await readModels.insertOne(doc)
            return true
          } catch (e) {
            if (e instanceof MongoError && e.code === 11000) return false
            throw e
          }
        }
        const result = await readModels.replaceOne({ _id: next.readModel, revision: expectedRevision } as Document, doc)
        return result.matchedCount === 1
      })
    }),
    // Pages by `_id` so that no cursor stays open between pulls (a long scan outlives cursor timeouts).
    scan: (collection: string) =>
      Stream.paginateChunkEffect(undefined as unknown, (after) =>
        call("scan", () =>
          db.collection<Document>(collection)
            .find(after === undefined ? {} : { _id: { $gt: after } } as Document, { sort: { _id: 1 }, limit: SCAN_PAGE, batchSize: SCAN_PAGE })
            .toArray()
        ).pipe(Effect.map((docs) => [
          Chunk.fromIterable(docs.map(decodeDocument)),
          docs.length < SCAN_PAGE ? Option.none() : Option.some(docs[docs.length - 1]!._id as unknown)
        ] as const))
      ),
    dropCollection: Effect.fn("MongoReadModelStore.dropCollection")(function*(collection: string) {
      yield* call("dropCollection", async () => {
        try {
          await db.collection(collection).drop()
        } catch (e) {
          if (!(e instanceof MongoError && e.code === 26)) throw e // NamespaceNotFound: already gone
        }
      })
    }),
    removeCheckpoint: Effect.fn("MongoReadModelStore.removeCheckpoint")(function*(projection: string) {
      yield* call("removeCheckpoint", () => checkpoints.deleteOne({ _id: projection } as Document))
    }),
    load: Effect.fn("MongoReadModelStore.load")(function*(collection: string, ids: ReadonlyArray<string>) {
      if (ids.length === 0) return new Map<string, StoredDocument>()
      const docs = yield* call("load", () =>
        db.collection<Document>(collection)
          .find({ _id: { $in: [...ids] } } as Document, { batchSize: ids.length + 1 }) // all in the first batch: one round trip
          .toArray()
      )
      const out = new Map<string, StoredDocument>()
      for (const d of docs) {
        const stored = decodeDocument(d)
        out.set(stored.id, stored)
      }
      return out as ReadonlyMap<string, StoredDocument>
    }),
    write: Effect.fn("MongoReadModelStore.write")(function*(batch: WriteBatch) {
      return yield* call("write", () => write(batch))
    }),
    readCheckpoint: Effect.fn("MongoReadModelStore.readCheckpoint")(function*(projection: string) {
      const doc = yield* call("readCheckpoint", () => checkpoints.findOne({ _id: projection } as Document))
      return Option.fromNullable(toBigInt(doc?.position))
    }),
    commitCheckpoint: Effect.fn("MongoReadModelStore.commitCheckpoint")(function*(checkpoint: Checkpoint) {
      yield* call("commitCheckpoint", () => commitCheckpointWith(checkpoint, undefined))
    }),
    deadLetter: Effect.fn("MongoReadModelStore.deadLetter")(function*(letter: DeadLetter) {
      const doc = encodeLetter(letter)
      yield* call("deadLetter", async () => {
        try {
          await letters.updateOne({ _id: letter.id } as Document, { $setOnInsert: doc }, { upsert: true })
        } catch (e) {
          if (!(e instanceof MongoError && e.code === 11000)) throw e // a concurrent identical letter won
        }
      })
    }),
    deadLetters: Effect.fn("MongoReadModelStore.deadLetters")(function*(projection: string) {
      const docs = yield* call("deadLetters", () => letters.find({ projection }).sort({ at: 1, _id: 1 }).toArray())
      return docs.map(decodeLetter)
    }),
    removeDeadLetter: Effect.fn("MongoReadModelStore.removeDeadLetter")(function*(id: string) {
      yield* call("removeDeadLetter", () => letters.deleteOne({ _id: id } as Document))
    }),
    hold: Effect.fn("MongoReadModelStore.hold")(function*(events: ReadonlyArray<HeldEvent>) {
      if (events.length === 0) return
      yield* call("hold", () =>
        held.bulkWrite(
          events.map((e) => ({
            updateOne: {
              filter: { _id: heldId(e.projection, e.document, e.streamId, e.revision) } as Document,
              update: {
                $setOnInsert: {
                  projection: e.projection,
                  document: e.document,
                  eventId: e.eventId,
                  eventType: e.eventType,
                  streamId: e.streamId,
                  revision: toLong(e.revision),
                  position: toLong(e.position),
                  data: new Binary(e.data),
                  metadata: new Binary(e.metadata),
                  created: e.created
                }
              },
              upsert: true
            }
          })),
          { ordered: false }
        ).catch((e) => {
          // Two holds of one event raced on the upsert: the other one inserted it.
          if (e instanceof MongoBulkWriteError && writeErrorsOf(e).every((w) => w.code === 11000)) return undefined
          throw e
        })
      )
    }),
    heldEvents: Effect.fn("MongoReadModelStore.heldEvents")(function*(projection: string, document: string) {
      const docs = yield* call("heldEvents", () => held.find({ projection, document }).sort({ position: 1 }).toArray())
      return docs.map((d): HeldEvent => ({
        projection: String(d.projection),
        document: String(d.document),
        ...decodeRecorded(d),
        created: d.created instanceof Date ? d.created : new Date(String(d.created))
      }))
    }),
    releaseHeld: Effect.fn("MongoReadModelStore.releaseHeld")(function*(
      projection: string,
      document: string,
      events: ReadonlyArray<{ readonly streamId: string; readonly revision: bigint }>
    ) {
      if (events.length === 0) return
      yield* call("releaseHeld", () =>
        held.deleteMany({ _id: { $in: events.map((e) => heldId(projection, document, e.streamId, e.revision)) } } as Document))
    }),
    resolveDeadLetter: Effect.fn("MongoReadModelStore.resolveDeadLetter")(function*(resolution: Resolution) {
      const doc: Document = {
        letter: { id: resolution.letter.id, ...encodeLetter(resolution.letter) },
        action: resolution.action,
        by: resolution.by,
        ...(resolution.reason !== undefined ? { reason: resolution.reason } : {}),
        at: resolution.at
      }
      // Recorded first, so that a letter is never gone without its resolution.
      yield* call("resolveDeadLetter", async () => {
        try {
          await resolved.updateOne({ _id: resolution.letter.id } as Document, { $setOnInsert: doc }, { upsert: true })
        } catch (e) {
          if (!(e instanceof MongoError && e.code === 11000)) throw e
        }
        await letters.deleteOne({ _id: resolution.letter.id } as Document)
      })
    }),
    resolutions: Effect.fn("MongoReadModelStore.resolutions")(function*(projection: string) {
      const docs = yield* call("resolutions", () => resolved.find({ "letter.projection": projection }).sort({ at: 1, _id: 1 }).toArray())
      return docs.map((d): Resolution => ({
        letter: decodeLetter(d.letter as Document),
        action: d.action === "skipped" ? "skipped" : "retried",
        by: String(d.by),
        reason: typeof d.reason === "string" ? d.reason : undefined,
        at: d.at instanceof Date ? d.at : new Date(String(d.at))
      }))
    }),
    loadProgress: Effect.fn("MongoReadModelStore.loadProgress")(function*(projection: string, streams: ReadonlyArray<string>) {
      const found = new Map<string, StreamProgress>()
      if (streams.length === 0) return found as ReadonlyMap<string, StreamProgress>
      const ids = [...new Set(streams)].map((stream) => progressId(projection, stream))
      const docs = yield* call("loadProgress", () =>
        streamProgress.find({ _id: { $in: ids } } as Document, { batchSize: ids.length + 1 }).toArray())
      for (const d of docs) {
        const revision = toBigInt(d.revision)
        const parked = Array.isArray(d.parked) ? d.parked.map(toBigInt).filter((r): r is bigint => r !== undefined) : []
        if (typeof d.stream === "string" && revision !== undefined) found.set(d.stream, { stream: d.stream, revision, parked })
      }
      return found as ReadonlyMap<string, StreamProgress>
    }),
    commitProgress: Effect.fn("MongoReadModelStore.commitProgress")(function*(
      projection: string,
      progress: ReadonlyArray<StreamProgress>,
      gaps: ReadonlyArray<SkippedGap> = []
    ) {
      yield* call("commitProgress", async () => {
        // Gaps first: a progress record past a gap always has the gap's record.
        if (gaps.length > 0) {
          await upsertAll(gapRecords, gaps.map((gap) => ({
            filter: { _id: JSON.stringify([projection, gap.stream, gap.from.toString()]) },
            update: {
              $setOnInsert: { ...gap, projection, from: toLong(gap.from), to: toLong(gap.to) }
            }
          })))
        }
        if (progress.length > 0) {
          await upsertAll(streamProgress, progress.map(({ parked = [], revision, stream }) => ({
            filter: { _id: progressId(projection, stream) },
            update: {
              $set: { projection, stream },
              $max: { revision: toLong(revision) },
              $addToSet: { parked: { $each: parked.map(toLong) } }
            }
          })))
        }
      })
    }),
    gaps: Effect.fn("MongoReadModelStore.gaps")(function*(projection: string) {
      const docs = yield* call("gaps", () => gapRecords.find({ projection }).sort({ at: 1, _id: 1 }).toArray())
      return docs.map((d): SkippedGap => ({
        projection: String(d.projection),
        stream: String(d.stream),
        from: toBigInt(d.from) ?? 0n,
        to: toBigInt(d.to) ?? 0n,
        reason: String(d.reason),
        at: d.at instanceof Date ? d.at : new Date(String(d.at))
      }))
    })
  }
  return port
})

const progressId = (projection: string, stream: string) => JSON.stringify([projection, stream])

/**
 * Upserts in one unordered bulk write; upserts that lost a race to insert the
 * same `_id` (duplicate key) run again as plain updates.
 */
const upsertAll = async (
  collection: Collection<Document>,
  ops: ReadonlyArray<{ readonly filter: Document; readonly update: Document }>
) => {
  try {
    await collection.bulkWrite(ops.map((op) => ({ updateOne: { ...op, upsert: true } })), { ordered: false })
  } catch (e) {
    if (!(e instanceof MongoBulkWriteError) || e.writeConcernError !== undefined) throw e
    const errors = writeErrorsOf(e)
    if (errors.length === 0 || errors.some((w) => w.code !== 11000)) throw e
    await collection.bulkWrite(errors.map((w) => ({ updateOne: ops[w.index]! })), { ordered: false })
  }
}

const encodeRegistration = (r: Registration): Document => ({
  _id: r.readModel,
  projection: r.projection,
  live: r.live ?? null,
  collection: r.live === undefined ? null : r.versions[String(r.live)] ?? null,
  versions: { ...r.versions },
  revision: r.revision
})

const decodeRegistration = (d: Document): Registration => ({
  readModel: String(d._id),
  projection: String(d.projection),
  live: typeof d.live === "number" || typeof d.live === "bigint" ? Number(d.live) : undefined,
  versions: Object.fromEntries(Object.entries((d.versions ?? {}) as Document).map(([v, c]) => [v, String(c)])),
  revision: Number(d.revision ?? 0)
})

const heldId = (projection: string, document: string, streamId: string, revision: bigint) =>
  JSON.stringify([projection, document, streamId, String(revision)])

const encodeLetter = (letter: DeadLetter): Document => {
  const { document, id: _, ...rest } = letter
  return {
    ...rest,
    ...(document !== undefined ? { document } : {}),
    revision: toLong(letter.revision),
    position: toLong(letter.position),
    data: new Binary(letter.data),
    metadata: new Binary(letter.metadata)
  }
}

/** The fields a dead letter and a held event share, as stored. */
const decodeRecorded = (d: Document): RecordedEvent => ({
  eventId: String(d.eventId),
  eventType: String(d.eventType),
  streamId: String(d.streamId),
  revision: toBigInt(d.revision) ?? 0n,
  position: toBigInt(d.position) ?? 0n,
  data: bytes(d.data),
  metadata: bytes(d.metadata),
})

const decodeLetter = (d: Document): DeadLetter => ({
  id: String(d._id ?? d.id),
  projection: String(d.projection),
  ...(typeof d.document === "string" ? { document: d.document } : {}),
  ...decodeRecorded(d),
  reason: String(d.reason),
  at: d.at instanceof Date ? d.at : new Date(String(d.at))
})

const bytes = (v: unknown): Uint8Array =>
  v instanceof Binary ? new Uint8Array(v.buffer) : v instanceof Uint8Array ? v : new Uint8Array()

/** The store as a layer owning its `MongoClient`. @since 0.1.0 */
export const layer = (options: Options): Layer.Layer<ReadModelStore, StoreError> => Layer.scoped(ReadModelStore, make(options))

/** The store configured from {@link config} (or the given `Config`). @since 0.1.0 */
export const layerConfig = (
  options: Config.Config<Options> = config
): Layer.Layer<ReadModelStore, StoreError | ConfigError.ConfigError> =>
  Layer.scoped(ReadModelStore, Effect.flatMap(options, (o) => make(o)))
