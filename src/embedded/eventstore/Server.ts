/**
 * The embedded server host: binds the gRPC services to 127.0.0.1 and shuts
 * them down (open calls ended with UNAVAILABLE, groups checkpointed, journal closed).
 *
 * Internal to the embedded server.
 */
import * as grpc from "@grpc/grpc-js"
import { openJournal } from "./Journal.js"
import { OpenCalls } from "./OpenCalls.js"
import { makePersistentService, persistentDefinition } from "./PersistentService.js"
import { PersistentSubscriptions } from "./PersistentSubscriptions.js"
import { featuresGrpc, load as loadProtocol } from "./proto.js"
import { makeServerFeaturesService } from "./ServerFeaturesService.js"
import { Store } from "./Store.js"
import { makeStreamsService, streamsDefinition } from "./StreamsService.js"

export interface StartOptions {
  readonly port?: number | undefined
  readonly host?: string | undefined
  readonly dataDir?: string | undefined
  /** Largest append in bytes; the real server's `MaxAppendSize` default, 1 MiB, when absent. */
  readonly maxAppendSize?: number | undefined
  /** Whether `BatchAppend` is offered and advertised (true by default, as on 21.10+). */
  readonly batchAppend?: boolean | undefined
  /** Whether the server is a KurrentDB 25.1 with secondary indexes (true by default) or an older one without. */
  readonly secondaryIndexes?: boolean | undefined
}

/** A real server's default `MaxAppendSize`: 1 MiB. */
export const DEFAULT_MAX_APPEND_SIZE = 1024 * 1024

export interface Running {
  readonly port: number
  readonly host: string
  readonly store: Store
  readonly groups: PersistentSubscriptions
  readonly close: () => Promise<void>
}

export const start = async (options: StartOptions): Promise<Running> => {
  loadProtocol()
  const store = new Store()
  const groups = new PersistentSubscriptions(store)
  const journal = options.dataDir === undefined ? undefined : openJournal(options.dataDir, store, groups)
  const calls = new OpenCalls()
  const batchAppend = options.batchAppend ?? true
  const server = new grpc.Server({ "grpc.max_receive_message_length": 17 * 1024 * 1024 })
  const streamsService = makeStreamsService(store, {
    maxAppendSize: options.maxAppendSize ?? DEFAULT_MAX_APPEND_SIZE,
    calls,
    secondaryIndexes: options.secondaryIndexes ?? true
  })
  if (!batchAppend) {
    // a server without BatchAppend (before 21.10) does not implement it at all
    delete streamsService.batchAppend
  }
  server.addService(streamsDefinition(), streamsService)
  server.addService(persistentDefinition(), makePersistentService(groups, calls))
  server.addService(featuresGrpc.ServerFeaturesService, makeServerFeaturesService({ batchAppend, secondaryIndexes: options.secondaryIndexes ?? true }))
  const host = options.host ?? "127.0.0.1"
  let port: number
  try {
    port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${host}:${options.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (error, port) =>
        error ? reject(error) : resolve(port)
      )
    )
  } catch (error) {
    await journal?.close()
    throw error
  }
  let closed: Promise<void> | undefined
  const close = () =>
    closed ??= (async () => {
      // clients see the server go away (UNAVAILABLE) and reconnect, as they do when a real one stops
      calls.shutdown()
      groups.close()
      await new Promise<void>((resolve) => {
        // give in-flight calls a moment to finish, then cut the rest
        const timer = setTimeout(() => server.forceShutdown(), 200)
        server.tryShutdown(() => {
          clearTimeout(timer)
          resolve()
        })
      })
      await journal?.close()
    })()
  return { port, host, store, groups, close }
}
