/**
 * The few operations the EventStoreDB event source needs, over either official
 * client: `@eventstore/db-client` (6.x, frozen) or its maintained successor
 * `@kurrent/kurrentdb-client` (1.3). Both speak the same gRPC protocol and hand
 * out the same shapes (subscriptions are object-mode readables, events are
 * resolved events); they differ in naming and in what they can read (the 6.x
 * client cannot read `$all` with a filter). The source is written once over
 * this interface. Each package is loaded only when chosen: their generated
 * protobuf code registers on one global namespace with differing definitions,
 * so a process uses one of them (and the embedded server follows
 * `EVENTSTORE_CLIENT`, see src/embedded/eventstore/proto.ts); loading the
 * other one fails typed instead of corrupting the first.
 *
 * @internal
 */
import type {
  PersistentSubscriptionToStream,
  PersistentSubscriptionToStreamInfo,
  PersistentSubscriptionToStreamSettings,
  ResolvedEvent
} from "@eventstore/db-client"
import type { Readable } from "node:stream"

/** Which official client talks to the server. */
export type ClientKind = "esdb" | "kurrentdb"

/** A stream-name filter of `$all`: a regex, or prefixes (one `$idx-…` prefix reads a KurrentDB secondary index). */
export type StreamFilter = { readonly regex: string } | { readonly prefixes: ReadonlyArray<string> }

/** What the clients' subscriptions are: object-mode readables that can cancel their call. */
export interface Unsubscribable extends Readable {
  unsubscribe(): Promise<void>
}

/** A subscription to a consumer group (settled by ack / nack). */
export type GroupSubscription = Unsubscribable & Pick<PersistentSubscriptionToStream, "ack" | "nack">

/** An `$all` position. */
export interface AllPosition {
  readonly commit: bigint
  readonly prepare: bigint
}

/** An event to append: JSON data (and metadata) under a type; the server gives it an id when none is set. */
export interface NewEvent {
  readonly type: string
  readonly data: unknown
  readonly metadata?: unknown
  readonly id?: string | undefined
}

/** What an append reports: the stream's last revision after it, and the `$all` position when the server says. */
export interface AppendResult {
  readonly nextExpectedRevision: bigint
  readonly position: AllPosition | undefined
}

/** The operations of one client, as the event source (and `Appender`) use them. */
export interface StoreClient {
  readonly kind: ClientKind
  /** Appends `events` to `stream` in one write, whatever the stream's state. */
  readonly appendToStream: (stream: string, events: ReadonlyArray<NewEvent>) => Promise<AppendResult>
  /** `readAhead`: events the subscription's readable buffers ahead of its reader (its high-water mark). */
  readonly subscribeToStream: (
    stream: string,
    options: { readonly after: bigint | undefined; readonly resolveLinkTos: boolean },
    readAhead: number
  ) => Unsubscribable
  readonly subscribeToAll: (
    options: { readonly after: AllPosition | undefined; readonly filter: StreamFilter },
    readAhead: number
  ) => Unsubscribable
  readonly createGroup: (stream: string, group: string, settings: Partial<PersistentSubscriptionToStreamSettings>) => Promise<unknown>
  readonly subscribeToGroup: (stream: string, group: string, bufferSize: number) => GroupSubscription
  /** The newest `maxCount` records of a stream, newest first, links resolved. */
  readonly readStreamBackwards: (stream: string, maxCount: number) => AsyncIterable<ResolvedEvent>
  /** The stream's events from revision `from` on, at most `maxCount` (links resolved when asked). */
  readonly readStreamForwards: (
    stream: string,
    from: bigint,
    maxCount: number,
    resolveLinkTos?: boolean
  ) => AsyncIterable<ResolvedEvent>
  /** Pushes a consumer group's parked messages to its subscribers again (all of them), before new events. */
  readonly replayParked: (stream: string, group: string) => Promise<void>
  /** A consumer group as the server describes it (settings, and counts of messages in flight and parked). */
  readonly groupInfo: (stream: string, group: string) => Promise<PersistentSubscriptionToStreamInfo>
  /** The newest `maxCount` events of filtered `$all`, newest first; `undefined` for a client that cannot filter reads. */
  readonly readAllBackwards: ((filter: StreamFilter, maxCount: number) => AsyncIterable<ResolvedEvent>) | undefined
  /** Filtered `$all` from `from` (inclusive; the start when none) on, at most `maxCount` events; `undefined` as above. */
  readonly readAllForwards:
    | ((filter: StreamFilter, from: AllPosition | undefined, maxCount: number) => AsyncIterable<ResolvedEvent>)
    | undefined
  /** The server version from `ServerFeatures` (`"unknown"` when the server does not say). */
  readonly serverVersion: () => Promise<string>
  readonly dispose: () => Promise<void>
}

/**
 * The client a connection string asks for: `kurrentdb://` (and `kurrentdb+discover://`,
 * `kurrent://`) → the KurrentDB client; anything else (`esdb://`) → the 6.x client.
 */
export const kindOf = (connectionString: string): ClientKind =>
  /^kurrent(db)?(\+discover)?:\/\//i.test(connectionString.trim()) ? "kurrentdb" : "esdb"

/** The clients keep the server's features to themselves; both expose them on this getter. */
const serverVersionOf = async (client: object): Promise<string> => {
  const capabilities = (client as { capabilities?: Promise<{ serverVersion?: string }> }).capabilities
  return (await capabilities)?.serverVersion ?? "unknown"
}

/** Closes the channel the clients leave open after `dispose`, so no handle lingers. */
const disposeFully = async (client: { dispose(): Promise<void> }) => {
  await client.dispose()
  const getChannel = (client as unknown as { getChannel?: () => Promise<{ close(): void }> }).getChannel
  if (typeof getChannel === "function") (await getChannel()).close()
}

/** A package's `streamNameFilter` (both take regex or prefixes options). */
type MakeFilter = { (o: { regex: string }): unknown; (o: { prefixes: Array<string> }): unknown }

const filterWith = (make: MakeFilter, filter: StreamFilter) =>
  "regex" in filter ? make({ regex: filter.regex }) : make({ prefixes: [...filter.prefixes] })

/** A package's `jsonEvent`, given only the fields that are set. */
const toJsonEvent = <E>(make: (event: any) => E, event: NewEvent): E =>
  make({
    type: event.type,
    data: event.data,
    ...(event.metadata === undefined ? {} : { metadata: event.metadata }),
    ...(event.id === undefined ? {} : { id: event.id })
  })

/** Thrown when a process that already uses one client package is asked to load the other. */
export class ClientPackageConflict extends Error {
  readonly _tag = "ClientPackageConflict"
}

let loaded: ClientKind | undefined
const claim = (kind: ClientKind) => {
  if (loaded !== undefined && loaded !== kind) {
    throw new ClientPackageConflict(
      `this process already uses the ${loaded === "esdb" ? "@eventstore/db-client" : "@kurrent/kurrentdb-client"} package; ` +
        `the two clients' generated protocol code cannot share a process (set EVENTSTORE_CLIENT to choose one for the whole process)`
    )
  }
  loaded = kind
}
/**
 * Which package's generated code is already registered in this process (by
 * an embedded server, or a client loaded elsewhere): KurrentDB's `BatchAppendReq`
 * options carry a field the 6.x ones lack.
 */
const claimProcess = () => {
  const options = (globalThis as { proto?: any }).proto?.event_store?.client?.streams?.BatchAppendReq?.Options?.prototype
  if (options !== undefined) loaded ??= typeof options.getDeadline21100 === "function" ? "kurrentdb" : "esdb"
}

/** The 6.x client (loaded on first use). Rejects with the client's error for a bad connection string. */
export const esdb = async (connectionString: string): Promise<StoreClient> => {
  claimProcess()
  claim("esdb")
  const {
    BACKWARDS,
    END,
    EventStoreDBClient,
    FORWARDS,
    jsonEvent,
    persistentSubscriptionToStreamSettingsFromDefaults,
    START,
    streamNameFilter
  } = await import("@eventstore/db-client")
  const client = EventStoreDBClient.connectionString(connectionString)
  return {
    kind: "esdb",
    appendToStream: async (stream, events) => {
      const result = await client.appendToStream(stream, events.map((e) => toJsonEvent(jsonEvent, e)))
      return { nextExpectedRevision: result.nextExpectedRevision, position: result.position }
    },
    subscribeToStream: (stream, { after, resolveLinkTos }, readAhead) =>
      client.subscribeToStream(stream, { fromRevision: after ?? START, resolveLinkTos }, { highWaterMark: readAhead }),
    subscribeToAll: ({ after, filter }, readAhead) =>
      client.subscribeToAll({
        fromPosition: after ?? START,
        filter: filterWith(streamNameFilter, filter) as ReturnType<typeof streamNameFilter>
      }, { highWaterMark: readAhead }),
    createGroup: (stream, group, settings) =>
      client.createPersistentSubscriptionToStream(stream, group, persistentSubscriptionToStreamSettingsFromDefaults(settings)),
    subscribeToGroup: (stream, group, bufferSize) => client.subscribeToPersistentSubscriptionToStream(stream, group, { bufferSize }),
    readStreamBackwards: (stream, maxCount) =>
      client.readStream(stream, { direction: BACKWARDS, fromRevision: END, maxCount, resolveLinkTos: true }),
    readStreamForwards: (stream, from, maxCount, resolveLinkTos = false) =>
      client.readStream(stream, { direction: FORWARDS, fromRevision: from, maxCount, resolveLinkTos }),
    groupInfo: (stream, group) => client.getPersistentSubscriptionToStreamInfo(stream, group),
    replayParked: (stream, group) => client.replayParkedMessagesToStream(stream, group),
    readAllBackwards: undefined,
    readAllForwards: undefined,
    serverVersion: () => serverVersionOf(client),
    dispose: () => disposeFully(client)
  }
}

/** The KurrentDB client (loaded on first use). Rejects with the client's error for a bad connection string. */
export const kurrentdb = async (connectionString: string): Promise<StoreClient> => {
  claimProcess()
  claim("kurrentdb")
  const k = await import("@kurrent/kurrentdb-client")
  const client = k.KurrentDBClient.connectionString(connectionString)
  // The two packages' types are nominally distinct but the same shapes: seen through the 6.x client's types.
  const same = <A>(a: unknown) => a as A
  return {
    kind: "kurrentdb",
    appendToStream: async (stream, events) => {
      const result = await client.appendToStream(stream, events.map((e) => toJsonEvent(k.jsonEvent, e)))
      return { nextExpectedRevision: result.nextExpectedRevision, position: result.position }
    },
    subscribeToStream: (stream, { after, resolveLinkTos }, readAhead) =>
      same(client.subscribeToStream(stream, { fromRevision: after ?? k.START, resolveLinkTos }, { highWaterMark: readAhead })),
    subscribeToAll: ({ after, filter }, readAhead) =>
      same(client.subscribeToAll({
        fromPosition: after ?? k.START,
        filter: filterWith(k.streamNameFilter, filter) as ReturnType<typeof k.streamNameFilter>
      }, { highWaterMark: readAhead })),
    createGroup: (stream, group, settings) =>
      client.createPersistentSubscriptionToStream(
        stream,
        group,
        k.persistentSubscriptionToStreamSettingsFromDefaults(same(settings))
      ),
    subscribeToGroup: (stream, group, bufferSize) => same(client.subscribeToPersistentSubscriptionToStream(stream, group, { bufferSize })),
    readStreamBackwards: (stream, maxCount) =>
      same(client.readStream(stream, { direction: k.BACKWARDS, fromRevision: k.END, maxCount, resolveLinkTos: true })),
    readStreamForwards: (stream, from, maxCount, resolveLinkTos = false) =>
      same(client.readStream(stream, { direction: k.FORWARDS, fromRevision: from, maxCount, resolveLinkTos })),
    groupInfo: (stream, group) => same(client.getPersistentSubscriptionToStreamInfo(stream, group)),
    replayParked: (stream, group) => client.replayParkedMessagesToStream(stream, group),
    readAllBackwards: (filter, maxCount) =>
      same(client.readAll({
        direction: k.BACKWARDS,
        fromPosition: k.END,
        maxCount,
        filter: filterWith(k.streamNameFilter, filter) as ReturnType<typeof k.streamNameFilter>
      })),
    readAllForwards: (filter, from, maxCount) =>
      same(client.readAll({
        direction: k.FORWARDS,
        fromPosition: from ?? k.START,
        maxCount,
        filter: filterWith(k.streamNameFilter, filter) as ReturnType<typeof k.streamNameFilter>
      })),
    serverVersion: () => serverVersionOf(client),
    dispose: () => disposeFully(client)
  }
}

/** Whether a server version (`major.minor…`) is at least `major.minor`; an unknown version is not. */
export const versionAtLeast = (version: string, major: number, minor: number): boolean => {
  const m = /^(\d+)\.(\d+)/.exec(version)
  if (!m) return false
  const [a, b] = [Number(m[1]), Number(m[2])]
  return a > major || (a === major && b >= minor)
}
