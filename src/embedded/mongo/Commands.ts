/**
 * Command dispatch: the handshake (presenting a single-node replica set), CRUD,
 * cursors, indexes, collections, sessions and transactions. Unknown commands are
 * answered at once with `CommandNotFound` (59).
 *
 * @internal
 */
import { Binary, Long, ObjectId, Timestamp, calculateObjectSize } from "bson"
import { Query } from "./Mingo.js"
import {
  CommandError,
  badValue,
  commandNotFound,
  cursorNotFound,
  namespaceExists,
  namespaceNotFound,
  noSuchTransaction,
  toCommandError
} from "./Errors.js"
import {
  type Access,
  DirectAccess,
  TransactionAccess,
  aggregate,
  applyUpdate,
  deleteStatement,
  findVersions,
  insertOne,
  isOperatorUpdate,
  project,
  updateStatement,
  upsertSeed
} from "./Operations.js"
import { type Collection, Storage, type Transaction, indexName, withSeq } from "./Storage.js"
import { type Doc, bool, isPlainObject, keyOf, num, toView, valuesAt } from "./Values.js"

/** The wire version we announce (MongoDB 7.0). */
export const MAX_WIRE_VERSION = 21
const DEFAULT_BATCH = 101
/** MongoDB's default transactionLifetimeLimitSeconds. */
export const DEFAULT_TRANSACTION_LIFETIME_SECONDS = 60
const MAX_BATCH_BYTES = 8 * 1024 * 1024

interface Cursor {
  readonly id: Long
  readonly ns: string
  readonly docs: Array<Doc>
  pos: number
  readonly batchSize: number
}

interface Session {
  txn: Transaction | undefined
  /** Replies of retryable writes by txnNumber: a retried write is answered, not run again. */
  readonly retried: Map<number, Doc>
}

const retryableWrites = new Set(["insert", "update", "delete", "findAndModify", "findandmodify"])

export interface EngineOptions {
  readonly setName: string
  /** Transactions open longer are aborted (MongoDB's transactionLifetimeLimitSeconds). */
  readonly transactionLifetimeMs: number
}

/** The server's state and command handlers, independent of the network. */
export class Engine {
  readonly storage = new Storage()
  private readonly cursors = new Map<string, Cursor>()
  private readonly sessions = new Map<string, Session>()
  private nextCursor = 1n
  private nextConnection = 1
  readonly processId = new ObjectId()
  readonly startedAt = Date.now()
  host = "127.0.0.1:0"

  constructor(readonly options: EngineOptions) {}

  connectionId(): number {
    return this.nextConnection++
  }

  private clusterTime(): Timestamp {
    return new Timestamp({ t: Math.floor(Date.now() / 1000), i: Math.max(1, this.storage.seq % 0xffffffff) })
  }

  /** The hello / isMaster reply. */
  hello(command: Doc, connectionId: number, legacy: boolean): Doc {
    const now = this.clusterTime()
    const reply: Doc = {
      ...(command.helloOk === true ? { helloOk: true } : {}),
      ...(legacy || "isMaster" in command || "ismaster" in command ? { ismaster: true } : {}),
      isWritablePrimary: true,
      topologyVersion: { processId: this.processId, counter: Long.fromNumber(0) },
      hosts: [this.host],
      setName: this.options.setName,
      setVersion: 1,
      electionId: new ObjectId("7fffffff0000000000000001"),
      primary: this.host,
      me: this.host,
      secondary: false,
      lastWrite: { opTime: { ts: now, t: Long.fromNumber(1) }, lastWriteDate: new Date(), majorityOpTime: { ts: now, t: Long.fromNumber(1) }, majorityWriteDate: new Date() },
      maxBsonObjectSize: 16 * 1024 * 1024,
      maxMessageSizeBytes: 48_000_000,
      maxWriteBatchSize: 100_000,
      localTime: new Date(),
      logicalSessionTimeoutMinutes: 30,
      connectionId,
      minWireVersion: 0,
      maxWireVersion: MAX_WIRE_VERSION,
      readOnly: false,
      ok: 1
    }
    return this.withTimes(reply)
  }

  private withTimes(reply: Doc): Doc {
    const ts = this.clusterTime()
    reply.$clusterTime = { clusterTime: ts, signature: { hash: new Binary(Buffer.alloc(20)), keyId: Long.fromNumber(0) } }
    reply.operationTime = ts
    return reply
  }

  /**
   * The open transactions holding documents that a write outside any transaction would
   * change: as in MongoDB, such a write waits for them to end instead of conflicting.
   */
  blockers(command: Doc, db: string): Array<Transaction> {
    if (this.storage.locks.size === 0) return []
    const name = Object.keys(command)[0] ?? ""
    if (!retryableWrites.has(name) || (command.autocommit !== undefined && !bool(command.autocommit, true))) return []
    const c = typeof command[name] === "string" ? this.storage.collection(db, command[name] as string) : undefined
    if (c === undefined) return []
    const access = new DirectAccess(this.storage)
    const keys: Array<string> = []
    try {
      if (name === "insert") {
        for (const doc of (command.documents as Array<Doc> | undefined) ?? []) if ("_id" in doc) keys.push(keyOf(doc._id))
      } else if (name === "update" || name === "delete") {
        for (const s of ((command[name === "update" ? "updates" : "deletes"] as Array<Doc> | undefined) ?? [])) {
          const many = name === "update" ? bool(s.multi, false) : num(s.limit, 0) !== 1
          for (const v of findVersions(access, c, { filter: (s.q as Doc | undefined) ?? {}, limit: many ? 0 : 1 })) keys.push(keyOf(v.raw._id))
        }
      } else {
        for (const v of findVersions(access, c, { filter: (command.query as Doc | undefined) ?? {}, sort: command.sort as Doc | undefined, limit: 1 })) keys.push(keyOf(v.raw._id))
      }
    } catch {
      return [] // the command itself reports the error
    }
    const out = new Set<Transaction>()
    for (const key of keys) {
      const t = this.storage.locks.get(`${c.ns}\u0000${key}`)
      if (t !== undefined && t.state === "active") out.add(t)
    }
    return [...out]
  }

  /** Runs one command and returns the reply document (errors included, never thrown). */
  run(command: Doc, db: string, connectionId: number, legacy: boolean): Doc {
    const name = Object.keys(command)[0] ?? ""
    let txn: Transaction | undefined
    try {
      switch (name) {
        case "hello":
        case "isMaster":
        case "ismaster":
          return this.hello(command, connectionId, legacy)
      }
      if (this.storage.active.size > 0) this.storage.expire(this.options.transactionLifetimeMs)
      const access = this.access(command, name)
      txn = access instanceof TransactionAccess ? access.txn : undefined
      const retryable =
        txn === undefined && command.lsid !== undefined && command.txnNumber !== undefined && retryableWrites.has(name)
          ? { session: this.session(command.lsid), txnNumber: num(command.txnNumber, -1) }
          : undefined
      const previous = retryable?.session.retried.get(retryable.txnNumber)
      if (previous !== undefined) return this.withTimes({ ...previous })
      refuseUnsupported(name, command)
      const reply = this.dispatch(name, command, db, access)
      if (retryable !== undefined) {
        retryable.session.retried.set(retryable.txnNumber, reply)
        // Only the latest txnNumbers can be retried.
        for (const n of retryable.session.retried.keys()) if (n < retryable.txnNumber - 16) retryable.session.retried.delete(n)
      }
      if (txn !== undefined && Array.isArray(reply.writeErrors) && reply.writeErrors.length > 0) this.storage.end(txn, "aborted")
      return this.withTimes(reply)
    } catch (e) {
      const error = toCommandError(e)
      if (txn !== undefined && txn.state === "active") this.storage.end(txn, "aborted")
      return this.withTimes(error.toReply())
    }
  }

  private session(lsid: unknown): Session {
    const key = keyOf(isPlainObject(lsid) ? lsid.id : lsid)
    let s = this.sessions.get(key)
    if (s === undefined) {
      s = { txn: undefined, retried: new Map() }
      this.sessions.set(key, s)
    }
    return s
  }

  /** Where the command reads and writes: a transaction (autocommit: false) or the committed state. */
  private access(command: Doc, name: string): Access {
    if (command.lsid === undefined || command.autocommit === undefined || bool(command.autocommit, true)) {
      return new DirectAccess(this.storage)
    }
    const txnNumber = num(command.txnNumber, -1)
    const session = this.session(command.lsid)
    if (command.startTransaction === true) {
      if (session.txn !== undefined && session.txn.state === "active") {
        if (session.txn.txnNumber >= txnNumber) {
          throw new CommandError(251, "NoSuchTransaction", `Transaction ${txnNumber} has already been started`)
        }
        this.storage.end(session.txn, "aborted")
      }
      session.txn = this.storage.begin(keyOf(command.lsid), txnNumber)
    }
    const txn = session.txn
    if (txn === undefined || txn.txnNumber !== txnNumber) throw noSuchTransaction(txnNumber)
    if (txn.state === "aborted" && name !== "abortTransaction") throw noSuchTransaction(txnNumber)
    if (txn.state === "committed" && name !== "commitTransaction") {
      throw new CommandError(256, "TransactionCommitted", `Transaction with { txnNumber: ${txnNumber} } has been committed.`)
    }
    return new TransactionAccess(this.storage, txn)
  }

  private collection(db: string, command: Doc, name: string): Collection | undefined {
    return this.storage.collection(db, collectionName(command, name))
  }

  private dispatch(name: string, command: Doc, db: string, access: Access): Doc {
    switch (name) {
      case "ping":
        return { ok: 1 }
      case "buildInfo":
      case "buildinfo":
        return {
          version: "7.0.0",
          gitVersion: "effect-reconciler-embedded",
          versionArray: [7, 0, 0, 0],
          bits: 64,
          maxBsonObjectSize: 16 * 1024 * 1024,
          storageEngines: ["memory"],
          ok: 1
        }
      case "whatsmyuri":
        return { you: "127.0.0.1:0", ok: 1 }
      case "connectionStatus":
        return { authInfo: { authenticatedUsers: [], authenticatedUserRoles: [] }, ok: 1 }
      case "getParameter":
        return { featureCompatibilityVersion: { version: "7.0" }, ok: 1 }
      case "hostInfo":
        return { system: { hostname: this.host }, ok: 1 }
      case "serverStatus":
        return { host: this.host, version: "7.0.0", process: "embedded-mongo", uptime: (Date.now() - this.startedAt) / 1000, ok: 1 }
      case "endSessions":
      case "killSessions":
      case "killAllSessions":
        return this.endSessions(command[name])
      case "refreshSessions":
        return { ok: 1 }
      case "commitTransaction": {
        if (!(access instanceof TransactionAccess)) throw badValue("commitTransaction must be run within a transaction")
        if (access.txn.state !== "committed") this.storage.commitTransaction(access.txn)
        return { ok: 1 }
      }
      case "abortTransaction": {
        if (!(access instanceof TransactionAccess)) throw badValue("abortTransaction must be run within a transaction")
        if (access.txn.state === "aborted") throw noSuchTransaction(access.txn.txnNumber)
        this.storage.end(access.txn, "aborted")
        return { ok: 1 }
      }
      case "insert":
        return this.insert(command, db, access)
      case "update":
        return this.update(command, db, access)
      case "delete":
        return this.delete(command, db, access)
      case "find":
        return this.find(command, db, access)
      case "getMore":
        return this.getMore(command, db)
      case "killCursors":
        return this.killCursors(command)
      case "findAndModify":
      case "findandmodify":
        return this.findAndModify(command, db, access, name)
      case "aggregate":
        return this.aggregate(command, db, access)
      case "count":
        return this.count(command, db, access)
      case "distinct":
        return this.distinct(command, db, access)
      case "createIndexes":
        return this.createIndexes(command, db)
      case "listIndexes":
        return this.listIndexes(command, db)
      case "dropIndexes":
      case "deleteIndexes":
        return this.dropIndexes(command, db, name)
      case "create": {
        const coll = collectionName(command, name)
        if (this.storage.collection(db, coll) !== undefined) throw namespaceExists(`${db}.${coll}`)
        this.storage.ensureCollection(db, coll)
        return { ok: 1 }
      }
      case "drop": {
        const coll = collectionName(command, name)
        const c = this.storage.collection(db, coll)
        if (c === undefined) return { ok: 1 }
        const nIndexesWas = c.indexes.size
        this.storage.dropCollection(db, coll)
        return { nIndexesWas, ns: `${db}.${coll}`, ok: 1 }
      }
      case "dropDatabase":
        this.storage.dropDatabase(db)
        return { dropped: db, ok: 1 }
      case "listCollections":
        return this.listCollections(command, db)
      case "renameCollection":
        return this.renameCollection(command)
      case "dbStats": {
        const colls = [...(this.storage.dbs.get(db)?.values() ?? [])]
        const objects = colls.reduce((n, c) => n + c.docs.size, 0)
        return { db, collections: colls.length, views: 0, objects, indexes: colls.reduce((n, c) => n + c.indexes.size, 0), dataSize: 0, storageSize: 0, ok: 1 }
      }
      case "listDatabases":
        return this.listDatabases(command)
      default:
        throw commandNotFound(name)
    }
  }

  private endSessions(ids: unknown): Doc {
    if (Array.isArray(ids)) {
      for (const lsid of ids) {
        const key = keyOf(isPlainObject(lsid) ? lsid.id : lsid)
        const s = this.sessions.get(key)
        if (s?.txn !== undefined && s.txn.state === "active") this.storage.end(s.txn, "aborted")
        this.sessions.delete(key)
      }
    }
    return { ok: 1 }
  }

  /** Runs write statements with ordered/unordered semantics; errors become `writeErrors`. */
  private writes<S>(statements: Array<S>, ordered: boolean, access: Access, run: (s: S, index: number) => void): Array<Doc> {
    const errors: Array<Doc> = []
    const inTxn = access instanceof TransactionAccess
    for (let i = 0; i < statements.length; i++) {
      try {
        run(statements[i]!, i)
      } catch (e) {
        const error = toCommandError(e)
        if (error.code === 112 || error.code === 251) throw error
        errors.push({ index: i, code: error.code, codeName: error.codeName, errmsg: error.message, ...error.extra })
        if (ordered || inTxn) break
      }
    }
    return errors
  }

  private insert(command: Doc, db: string, access: Access): Doc {
    const docs = command.documents
    if (!Array.isArray(docs)) throw badValue("insert requires documents")
    const c = this.storage.ensureCollection(db, collectionName(command, "insert"))
    let n = 0
    const writeErrors = this.writes(docs as Array<Doc>, bool(command.ordered, true), access, (doc) => {
      insertOne(access, c, doc)
      n++
    })
    return { n, ...(writeErrors.length > 0 ? { writeErrors } : {}), ok: 1 }
  }

  private update(command: Doc, db: string, access: Access): Doc {
    const updates = command.updates
    if (!Array.isArray(updates)) throw badValue("update requires updates")
    const c = this.storage.ensureCollection(db, collectionName(command, "update"))
    let n = 0
    let nModified = 0
    const upserted: Array<Doc> = []
    const writeErrors = this.writes(updates as Array<Doc>, bool(command.ordered, true), access, (s, index) => {
      const outcome = updateStatement(access, c, {
        q: (s.q as Doc | undefined) ?? {},
        u: s.u,
        upsert: bool(s.upsert, false),
        multi: bool(s.multi, false),
        arrayFilters: s.arrayFilters as Array<Doc> | undefined,
        sort: s.sort as Doc | undefined
      })
      n += outcome.n
      nModified += outcome.nModified
      if (outcome.upserted !== undefined) upserted.push({ index, _id: outcome.upserted })
    })
    return {
      n,
      nModified,
      ...(upserted.length > 0 ? { upserted } : {}),
      ...(writeErrors.length > 0 ? { writeErrors } : {}),
      ok: 1
    }
  }

  private delete(command: Doc, db: string, access: Access): Doc {
    const deletes = command.deletes
    if (!Array.isArray(deletes)) throw badValue("delete requires deletes")
    const c = this.storage.collection(db, collectionName(command, "delete"))
    let n = 0
    const writeErrors = this.writes(deletes as Array<Doc>, bool(command.ordered, true), access, (s) => {
      if (c !== undefined) n += deleteStatement(access, c, (s.q as Doc | undefined) ?? {}, num(s.limit, 0))
    })
    return { n, ...(writeErrors.length > 0 ? { writeErrors } : {}), ok: 1 }
  }

  /** Opens a cursor over materialized results and returns the first batch. */
  private cursorReply(ns: string, docs: Array<Doc>, batchSize: number, single: boolean, firstKey: "firstBatch"): Doc {
    const size = batchSize > 0 ? batchSize : DEFAULT_BATCH
    const first = takeBatch(docs, 0, size)
    if (single || first.length >= docs.length) {
      return { cursor: { [firstKey]: first, id: Long.fromNumber(0), ns }, ok: 1 }
    }
    const id = Long.fromBigInt(this.nextCursor++)
    this.cursors.set(id.toString(), { id, ns, docs, pos: first.length, batchSize: size })
    return { cursor: { [firstKey]: first, id, ns }, ok: 1 }
  }

  private find(command: Doc, db: string, access: Access): Doc {
    const coll = collectionName(command, "find")
    const c = this.storage.collection(db, coll)
    const limit = num(command.limit, 0)
    const versions = findVersions(access, c, {
      filter: (command.filter as Doc | undefined) ?? {},
      sort: command.sort as Doc | undefined,
      skip: num(command.skip, 0),
      limit: Math.abs(limit)
    })
    const docs = project(versions.map((v) => v.raw), command.projection as Doc | undefined)
    const batchSize = command.batchSize === undefined ? 0 : num(command.batchSize, 0)
    const single = bool(command.singleBatch, false) || limit < 0
    if (command.batchSize !== undefined && batchSize === 0) {
      if (docs.length === 0) return { cursor: { firstBatch: [], id: Long.fromNumber(0), ns: `${db}.${coll}` }, ok: 1 }
      const id = Long.fromBigInt(this.nextCursor++)
      this.cursors.set(id.toString(), { id, ns: `${db}.${coll}`, docs, pos: 0, batchSize: DEFAULT_BATCH })
      return { cursor: { firstBatch: [], id, ns: `${db}.${coll}` }, ok: 1 }
    }
    return this.cursorReply(`${db}.${coll}`, docs, batchSize, single, "firstBatch")
  }

  private getMore(command: Doc, db: string): Doc {
    const id = command.getMore
    const key = String(id)
    const cursor = this.cursors.get(key)
    if (cursor === undefined || cursor.ns !== `${db}.${String(command.collection)}`) throw cursorNotFound(key)
    const size = command.batchSize === undefined ? cursor.batchSize : num(command.batchSize, cursor.batchSize) || cursor.batchSize
    const batch = takeBatch(cursor.docs, cursor.pos, size)
    cursor.pos += batch.length
    const done = cursor.pos >= cursor.docs.length
    if (done) this.cursors.delete(key)
    return { cursor: { nextBatch: batch, id: done ? Long.fromNumber(0) : cursor.id, ns: cursor.ns }, ok: 1 }
  }

  private killCursors(command: Doc): Doc {
    const ids = Array.isArray(command.cursors) ? command.cursors : []
    const killed: Array<unknown> = []
    const notFound: Array<unknown> = []
    for (const id of ids) (this.cursors.delete(String(id)) ? killed : notFound).push(id)
    return { cursorsKilled: killed, cursorsNotFound: notFound, cursorsAlive: [], cursorsUnknown: [], ok: 1 }
  }

  private findAndModify(command: Doc, db: string, access: Access, name: string): Doc {
    const c = this.storage.ensureCollection(db, collectionName(command, name))
    const query = (command.query as Doc | undefined) ?? {}
    const returnNew = bool(command.new, false)
    const fields = command.fields as Doc | undefined
    const shape = (doc: Doc | null): Doc | null => (doc === null ? null : project([doc], fields)[0] ?? null)
    const [target] = findVersions(access, c, { filter: query, sort: command.sort as Doc | undefined, limit: 1 })
    if (bool(command.remove, false)) {
      if (target === undefined) return { lastErrorObject: { n: 0 }, value: null, ok: 1 }
      access.put(c, keyOf(target.raw._id), undefined)
      return { lastErrorObject: { n: 1 }, value: shape(target.raw), ok: 1 }
    }
    if (command.update === undefined) throw badValue("Either an update or remove=true must be specified")
    const arrayFilters = command.arrayFilters as Array<Doc> | undefined
    if (target !== undefined) {
      const next = applyUpdate(target.raw, () => target.view, command.update, arrayFilters, query, false)
      access.put(c, keyOf(target.raw._id), next)
      return { lastErrorObject: { n: 1, updatedExisting: true }, value: shape(returnNew ? next : target.raw), ok: 1 }
    }
    if (!bool(command.upsert, false)) return { lastErrorObject: { n: 0, updatedExisting: false }, value: null, ok: 1 }
    const seed = upsertSeed(query)
    const doc = applyUpdate(seed, () => toView(seed) as Doc, command.update, arrayFilters, query, true)
    if (!isOperatorUpdate(command.update) && !Array.isArray(command.update) && "_id" in seed && doc._id === undefined) doc._id = seed._id
    const inserted = insertOne(access, c, doc._id === undefined ? { _id: new ObjectId(), ...doc } : doc)
    return {
      lastErrorObject: { n: 1, updatedExisting: false, upserted: inserted._id },
      value: shape(returnNew ? inserted : null),
      ok: 1
    }
  }

  private aggregate(command: Doc, db: string, access: Access): Doc {
    const pipeline = command.pipeline
    if (!Array.isArray(pipeline)) throw badValue("'pipeline' option must be specified as an array")
    const coll = command.aggregate
    for (const stage of pipeline as Array<Doc>) {
      const op = Object.keys(stage)[0]
      if (op === "$changeStream" || op === "$out" || op === "$merge" || op === "$currentOp" || op === "$collStats" || op === "$indexStats") {
        throw new CommandError(115, "CommandNotSupported", `${op} is not supported by the embedded MongoDB server`)
      }
    }
    if (typeof coll !== "string") throw new CommandError(115, "CommandNotSupported", "database-level aggregation is not supported by the embedded MongoDB server")
    const c = this.storage.collection(db, coll)
    const docs = aggregate(access, c, pipeline as Array<Doc>, (name) => {
      const other = this.storage.collection(db, name)
      return other === undefined ? [] : [...access.scan(other)].map((v) => v.view)
    })
    const cursor = isPlainObject(command.cursor) ? command.cursor : {}
    const batchSize = cursor.batchSize === undefined ? 0 : num(cursor.batchSize, 0)
    if (cursor.batchSize !== undefined && batchSize === 0 && docs.length > 0) {
      const id = Long.fromBigInt(this.nextCursor++)
      this.cursors.set(id.toString(), { id, ns: `${db}.${coll}`, docs, pos: 0, batchSize: DEFAULT_BATCH })
      return { cursor: { firstBatch: [], id, ns: `${db}.${coll}` }, ok: 1 }
    }
    return this.cursorReply(`${db}.${coll}`, docs, batchSize, false, "firstBatch")
  }

  private count(command: Doc, db: string, access: Access): Doc {
    const c = this.collection(db, command, "count")
    const filter = (command.query as Doc | undefined) ?? {}
    const skip = num(command.skip, 0)
    const limit = Math.abs(num(command.limit, 0))
    if (Object.keys(filter).length === 0 && c !== undefined && access instanceof DirectAccess) {
      const total = Math.max(0, c.docs.size - skip)
      return { n: limit > 0 ? Math.min(limit, total) : total, ok: 1 }
    }
    return { n: findVersions(access, c, { filter, skip, limit }).length, ok: 1 }
  }

  private distinct(command: Doc, db: string, access: Access): Doc {
    const c = this.collection(db, command, "distinct")
    const key = command.key
    if (typeof key !== "string") throw badValue("distinct requires a key")
    const seen = new Set<string>()
    const values: Array<unknown> = []
    for (const v of findVersions(access, c, { filter: (command.query as Doc | undefined) ?? {} })) {
      for (const value of valuesAt(v.raw, key).flatMap((x) => (Array.isArray(x) ? x : [x]))) {
        const k = keyOf(value)
        if (seen.has(k)) continue
        seen.add(k)
        values.push(value)
      }
    }
    return { values, ok: 1 }
  }

  private createIndexes(command: Doc, db: string): Doc {
    const coll = collectionName(command, "createIndexes")
    const existed = this.storage.collection(db, coll) !== undefined
    const c = this.storage.ensureCollection(db, coll)
    const specs = command.indexes
    if (!Array.isArray(specs) || specs.length === 0) throw badValue("Must specify at least one index")
    const before = c.indexes.size
    for (const raw of specs as Array<Doc>) {
      const spec: Doc = { v: 2, ...raw, key: raw.key }
      if (!isPlainObject(spec.key)) throw badValue("index key pattern must be an object")
      const name = typeof spec.name === "string" ? spec.name : indexName(spec.key)
      const existing = c.indexes.get(name)
      if (existing !== undefined) {
        if (keyOf(toView(existing.key)) !== keyOf(toView(spec.key)) || existing.unique !== (spec.unique === true || name === "_id_")) {
          throw new CommandError(86, "IndexKeySpecsConflict", `An existing index has the same name as the requested index: ${name}`)
        }
        continue
      }
      for (const other of c.indexes.values()) {
        if (keyOf(toView(other.key)) === keyOf(toView(spec.key)) && other.unique !== (spec.unique === true)) {
          throw new CommandError(85, "IndexOptionsConflict", `Index already exists with a different name: ${other.name}`)
        }
      }
      c.addIndex({ ...spec, name })
      this.storage.journal?.([{ t: "ci", db, c: coll, spec: { ...spec, name } }])
    }
    return { createdCollectionAutomatically: !existed, numIndexesBefore: before, numIndexesAfter: c.indexes.size, ok: 1 }
  }

  private listIndexes(command: Doc, db: string): Doc {
    const coll = collectionName(command, "listIndexes")
    const c = this.storage.collection(db, coll)
    if (c === undefined) throw namespaceNotFound(`${db}.${coll}`)
    const docs = [...c.indexes.values()].map((i) => ({ v: 2, key: i.key, name: i.name, ...(i.unique && i.name !== "_id_" ? { unique: true } : {}), ...(i.sparse ? { sparse: true } : {}), ...(i.spec.partialFilterExpression !== undefined ? { partialFilterExpression: i.spec.partialFilterExpression } : {}) }))
    return { cursor: { firstBatch: docs, id: Long.fromNumber(0), ns: `${db}.${coll}` }, ok: 1 }
  }

  private dropIndexes(command: Doc, db: string, name: string): Doc {
    const coll = collectionName(command, name)
    const c = this.storage.collection(db, coll)
    if (c === undefined) throw namespaceNotFound(`${db}.${coll}`)
    const was = c.indexes.size
    const target = command.index
    const names: Array<string> = []
    if (target === "*") names.push(...[...c.indexes.keys()].filter((n) => n !== "_id_"))
    else if (typeof target === "string") names.push(target)
    else if (Array.isArray(target)) names.push(...target.map(String))
    else if (isPlainObject(target)) {
      const found = [...c.indexes.values()].find((i) => keyOf(toView(i.key)) === keyOf(toView(target)))
      if (found === undefined) throw new CommandError(27, "IndexNotFound", `can't find index with key: ${JSON.stringify(target)}`)
      names.push(found.name)
    }
    for (const n of names) {
      if (n === "_id_") throw new CommandError(72, "InvalidOptions", "cannot drop _id index")
      if (!c.indexes.has(n)) throw new CommandError(27, "IndexNotFound", `index not found with name [${n}]`)
    }
    for (const n of names) {
      c.indexes.delete(n)
      this.storage.journal?.([{ t: "di", db, c: coll, name: n }])
    }
    return { nIndexesWas: was, ok: 1 }
  }

  private listCollections(command: Doc, db: string): Doc {
    const colls = this.storage.dbs.get(db)
    const nameOnly = bool(command.nameOnly, false)
    let docs: Array<Doc> = [...(colls?.values() ?? [])].map((c) =>
      nameOnly
        ? { name: c.name, type: "collection" }
        : { name: c.name, type: "collection", options: {}, info: { readOnly: false }, idIndex: { v: 2, key: { _id: 1 }, name: "_id_" } }
    )
    if (isPlainObject(command.filter) && Object.keys(command.filter).length > 0) {
      const q = new Query(toView(command.filter) as Doc, {})
      docs = docs.filter((d) => q.test(d))
    }
    return { cursor: { firstBatch: docs, id: Long.fromNumber(0), ns: `${db}.$cmd.listCollections` }, ok: 1 }
  }

  private renameCollection(command: Doc): Doc {
    const from = String(command.renameCollection)
    const to = String(command.to)
    const split = (ns: string): [string, string] => {
      const dot = ns.indexOf(".")
      if (dot <= 0) throw new CommandError(73, "InvalidNamespace", `Invalid namespace specified '${ns}'`)
      return [ns.slice(0, dot), ns.slice(dot + 1)]
    }
    const [fromDb, fromName] = split(from)
    const [toDb, toName] = split(to)
    const source = this.storage.collection(fromDb, fromName)
    if (source === undefined) throw new CommandError(26, "NamespaceNotFound", "Source collection " + from + " does not exist")
    if (this.storage.collection(toDb, toName) !== undefined) {
      if (!bool(command.dropTarget, false)) throw new CommandError(48, "NamespaceExists", "target namespace exists")
      this.storage.dropCollection(toDb, toName)
    }
    const target = this.storage.ensureCollection(toDb, toName)
    for (const index of source.indexes.values()) {
      if (index.name === "_id_") continue
      target.addIndex(index.spec)
      this.storage.journal?.([{ t: "ci", db: toDb, c: toName, spec: index.spec }])
    }
    const seq = ++this.storage.seq
    for (const [key, v] of source.docs) {
      target.commit(key, withSeq(v, seq), seq)
      this.storage.journal?.([{ t: "put", db: toDb, c: toName, doc: v.raw }])
    }
    this.storage.dropCollection(fromDb, fromName)
    return { ok: 1 }
  }

  private listDatabases(command: Doc): Doc {
    const databases = [...this.storage.dbs.entries()].map(([name, colls]) => ({
      name,
      sizeOnDisk: 0,
      empty: [...colls.values()].every((c) => c.docs.size === 0)
    }))
    return bool(command.nameOnly, false)
      ? { databases: databases.map((d) => ({ name: d.name })), ok: 1 }
      : { databases, totalSize: 0, totalSizeMb: 0, ok: 1 }
  }

  /** Drops all cursors and sessions (server shutdown). */
  clear(): void {
    this.cursors.clear()
    for (const s of this.sessions.values()) if (s.txn !== undefined && s.txn.state === "active") this.storage.end(s.txn, "aborted")
    this.sessions.clear()
  }
}

const collectionName = (command: Doc, name: string): string => {
  const v = command[name]
  if (typeof v !== "string") throw badValue(`collection name has invalid type ${typeof v}`)
  return v
}

/** Up to `size` documents from `pos`, capped at a few MB so a reply stays under the message limit. */
const takeBatch = (docs: Array<Doc>, pos: number, size: number): Array<Doc> => {
  const end = Math.min(docs.length, pos + size)
  if (end - pos <= 16) return docs.slice(pos, end)
  const out: Array<Doc> = []
  let bytes = 0
  for (let i = pos; i < end; i++) {
    const d = docs[i]!
    bytes += calculateObjectSize(d)
    if (out.length > 0 && bytes > MAX_BATCH_BYTES) break
    out.push(d)
  }
  return out
}

/** A collation that changes nothing: `{ locale: "simple" }`, as MongoDB treats it. */
const isSimpleCollation = (c: unknown) => isPlainObject(c) && c.locale === "simple"

const notSupported = (what: string) =>
  new CommandError(115, "CommandNotSupported", `${what} is not supported by the embedded MongoDB server`)

/**
 * Refuses what the embedded server does not implement, with MongoDB's
 * CommandNotSupported, rather than approximating it: views (`create` with
 * `viewOn` / `pipeline`) and collations other than `simple` (on the command,
 * on a statement of a write, on an index or a collection).
 */
const refuseUnsupported = (name: string, command: Doc): void => {
  if (name === "create" && (command.viewOn !== undefined || command.pipeline !== undefined)) throw notSupported("views (create with viewOn)")
  const collations: Array<unknown> = [command.collation]
  for (const key of ["updates", "deletes", "indexes"]) {
    const list = command[key]
    if (Array.isArray(list)) for (const item of list) if (isPlainObject(item)) collations.push(item.collation)
  }
  if (collations.some((c) => c !== undefined && !isSimpleCollation(c))) throw notSupported("collation")
}
