/**
 * Persistent subscriptions (server-side consumer groups) of the embedded
 * event store: competing consumers over one stream or `$all`, at-least-once, with
 * ack / nack (park · retry · skip · stop), message timeouts with growing retry
 * counts, parking beyond `maxRetryCount`, replay of parked messages, consumer
 * strategies (RoundRobin, DispatchToSingle, Pinned) and a checkpoint kept in
 * `$persistentsubscription-<stream>::<group>-checkpoint`.
 *
 * Internal to the embedded server.
 */
import { randomUUID } from "node:crypto"
import type { AllFilter, GroupSource } from "./GroupSource.js"
import { allSource, streamSource } from "./GroupSource.js"
import type { Resolved, Store } from "./Store.js"

export type ConsumerStrategy = "DispatchToSingle" | "RoundRobin" | "Pinned"

/** Group settings, as the protocol carries them. */
export interface GroupSettings {
  readonly resolveLinkTos: boolean
  /** For stream groups: the first revision to deliver, or start / end. */
  readonly startFrom: bigint | "start" | "end"
  readonly extraStatistics: boolean
  /** 0 = messages never time out. */
  readonly messageTimeoutMs: number
  readonly maxRetryCount: number
  readonly checkpointAfterMs: number
  readonly minCheckpointCount: number
  readonly maxCheckpointCount: number
  /** 0 = unbounded. */
  readonly maxSubscriberCount: number
  readonly liveBufferSize: number
  readonly readBatchSize: number
  readonly historyBufferSize: number
  readonly strategy: ConsumerStrategy
  /** `$all` groups: which records they see. */
  readonly filter?: AllFilter | undefined
}

export class GroupExists extends Error {
  readonly _tag = "GroupExists"
}
export class GroupNotFound extends Error {
  readonly _tag = "GroupNotFound"
}
export class MaxSubscribersReached extends Error {
  readonly _tag = "MaxSubscribersReached"
}

/**
 * Test knob: faults a group injects, decided by a seeded generator, as a real
 * server produces them when a consumer is slow, dies or loses an answer: a
 * message whose first delivery went unanswered is redelivered (retry count + 1)
 * after later messages of its stream went out to other consumers, and a message
 * whose acknowledgement came too late is delivered once more.
 *
 * - `overtakeRate`: a message about to be sent the first time is, with this
 *   probability, sent only after `1…overtakeBy` further messages (as if it had
 *   gone to a consumer that never answered, and timed out).
 * - `redeliverRate`: an acknowledged message is, with this probability,
 *   delivered again after `1…overtakeBy` further messages.
 * - `duplicateRate`: a message just sent is, with this probability, sent again
 *   after `1…overtakeBy` further messages, whatever becomes of the first copy
 *   (as when its timeout fires while the first consumer still works on it).
 */
export interface GroupFaults {
  readonly seed?: number | undefined
  readonly overtakeRate?: number | undefined
  readonly redeliverRate?: number | undefined
  readonly duplicateRate?: number | undefined
  /** Default 16. */
  readonly overtakeBy?: number | undefined
}

/** A seeded generator in [0, 1) (mulberry32). */
const seeded = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** One message of a group: a (resolved) event with its retry count. */
export interface Message {
  readonly resolved: Resolved
  /** What the subscriber acks by: the link's id when there is a link, else the event's. */
  readonly id: string
  /** The revision in the source stream (the position in `$all`); `undefined` for replayed parked messages. */
  readonly sequence: bigint | undefined
  readonly retryCount: number
}

/** Where a subscriber's messages go. */
export interface SubscriberSink {
  readonly send: (message: Message) => void
  /** Ends the subscriber's call; with a reason when the group dropped it. */
  readonly close: (dropped?: string) => void
  readonly connectionName: string
  readonly from: string
}

interface Subscriber {
  readonly id: string
  readonly bufferSize: number
  readonly inFlight: Set<string>
  readonly sink: SubscriberSink
  totalItems: number
}

interface Outstanding {
  readonly message: Message
  readonly subscriber: Subscriber
  readonly deadline: number
}

const BUCKETS = 1024
const encoder = new TextEncoder()
const decoder = new TextDecoder()

const hash = (s: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

/** Pinned: the bucket of a message, by the stream of its (resolved) event. */
const bucketOf = (message: Message): number =>
  hash(message.resolved.event?.streamId ?? message.resolved.link?.streamId ?? "") % BUCKETS

export const parkedStreamOf = (stream: string, group: string) => `$persistentsubscription-${stream}::${group}-parked`
export const checkpointStreamOf = (stream: string, group: string) =>
  `$persistentsubscription-${stream}::${group}-checkpoint`

/** One consumer group on one stream or on `$all`. */
export class Group {
  private subscribers: Array<Subscriber> = []
  private nextRead = 0n
  /**
   * The newest sequence the group has read (into its buffer), as the real server's
   * "last known event" statistic: unknown until the group's first read (not the
   * stream's head), so that an observer cannot mistake a group that has not read
   * yet for one with nothing left to do.
   */
  private lastRead: bigint | undefined = undefined
  private readonly pending: Array<Message> = []
  private readonly retry: Array<Message> = []
  private readonly outstanding = new Map<string, Outstanding>()
  /** Sequences read but not yet settled: the checkpoint stays below the smallest. */
  private readonly inProgress = new Set<bigint>()
  private readonly pins = new Map<number, Subscriber>()
  /** In-flight messages per bucket (Pinned): a bucket moves only when idle, so a stream's order holds. */
  private readonly bucketInFlight = new Map<number, number>()
  private roundRobin = 0
  private lastCheckpoint: bigint | undefined = undefined
  private lastCheckpointAt = Date.now()
  private settledSinceCheckpoint = 0
  private timer: NodeJS.Timeout | undefined = undefined
  private dispatching = false
  private again = false
  /** A stopped group (deleted, or the server shut down) ignores late acks and arms no timers. */
  private stopped = false
  private unlisten: () => void
  totalItems = 0
  /** Copies of acknowledged messages waiting to be redelivered overtaken (see {@link GroupFaults}). */
  private readonly overtaken: Array<{ readonly message: Message; readonly after: number }> = []
  private random: (() => number) | undefined = undefined
  faults: GroupFaults | undefined = undefined

  private source: GroupSource

  constructor(
    private readonly store: Store,
    /** The stream, or `$all`. */
    readonly stream: string,
    readonly name: string,
    public settings: GroupSettings
  ) {
    this.source = this.sourceFor(settings)
    this.start()
    this.unlisten = store.onAppend((records) => {
      if (this.source.touches(records)) this.dispatch()
    })
  }

  private sourceFor(settings: GroupSettings): GroupSource {
    return this.stream === "$all" ? allSource(this.store, settings.filter) : streamSource(this.store, this.stream)
  }

  /** Start point and checkpoints in the protocol's text form. */
  get startFromText(): string {
    return this.source.formatStart(this.settings.startFrom)
  }
  format(sequence: bigint | undefined): string {
    return sequence === undefined ? "" : this.source.format(sequence)
  }

  get parkedStream() {
    return parkedStreamOf(this.stream, this.name)
  }
  get checkpointStream() {
    return checkpointStreamOf(this.stream, this.name)
  }

  /** (Re)starts from the stored checkpoint, or from `startFrom`. */
  private start(): void {
    const cp = this.store.readStream(this.checkpointStream, "end", true, 1)?.[0]
    const checkpoint = cp ? this.source.parse(decoder.decode(cp.data).trim().replace(/^"|"$/g, "")) : undefined
    this.lastCheckpoint = checkpoint
    this.lastRead = undefined
    this.nextRead = checkpoint !== undefined ? checkpoint + 1n : this.source.start(this.settings.startFrom)
  }

  /** Drops every subscriber and restarts from the checkpoint with new settings. */
  update(settings: GroupSettings): void {
    this.writeCheckpoint(true)
    this.dropAll("The subscription group was updated.")
    this.settings = settings
    this.source = this.sourceFor(settings)
    this.pending.length = 0
    this.retry.length = 0
    this.outstanding.clear()
    this.inProgress.clear()
    this.pins.clear()
    this.bucketInFlight.clear()
    this.start()
  }

  private dropAll(reason: string): void {
    const subs = this.subscribers
    this.subscribers = []
    for (const s of subs) s.sink.close(reason)
  }

  /** Stops the group: drops subscribers, keeps its checkpoint. */
  stop(reason: string): void {
    this.writeCheckpoint(true)
    this.stopped = true
    this.unlisten()
    this.unlisten = () => {}
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    this.dropAll(reason)
  }

  connect(bufferSize: number, sink: SubscriberSink): string {
    if (this.stopped) throw new GroupNotFound(`Subscription group ${this.name} on stream ${this.stream} was stopped.`)
    if (this.settings.maxSubscriberCount > 0 && this.subscribers.length >= this.settings.maxSubscriberCount) {
      throw new MaxSubscribersReached(`Maximum subscriber count reached on ${this.stream}::${this.name}`)
    }
    const sub: Subscriber = { id: randomUUID(), bufferSize: Math.max(1, bufferSize), inFlight: new Set(), sink, totalItems: 0 }
    this.subscribers.push(sub)
    this.rebalance()
    queueMicrotask(() => this.dispatch())
    return sub.id
  }

  disconnect(subscriberId: string): void {
    if (this.stopped) return
    const sub = this.subscribers.find((s) => s.id === subscriberId)
    if (!sub) return
    this.subscribers = this.subscribers.filter((s) => s !== sub)
    for (const id of [...sub.inFlight]) {
      const o = this.take(id)
      if (o) this.retryMessage(o.message, "Client disconnected")
    }
    for (const [bucket, s] of this.pins) if (s === sub) this.pins.delete(bucket)
    this.rebalance()
    this.dispatch()
  }

  ack(ids: ReadonlyArray<string>): void {
    if (this.stopped) return
    for (const id of ids) {
      const o = this.take(id)
      if (!o) continue
      this.finish(o.message)
      this.maybeRedeliver(o.message)
    }
    this.writeCheckpoint(false)
    this.dispatch()
  }

  nack(subscriberId: string, ids: ReadonlyArray<string>, action: "park" | "retry" | "skip" | "stop" | "unknown", reason: string): void {
    if (this.stopped) return
    for (const id of ids) {
      const o = this.take(id)
      if (!o) continue
      switch (action) {
        case "park":
          this.park(o.message, `Client explicitly NAK'ed message.\n${reason}`)
          this.finish(o.message)
          break
        case "skip":
          this.finish(o.message)
          break
        case "stop":
          this.retry.unshift(o.message)
          break
        default:
          this.retryMessage(o.message, reason)
      }
    }
    if (action === "stop") {
      const sub = this.subscribers.find((s) => s.id === subscriberId)
      if (sub) {
        this.disconnect(subscriberId)
        sub.sink.close()
      }
    }
    this.writeCheckpoint(false)
    this.dispatch()
  }

  private maybeRedeliver(message: Message): void {
    this.maybeOvertake(message, this.faults?.redeliverRate)
  }

  /** Sets a message aside to be sent after later ones (see {@link GroupFaults}); whether it did. */
  private maybeOvertake(message: Message, rate: number | undefined): boolean {
    const faults = this.faults
    if (faults === undefined || rate === undefined || rate <= 0) return false
    this.random ??= seeded(faults.seed ?? 1)
    if (this.random() >= rate) return false
    const after = this.totalItems + 1 + Math.floor(this.random() * (faults.overtakeBy ?? 16))
    this.overtaken.push({ message: { ...message, retryCount: message.retryCount + 1 }, after })
    return true
  }

  /** Overtaken copies whose turn came (or all of them, when nothing else is left to send) join the retries. */
  private releaseOvertaken(): void {
    if (this.overtaken.length === 0) return
    const idle = this.pending.length === 0 && this.retry.length === 0
    for (let i = 0; i < this.overtaken.length;) {
      const o = this.overtaken[i]!
      if (idle || o.after <= this.totalItems) {
        this.overtaken.splice(i, 1)
        // A copy of a message still out: its timeout fired (the first consumer's answer no longer counts).
        this.take(o.message.id)
        this.retry.push(o.message)
      } else i++
    }
  }

  /** Moves parked messages (up to `stopAt` of them) in front of new ones. */
  replayParked(stopAt: number | undefined): void {
    if (this.stopped) return
    const parked = this.store.readStream(this.parkedStream, "start", false, stopAt ?? Number.MAX_SAFE_INTEGER) ?? []
    const replay: Array<Message> = []
    for (const link of parked) {
      const resolved = this.store.resolve(link, true)
      replay.push({ resolved, id: link.id, sequence: undefined, retryCount: 0 })
    }
    if (parked.length > 0) this.store.truncate(this.parkedStream, parked[parked.length - 1]!.revision + 1n)
    this.retry.unshift(...replay)
    this.dispatch()
  }

  private take(id: string): Outstanding | undefined {
    const o = this.outstanding.get(id)
    if (!o) return undefined
    this.outstanding.delete(id)
    o.subscriber.inFlight.delete(id)
    const bucket = bucketOf(o.message)
    const n = (this.bucketInFlight.get(bucket) ?? 1) - 1
    if (n <= 0) this.bucketInFlight.delete(bucket)
    else this.bucketInFlight.set(bucket, n)
    return o
  }

  /**
   * Pinned: when subscribers come or go, idle buckets are released and get
   * re-pinned to the least loaded subscriber on their next message; buckets
   * with messages in flight stay where they are.
   */
  private rebalance(): void {
    if (this.settings.strategy !== "Pinned") return
    for (const bucket of [...this.pins.keys()]) {
      if (!this.bucketInFlight.has(bucket)) this.pins.delete(bucket)
    }
  }

  private finish(message: Message): void {
    if (message.sequence !== undefined) this.inProgress.delete(message.sequence)
    this.settledSinceCheckpoint++
  }

  private retryMessage(message: Message, reason: string): void {
    if (message.retryCount >= this.settings.maxRetryCount) {
      this.park(message, `Max retry count reached (${this.settings.maxRetryCount}); last: ${reason}`)
      this.finish(message)
      return
    }
    const next = { ...message, retryCount: message.retryCount + 1 }
    const seq = next.sequence
    let i = seq === undefined ? -1 : this.retry.findIndex((m) => m.sequence !== undefined && m.sequence > seq)
    if (i < 0) i = this.retry.length
    this.retry.splice(i, 0, next)
  }

  /**
   * Writes a parked message: a `$>` link to the event (or, for a link whose
   * event is gone, a copy of that link), with metadata
   * `{ added, reason, subscriptionEventNumber, retryCount }`.
   */
  private park(message: Message, reason: string): void {
    const { event, link } = message.resolved
    const data = event
      ? encoder.encode(`${event.revision}@${event.streamId}`)
      : link
      ? link.data
      : undefined
    if (!data) return
    const metadata = encoder.encode(JSON.stringify({
      added: new Date().toISOString(),
      reason,
      subscriptionEventNumber: Number((link ?? event)!.revision),
      retryCount: message.retryCount
    }))
    try {
      this.store.appendLinkData(this.parkedStream, data, metadata)
    } catch {
      // a tombstoned parked stream cannot hold messages; the message is dropped
    }
  }

  get parkedCount(): number {
    const first = this.store.firstRevision(this.parkedStream)
    return Number(this.store.nextRevision(this.parkedStream) - first)
  }

  private checkpointValue(): bigint | undefined {
    let min: bigint | undefined = undefined
    for (const s of this.inProgress) if (min === undefined || s < min) min = s
    const cp = (min ?? this.nextRead) - 1n
    return cp < 0n ? undefined : cp
  }

  private writeCheckpoint(force: boolean): void {
    const due = Date.now() - this.lastCheckpointAt >= this.settings.checkpointAfterMs
    if (
      force ||
      this.settledSinceCheckpoint >= this.settings.maxCheckpointCount ||
      (due && this.settledSinceCheckpoint >= this.settings.minCheckpointCount)
    ) {
      const cp = this.checkpointValue()
      if (cp === undefined || cp === this.lastCheckpoint) return
      try {
        this.store.append(this.checkpointStream, { _tag: "Any" }, [{
          id: randomUUID(),
          type: "$SubscriptionCheckpoint",
          contentType: "application/json",
          data: encoder.encode(this.stream === "$all" ? JSON.stringify(this.source.format(cp)) : cp.toString(10)),
          metadata: new Uint8Array()
        }])
      } catch {
        return
      }
      this.lastCheckpoint = cp
      this.lastCheckpointAt = Date.now()
      this.settledSinceCheckpoint = 0
    }
  }

  get lastCheckpointed(): bigint | undefined {
    return this.lastCheckpoint
  }
  /** The newest sequence the group has read; `undefined` before its first read. */
  get lastKnown(): bigint | undefined {
    return this.lastRead
  }
  get connections(): ReadonlyArray<{ sink: SubscriberSink; inFlight: number; available: number; totalItems: number }> {
    return this.subscribers.map((s) => ({
      sink: s.sink,
      inFlight: s.inFlight.size,
      available: s.bufferSize - s.inFlight.size,
      totalItems: s.totalItems
    }))
  }
  get stats() {
    return {
      readBuffer: this.pending.length,
      retryBuffer: this.retry.length,
      inFlight: this.outstanding.size
    }
  }

  private pick(message: Message): Subscriber | undefined {
    const free = (s: Subscriber) => s.inFlight.size < s.bufferSize
    switch (this.settings.strategy) {
      case "DispatchToSingle":
        return this.subscribers.find(free)
      case "RoundRobin": {
        const n = this.subscribers.length
        for (let k = 0; k < n; k++) {
          const s = this.subscribers[(this.roundRobin + k) % n]!
          if (free(s)) {
            this.roundRobin = (this.roundRobin + k + 1) % n
            return s
          }
        }
        return undefined
      }
      case "Pinned": {
        const bucket = bucketOf(message)
        let s = this.pins.get(bucket)
        if (!s) {
          const load = new Map<Subscriber, number>(this.subscribers.map((x) => [x, 0]))
          for (const x of this.pins.values()) load.set(x, (load.get(x) ?? 0) + 1)
          for (const x of this.subscribers) if (!s || load.get(x)! < load.get(s)!) s = x
          if (!s) return undefined
          this.pins.set(bucket, s)
        }
        return free(s) ? s : undefined
      }
    }
  }

  private hasCapacity(): boolean {
    return this.subscribers.some((s) => s.inFlight.size < s.bufferSize)
  }

  /** Sends what can be sent from a queue; stops early unless the strategy pins. */
  private drain(queue: Array<Message>): boolean {
    let sent = false
    for (let i = 0; i < queue.length && this.hasCapacity();) {
      const message = queue[i]!
      const sub = this.pick(message)
      if (!sub) {
        if (this.settings.strategy !== "Pinned") break
        i++
        continue
      }
      queue.splice(i, 1)
      if (message.retryCount === 0 && this.maybeOvertake(message, this.faults?.overtakeRate)) continue
      this.send(sub, message)
      this.maybeOvertake(message, this.faults?.duplicateRate)
      sent = true
    }
    return sent
  }

  private readMore(): boolean {
    if (this.pending.length >= Math.max(1, this.settings.historyBufferSize)) return false
    const { records, next } = this.source.read(this.nextRead, Math.max(1, this.settings.readBatchSize))
    const advanced = next > this.nextRead
    for (const record of records) {
      const resolved = this.store.resolve(record, this.settings.resolveLinkTos)
      const id = resolved.link?.id ?? resolved.event!.id
      const sequence = this.source.sequenceOf(record)
      this.pending.push({ resolved, id, sequence, retryCount: 0 })
      this.inProgress.add(sequence)
      if (this.lastRead === undefined || sequence > this.lastRead) this.lastRead = sequence
    }
    if (advanced) this.nextRead = next
    return records.length > 0 || advanced
  }

  private send(sub: Subscriber, message: Message): void {
    // a message timeout of 0 means messages never time out
    const timeout = this.settings.messageTimeoutMs > 0 ? this.settings.messageTimeoutMs : Infinity
    this.outstanding.set(message.id, { message, subscriber: sub, deadline: Date.now() + timeout })
    sub.inFlight.add(message.id)
    const bucket = bucketOf(message)
    this.bucketInFlight.set(bucket, (this.bucketInFlight.get(bucket) ?? 0) + 1)
    sub.totalItems++
    this.totalItems++
    sub.sink.send(message)
  }

  /** Hands messages to subscribers with free slots: retries and parked replays first, then new events. */
  dispatch(): void {
    if (this.stopped) return
    if (this.dispatching) {
      this.again = true
      return
    }
    this.dispatching = true
    try {
      do {
        this.again = false
        let progress = true
        while (progress && this.subscribers.length > 0 && this.hasCapacity()) {
          this.releaseOvertaken()
          progress = this.drain(this.retry)
          if (this.pending.length < this.settings.readBatchSize) progress = this.readMore() || progress
          progress = this.drain(this.pending) || progress
          if (!progress) progress = this.readMore()
        }
      } while (this.again)
    } finally {
      this.dispatching = false
    }
    this.arm()
  }

  /** Arms the group's timer for the next message timeout or checkpoint. */
  private arm(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    if (this.stopped) return
    // deadlines grow with insertion order (one timeout per group): the first is the earliest
    let next = Infinity
    for (const o of this.outstanding.values()) {
      next = o.deadline
      break
    }
    if (this.settledSinceCheckpoint > 0) next = Math.min(next, this.lastCheckpointAt + this.settings.checkpointAfterMs)
    if (next === Infinity) return
    this.timer = setTimeout(() => this.tick(), Math.max(0, next - Date.now()) + 1)
  }

  private tick(): void {
    this.timer = undefined
    const now = Date.now()
    const expired: Array<[string, Outstanding]> = []
    for (const entry of this.outstanding) {
      if (entry[1].deadline > now) break
      expired.push(entry)
    }
    for (const [id, o] of expired) {
      this.take(id)
      this.retryMessage(o.message, "Message timed out")
    }
    if (this.settledSinceCheckpoint > 0 && now - this.lastCheckpointAt >= this.settings.checkpointAfterMs) {
      // time is up: checkpoint whatever was settled, even below the lower bound
      this.writeCheckpoint(true)
    }
    this.dispatch()
  }
}

/** Journal hook for group definitions. */
export interface GroupJournal {
  readonly group: (op: "create" | "update" | "delete", stream: string, group: string, settings?: GroupSettings) => void
}

/** All consumer groups of a server. */
export class PersistentSubscriptions {
  private readonly groups = new Map<string, Group>()
  journal: GroupJournal | undefined = undefined

  constructor(private readonly store: Store) {}

  private key(stream: string, group: string) {
    return `${stream}::${group}`
  }

  get(stream: string, group: string): Group {
    const g = this.groups.get(this.key(stream, group))
    if (!g) throw new GroupNotFound(`Subscription group ${group} on stream ${stream} does not exist.`)
    return g
  }

  list(stream?: string): Array<Group> {
    return [...this.groups.values()].filter((g) => stream === undefined || g.stream === stream)
  }

  /** Test knob: faults every group injects from now on (see {@link GroupFaults}). */
  set faults(faults: GroupFaults | undefined) {
    this.groupFaults = faults
    for (const g of this.groups.values()) g.faults = faults
  }
  private groupFaults: GroupFaults | undefined = undefined

  create(stream: string, group: string, settings: GroupSettings): void {
    const key = this.key(stream, group)
    if (this.groups.has(key)) throw new GroupExists(`Subscription group ${group} on stream ${stream} exists.`)
    const g = new Group(this.store, stream, group, settings)
    g.faults = this.groupFaults
    this.groups.set(key, g)
    this.journal?.group("create", stream, group, settings)
  }

  update(stream: string, group: string, settings: GroupSettings): void {
    this.get(stream, group).update(settings)
    this.journal?.group("update", stream, group, settings)
  }

  delete(stream: string, group: string): void {
    const g = this.get(stream, group)
    g.stop("The subscription group was deleted.")
    this.groups.delete(this.key(stream, group))
    this.journal?.group("delete", stream, group)
  }

  /** Drops every subscriber and restarts every group from its checkpoint. */
  restart(): void {
    for (const g of this.groups.values()) g.update(g.settings)
  }

  close(): void {
    for (const g of this.groups.values()) g.stop("The server is shutting down.")
    this.groups.clear()
  }
}
