/**
 * Runs the real engine over a history on the in-memory ports, with the ports'
 * seeded faults and stops (graceful interruptions and crashes) on demand, and
 * reads back what it made: documents, dead letters or parked events.
 */
import { Deferred, Effect, Either, Fiber, Logger, LogLevel, Option, Schedule, Schema } from "effect"
// The public modules only (not the package index, which loads every adapter and client).
import * as EventSource from "../../EventSource.js"
import * as InMemory from "../../InMemory.js"
import * as Projection from "../../Projection.js"
import * as ReadModelStore from "../../ReadModelStore.js"
import * as Reconciler from "../../Reconciler.js"
import type { Appended } from "./records.js"
import { identity } from "./records.js"

export type Mode = "catch-up" | "persistent"

/** A stop of the engine before the final run to the end. */
export interface Stop {
  /** After how many store writes (documents, checkpoints, dead letters). */
  readonly afterCalls: number
  /** `interrupt`: a graceful stop (drain); `crash`: every store call fails from then on. */
  readonly kind: "interrupt" | "crash"
}

export interface Faults {
  readonly seed: number
  readonly duplicateRate?: number | undefined
  readonly reorderRate?: number | undefined
  readonly dropRate?: number | undefined
  readonly transientFailureRate?: number | undefined
  readonly lostAcknowledgementRate?: number | undefined
  readonly stops?: ReadonlyArray<Stop> | undefined
}

export interface Run {
  readonly mode: Mode
  readonly lanes?: number | undefined
  readonly batchSize?: number | undefined
  /** Deliveries per chunk the log hands over. Default 16. */
  readonly chunkSize?: number | undefined
  readonly faults?: Faults | undefined
  /** After the run, run again from the start of the log (checkpoint ignored, a fresh group). */
  readonly replayFromStart?: boolean | undefined
}

/** What the engine made. */
export interface Outcome {
  /** The stored documents' encoded bodies, tombstones excluded. */
  readonly bodies: ReadonlyMap<string, Readonly<Record<string, unknown>>>
  /** The poison events the engine set aside (dead-lettered or parked), by identity, with the reason. */
  readonly poison: ReadonlyMap<string, string>
  readonly recorded: ReadonlyArray<InMemory.RecordedEvent>
  /** Only with `replayFromStart`: the same after the replay. */
  readonly replayed?: Omit<Outcome, "recorded" | "replayed"> | undefined
}

/** Why the engine did not get to the end: the message of its error. */
export class EngineFailed extends Schema.TaggedError<EngineFailed>()("EngineFailed", {
  message: Schema.String,
  cause: Schema.Defect
}) {}

const immediately = Schedule.forever

/** Runs the engine over `appended` (fresh ports) until the log's end, with the stops first. */
export const runEngine = (
  projection: Projection.Projection<any, any>,
  appended: ReadonlyArray<Appended>,
  run: Run
): Effect.Effect<Outcome, EngineFailed> =>
  Effect.scoped(Effect.gen(function*() {
    const faults = run.faults
    const log = yield* InMemory.makeEventLog({
      endAtHead: true,
      chunkSize: run.chunkSize ?? 16,
      maxRetryCount: 1_000,
      faults: faults && {
        seed: faults.seed,
        duplicateRate: faults.duplicateRate,
        reorderRate: run.mode === "persistent" ? faults.reorderRate : undefined,
        dropRate: faults.dropRate
      }
    })
    for (const event of appended) {
      yield* log.append(event.stream, [{ id: event.id, type: event.type, data: event.data }])
    }
    const store = yield* InMemory.makeStore({
      seed: (faults?.seed ?? 0) + 1,
      transientFailureRate: faults?.transientFailureRate,
      lostAcknowledgementRate: faults?.lostAcknowledgementRate
    })
    const group = Projection.checkpointId(projection)
    const options = (group: string): Reconciler.RunOptions => ({
      mode: run.mode,
      lanes: run.lanes,
      batchSize: run.batchSize,
      retrySchedule: immediately,
      resubscribeSchedule: immediately,
      group
    })
    const engine = (port: ReadModelStore.ReadModelStore["Type"], group: string) =>
      Reconciler.run(projection, options(group)).pipe(
        Effect.provideService(EventSource.EventSource, log.port),
        Effect.provideService(ReadModelStore.ReadModelStore, port)
      )
    for (const stop of faults?.stops ?? []) {
      // A crash: from the stop on, every store call fails for good, as if the process died.
      let crashed = false
      let calls = 0
      const reached = yield* Deferred.make<void>()
      const gate = <A>(effect: Effect.Effect<A, ReadModelStore.StoreError>) =>
        Effect.suspend(() => {
          if (crashed) return Effect.fail(new ReadModelStore.StoreError({ message: "crashed (injected)", transient: false }))
          if (++calls === stop.afterCalls) Deferred.unsafeDone(reached, Effect.void)
          return effect
        })
      const port: ReadModelStore.ReadModelStore["Type"] = {
        ...store.port,
        write: (batch) => gate(store.port.write(batch)),
        commitCheckpoint: (checkpoint) => gate(store.port.commitCheckpoint(checkpoint)),
        deadLetter: (letter) => gate(store.port.deadLetter(letter))
      }
      const fiber = yield* Effect.fork(engine(port, group))
      yield* Effect.raceFirst(Deferred.await(reached), Fiber.await(fiber))
      if (stop.kind === "interrupt") yield* Fiber.interrupt(fiber)
      else {
        crashed = true
        yield* Fiber.await(fiber)
      }
    }
    const failed = (what: string) => (error: unknown) =>
      new EngineFailed({ message: `${what}: ${error instanceof Error ? error.message : String(error)}`, cause: error })
    yield* engine(store.port, group).pipe(Effect.mapError(failed("the engine failed")))
    const outcome = () => ({
      bodies: new Map([...store.documents(projection.collection)].map(([id, doc]) => [id, doc.body!])),
      poison: run.mode === "catch-up"
        ? new Map(store.letters().filter((l) => l.projection === group).map((l) => [identity(l), l.reason]))
        : new Map(log.parked(group).map((p) => [identity(p.event), p.reason]))
    })
    const first = outcome()
    let replayed: Outcome["replayed"]
    if (run.replayFromStart) {
      // Every event again from the start: the checkpoint forgotten (catch-up), a new group (persistent).
      const forgetful: ReadModelStore.ReadModelStore["Type"] = { ...store.port, readCheckpoint: () => Effect.succeed(Option.none()) }
      yield* engine(forgetful, `${group}-replay`).pipe(Effect.mapError(failed("the engine failed on the replay")))
      const again = outcome()
      replayed = {
        bodies: again.bodies,
        poison: run.mode === "catch-up"
          ? again.poison
          : new Map(log.parked(`${group}-replay`).map((p) => [identity(p.event), p.reason]))
      }
    }
    return { ...first, recorded: log.events, replayed }
  })).pipe(
    // The engine's warnings and errors (resubscribing, retrying, a crash) are the faults we asked for.
    Logger.withMinimumLogLevel(LogLevel.None),
    Effect.catchAllDefect((defect) => Effect.fail(new EngineFailed({ message: `the engine died: ${String(defect)}`, cause: defect })))
  )

/** The stored bodies decoded with the document schema; `Left` with the reason for the first that is not. */
export const decodeBodies = (
  projection: Projection.Projection<any, any>,
  bodies: ReadonlyMap<string, unknown>
): Either.Either<Map<string, unknown>, string> => {
  const decode = Schema.decodeUnknownEither(projection.document)
  const out = new Map<string, unknown>()
  for (const [id, body] of bodies) {
    const decoded = decode(body)
    if (Either.isLeft(decoded)) return Either.left(`stored document ${id} does not decode: ${decoded.left.message}`)
    out.set(id, decoded.right)
  }
  return Either.right(out)
}

/**
 * The duplicate rate that delivers every event twice: in catch-up a duplicate
 * follows its original; a persistent group's duplicate is a redelivery that may
 * itself be duplicated, so half the time (two deliveries per event on average).
 */
export const twiceRate = (mode: Mode): number => mode === "catch-up" ? 1 : 0.5
