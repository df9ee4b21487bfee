/**
 * The embedded server host: binds the gRPC services to 127.0.0.1 and shuts
 * them down (subscribers dropped, groups checkpointed, journal flushed).
 *
 * Internal to the embedded server.
 */
import * as grpc from "@grpc/grpc-js"
import { openJournal } from "./Journal.js"
import { makePersistentService } from "./PersistentService.js"
import { PersistentSubscriptions } from "./PersistentSubscriptions.js"
import { featuresGrpc, persistentGrpc, streamsGrpc } from "./proto.js"
import { makeServerFeaturesService } from "./ServerFeaturesService.js"
import { Store } from "./Store.js"
import { makeStreamsService } from "./StreamsService.js"

export interface StartOptions {
  readonly port?: number | undefined
  readonly host?: string | undefined
  readonly dataDir?: string | undefined
}

export interface Running {
  readonly port: number
  readonly host: string
  readonly store: Store
  readonly groups: PersistentSubscriptions
  readonly close: () => Promise<void>
}

export const start = async (options: StartOptions): Promise<Running> => {
  const store = new Store()
  const groups = new PersistentSubscriptions(store)
  const journal = options.dataDir === undefined ? undefined : openJournal(options.dataDir, store, groups)
  const server = new grpc.Server({ "grpc.max_receive_message_length": 17 * 1024 * 1024 })
  server.addService(streamsGrpc.StreamsService, makeStreamsService(store))
  server.addService(persistentGrpc.PersistentSubscriptionsService, makePersistentService(groups))
  server.addService(featuresGrpc.ServerFeaturesService, makeServerFeaturesService())
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
