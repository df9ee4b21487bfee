/**
 * What the service knows about the projections it runs, kept in memory: where
 * each stands against the head of its source, whether it is moving, and the
 * totals the engine counted. It supervises the runs: a projection that is
 * behind the head and has not moved for `stallAfter` (whatever the cause: a
 * subscription gone silent, a stuck lane, the store down) is logged, counted
 * and restarted — the run drains, commits and resumes from its checkpoint with
 * a new subscription — and reported unhealthy only when that did not help.
 *
 * Every `interval` the monitor reads the head of each projection's categories
 * (and, in persistent mode, its consumer group from the server); between
 * reads it serves what it last saw, so `/status`, `/healthz` and `/readyz`
 * cost no round trip.
 *
 * Positions are those of the projection's subscription (`$ce` link revisions
 * for one category, `$all` positions for several); "behind" is the distance
 * from the committed checkpoint to the head in those positions (persistent
 * mode: the group's events not acknowledged yet, as the server counts them).
 *
 * @since 0.1.0
 */
import { Clock, Duration, Effect, Fiber, Metric, Option, Queue } from "effect"
import type { Scope } from "effect"
import { EventSource } from "./EventSource.js"
import type { GroupStatus } from "./EventSource.js"
import { checkpointId } from "./Projection.js"
import type { Runnable } from "./Projection.js"
import { ReadModelStore } from "./ReadModelStore.js"
import * as Reconciler from "./Reconciler.js"
import { distance, StallDetector } from "./internal/liveness.js"

/**
 * What the engine reports on every committer tick and after each commit
 * (`RunOptions.onProgress`); totals since the run started.
 *
 * @since 0.1.0
 */
export type Progress = Reconciler.Progress

/** @since 0.1.0 */
export interface Settings {
  readonly mode: "catch-up" | "persistent"
  /** Persistent mode: the consumer group (default: each projection's checkpoint id). */
  readonly group?: string | undefined
  /** Behind the head and not moving for this long is a stall. Default 30 s. */
  readonly stallAfter?: Duration.DurationInput | undefined
  /** How often the heads are read and liveness judged. Default 1 s. */
  readonly interval?: Duration.DurationInput | undefined
  /** `/readyz` is ready while every projection is at most this many positions behind. Default 100. */
  readonly readyDistance?: number | undefined
}

/**
 * One projection as the monitor last saw it. Times in milliseconds.
 *
 * @since 0.1.0
 */
export interface ProjectionState {
  readonly projection: string
  readonly checkpointId: string
  readonly mode: "catch-up" | "persistent"
  /** Its run is alive (between restarts it is briefly not). */
  readonly running: boolean
  readonly checkpoint: bigint | undefined
  readonly head: bigint | undefined
  /** Positions behind the head (undefined until the head has been read). */
  readonly behind: bigint | undefined
  /** Age of the oldest event not applied yet (0 when caught up; undefined when the source cannot tell). */
  readonly oldestUnappliedAgeMs: number | undefined
  readonly stalled: boolean
  readonly stalledForMs: number
  /** Stalled through a restart: `/healthz` reports it. */
  readonly unhealthy: boolean
  /** Stalls detected since the service started. */
  readonly stalls: number
  /** Restarts made to resolve stalls since the service started. */
  readonly restarts: number
  readonly processed: number
  readonly skipped: number
  readonly duplicates: number
  readonly deadLettered: number
  /** Received and not settled (undefined until the engine reported progress). */
  readonly inFlight: number | undefined
  /** Since the engine last settled a delivery (undefined until it has settled one). */
  readonly lastSettledAgoMs: number | undefined
  readonly group: (GroupStatus & { readonly name: string }) | undefined
  /** The last error of each read that is failing (`source: …`, `store: …`, `group: …`). */
  readonly sourceError: string | undefined
}

/** Liveness metrics, tagged with `projection`. @since 0.1.0 */
export const metrics = {
  behind: Metric.gauge("reconciler_positions_behind_head", {
    description: "positions between the committed checkpoint and the head of the source (persistent: unacknowledged events of the group)"
  }),
  oldestAge: Metric.gauge("reconciler_oldest_unapplied_age_ms", {
    description: "age of the oldest event not applied yet (0 when caught up)"
  }),
  head: Metric.gauge("reconciler_head_position", { description: "position of the newest event of the projection's categories" }),
  checkpoint: Metric.gauge("reconciler_checkpoint_position", { description: "committed checkpoint (catch-up)" }),
  stalled: Metric.gauge("reconciler_head_stalled", {
    description: "1 while behind the head and not moving for stallAfter"
  }),
  stalls: Metric.counter("reconciler_stalls", { description: "stalls detected", incremental: true }),
  restarts: Metric.counter("reconciler_stall_restarts", {
    description: "runs restarted (drained, resubscribed from the checkpoint) to resolve a stall",
    incremental: true
  }),
  running: Metric.gauge("reconciler_running", { description: "1 while the projection's run is alive" }),
  outstanding: Metric.gauge("reconciler_group_outstanding", {
    description: "persistent: messages delivered by the group and not acknowledged, from the server"
  }),
  parked: Metric.gauge("reconciler_group_parked", { description: "persistent: parked messages of the group, from the server" })
}

interface Entry {
  readonly runnable: Runnable
  readonly id: string
  readonly groupName: string | undefined
  readonly detector: StallDetector
  /** The restart signal of the run it belongs to (set by `supervise`). */
  restart: Queue.Queue<void> | undefined
  readonly tag: <A extends Metric.Metric<any, any, any>>(metric: A) => A
  running: boolean
  progress: Progress | undefined
  checkpoint: bigint | undefined
  /** Undefined until read, and when the categories have no events. */
  head: bigint | undefined
  headRead: boolean
  oldestUnappliedAgeMs: number | undefined
  stalled: boolean
  stalledForMs: number
  unhealthy: boolean
  stalls: number
  restarts: number
  group: (GroupStatus & { readonly name: string }) | undefined
  /** The last failure of each reader (source, store, group), while it fails. */
  readonly errors: Map<string, string>
  sourceError: string | undefined
}

/** Why `/healthz` or `/readyz` says no, per projection. @since 0.1.0 */
export interface Verdict {
  readonly ok: boolean
  readonly projections: ReadonlyArray<{
    readonly projection: string
    readonly ok: boolean
    readonly reason?: string
    readonly behind?: bigint | undefined
  }>
}

/**
 * The monitor of a service's projections.
 *
 * @since 0.1.0
 */
export interface Monitor {
  /**
   * Runs `run` for `runnables` (that run together, e.g. sharing one
   * subscription) with a progress callback for the engine, until it ends or
   * fails; when the liveness loop asks to restart any of them, the current run
   * is interrupted (it drains and commits) and started again.
   */
  readonly supervise: <E, R>(
    runnables: ReadonlyArray<Runnable>,
    run: (onProgress: (progress: Progress) => Effect.Effect<void>) => Effect.Effect<void, E, R>
  ) => Effect.Effect<void, E, R>
  /** Every projection as last seen. */
  readonly snapshot: Effect.Effect<ReadonlyArray<ProjectionState>>
  /** Healthy while every run is alive and none stalled through a restart. */
  readonly health: Effect.Effect<Verdict>
  /** Ready while every run is alive and within `readyDistance` of the head. */
  readonly readiness: Effect.Effect<Verdict>
  /** Judges liveness now with what was last read (the loop does this every interval). */
  readonly check: Effect.Effect<void>
  /** Sets the liveness gauges from what was last read (before a scrape). */
  readonly refresh: Effect.Effect<void>
}

const engineTotals = (name: string) => {
  const value = (counter: Metric.Metric.Counter<number>) =>
    Metric.value(Metric.tagged(counter, "projection", name)).pipe(Effect.map((state) => Number(state.count)))
  return Effect.all({
    processed: value(Reconciler.metrics.processed),
    skipped: value(Reconciler.metrics.skipped),
    duplicates: value(Reconciler.metrics.duplicates),
    deadLettered: value(Reconciler.metrics.deadLettered)
  })
}

const describeError = (error: unknown) => (error instanceof Error ? error.message : String(error))

/**
 * Makes the monitor of `runnables` and starts its liveness loop in the scope.
 *
 * @since 0.1.0
 */
export const make = (
  runnables: ReadonlyArray<Runnable>,
  settings: Settings
): Effect.Effect<Monitor, never, EventSource | ReadModelStore | Scope.Scope> =>
  Effect.gen(function*() {
    const source = yield* EventSource
    const store = yield* ReadModelStore
    const stallAfter = Duration.decode(settings.stallAfter ?? "30 seconds")
    const interval = Duration.decode(settings.interval ?? "1 second")
    const readyDistance = BigInt(settings.readyDistance ?? 100)
    const startedAt = yield* Clock.currentTimeMillis
    const entries = new Map<string, Entry>()
    for (const runnable of runnables) {
      const id = checkpointId(runnable)
      entries.set(id, {
        runnable,
        id,
        groupName: settings.mode === "persistent" ? settings.group ?? id : undefined,
        detector: new StallDetector(Duration.toMillis(stallAfter), startedAt),
        restart: undefined,
        tag: (metric) => Metric.tagged(metric, "projection", runnable.name) as never,
        running: false,
        progress: undefined,
        checkpoint: undefined,
        head: undefined,
        headRead: false,
        oldestUnappliedAgeMs: undefined,
        stalled: false,
        stalledForMs: 0,
        unhealthy: false,
        stalls: 0,
        restarts: 0,
        group: undefined,
        errors: new Map(),
        sourceError: undefined
      })
    }
    const entryOf = (runnable: Runnable) => entries.get(checkpointId(runnable))!

    const setRunning = (entry: Entry, running: boolean) =>
      Effect.suspend(() => {
        entry.running = running
        return Metric.set(entry.tag(metrics.running), running ? 1 : 0)
      })

    const supervise: Monitor["supervise"] = (runnables, run) =>
      Effect.gen(function*() {
        const members = runnables.map(entryOf)
        // One restart signal for the whole run: a stalled member restarts the subscription they share.
        const restart = yield* Queue.sliding<void>(1)
        for (const entry of members) entry.restart = restart
        const onProgress = (progress: Progress) =>
          Effect.sync(() => {
            const entry = entries.get(progress.projection)
            if (entry === undefined) return
            entry.progress = progress
            if (progress.checkpoint !== undefined && (entry.checkpoint === undefined || progress.checkpoint > entry.checkpoint)) {
              entry.checkpoint = progress.checkpoint
            }
          })
        const running = (on: boolean) => Effect.forEach(members, (entry) => setRunning(entry, on), { discard: true })
        // The run in a fiber of its own, always interrupted *and awaited* (it drains and commits) before
        // `once` returns — on a restart and when the supervisor itself is interrupted (a race's loser is
        // not awaited when the racer is interrupted: the process could exit mid-drain).
        const once = Effect.uninterruptibleMask((restore) =>
          Effect.gen(function*() {
            const fiber = yield* Effect.fork(restore(Effect.suspend(() => run(onProgress))))
            const outcome = yield* restore(
              Effect.raceFirst(
                Fiber.join(fiber).pipe(Effect.as("ended" as const)),
                Queue.take(restart).pipe(Effect.as("restart" as const))
              )
            ).pipe(Effect.onInterrupt(() => Fiber.interrupt(fiber)))
            if (outcome === "restart") yield* Fiber.interrupt(fiber)
            return outcome
          })
        )
        while (true) {
          yield* running(true)
          // A restart interrupts the run, which drains and commits before `once` returns.
          const outcome = yield* once.pipe(Effect.ensuring(running(false)))
          if (outcome === "ended") return
          yield* Effect.logInfo(`${runnables.map((r) => r.name).join(", ")}: restarted; resuming from the checkpoints`)
        }
      })

    /**
     * Reads one thing about a projection every interval, on its own fiber (a
     * store that hangs does not delay the head); a failure is noted under
     * `what` and the last value kept.
     */
    const poll = <A>(entry: Entry, what: string, read: Effect.Effect<A, unknown>, use: (a: A) => void) =>
      read.pipe(
        Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("timed out after 10 s") }),
        Effect.matchEffect({
          onFailure: (error) => Effect.sync(() => void entry.errors.set(what, describeError(error))),
          onSuccess: (a) =>
            Effect.sync(() => {
              entry.errors.delete(what)
              use(a)
            })
        }),
        Effect.zipRight(Effect.sleep(interval)),
        Effect.forever,
        Effect.forkScoped
      )

    /** Positions behind the head, from what was last read (undefined until the head has been). */
    const behindOf = (entry: Entry): bigint | undefined => {
      if (!entry.headRead) return undefined
      if (settings.mode === "catch-up") return distance(entry.checkpoint, entry.head)
      if (entry.group !== undefined) return BigInt(entry.group.pending)
      if (entry.progress === undefined) return undefined
      // No word from the server: what the engine has not received yet, and what it has not settled.
      const received = entry.progress.received
      const unreceived = entry.head === undefined
        ? 0n
        : received === undefined
        ? entry.head + 1n
        : entry.head > received
        ? entry.head - received
        : 0n
      return unreceived + BigInt(entry.progress.inFlight)
    }

    for (const entry of entries.values()) {
      const { categories } = entry.runnable
      // The head, and the age of the oldest event past the checkpoint (read only while behind).
      yield* poll(
        entry,
        "source",
        Effect.gen(function*() {
          const head = yield* source.head(categories)
          const behind = distance(entry.checkpoint, Option.getOrUndefined(head))
          if (settings.mode !== "catch-up" || source.firstAfter === undefined) return { head, age: undefined }
          if (behind === 0n) return { head, age: 0 }
          const first = yield* source.firstAfter(categories, Option.fromNullable(entry.checkpoint))
          const now = yield* Clock.currentTimeMillis
          return { head, age: Option.match(first, { onNone: () => 0, onSome: (e) => Math.max(0, now - e.created.getTime()) }) }
        }),
        ({ age, head }) => {
          entry.head = Option.getOrUndefined(head)
          entry.headRead = true
          entry.oldestUnappliedAgeMs = age
        }
      )
      // The engine reports its committed checkpoint; until it has, ask the store.
      if (settings.mode === "catch-up") {
        yield* poll(
          entry,
          "store",
          Effect.suspend(() =>
            entry.progress?.checkpoint === undefined ? store.readCheckpoint(entry.id) : Effect.succeed(Option.none<bigint>())
          ),
          (committed) => {
            if (Option.isSome(committed) && (entry.checkpoint === undefined || committed.value > entry.checkpoint)) {
              entry.checkpoint = committed.value
            }
          }
        )
      }
      const name = entry.groupName
      const groupStatus = source.groupStatus
      if (name !== undefined && groupStatus !== undefined) {
        yield* poll(entry, "group", groupStatus(categories, name), (group) => {
          entry.group = Option.match(group, { onNone: () => undefined, onSome: (status) => ({ name, ...status }) })
        })
      }
    }

    const judge = (entry: Entry, now: number) =>
      Effect.gen(function*() {
        const { runnable } = entry
        entry.sourceError = entry.errors.size === 0
          ? undefined
          : [...entry.errors].map(([what, message]) => `${what}: ${message}`).join("; ")
        const behind = behindOf(entry) ?? 0n
        // Caught up since the last read of the oldest event's age: nothing is unapplied.
        if (behind === 0n && entry.oldestUnappliedAgeMs !== undefined) entry.oldestUnappliedAgeMs = 0
        const totals = yield* engineTotals(runnable.name)
        const verdict = entry.detector.observe({
          now,
          behind: behind > 0n,
          marks: [
            entry.checkpoint,
            entry.progress?.lastSettledAt,
            totals.processed + totals.skipped + totals.duplicates + totals.deadLettered
          ]
        })
        entry.stalled = verdict.stalled
        entry.stalledForMs = verdict.stalledForMs
        entry.unhealthy = verdict.unhealthy
        if (verdict.began) {
          entry.stalls++
          yield* Metric.increment(entry.tag(metrics.stalls))
          yield* Effect.logWarning(
            `${runnable.name}: stalled: ${behind} positions behind the head (${entry.head}) and not moving for ${verdict.stalledForMs} ms` +
              (entry.sourceError !== undefined ? ` (${entry.sourceError})` : "")
          )
        }
        if (verdict.ended) yield* Effect.logInfo(`${runnable.name}: moving again`)
        if (verdict.resubscribe && entry.running && entry.restart !== undefined) {
          entry.restarts++
          yield* Metric.increment(entry.tag(metrics.restarts))
          yield* Effect.logWarning(
            `${runnable.name}: restarting the run to resubscribe (restart ${verdict.resubscriptions} of this stall)` +
              (verdict.unhealthy ? "; still stalled after a restart: reported unhealthy" : "")
          )
          yield* Queue.offer(entry.restart, undefined)
        }
        yield* publish(entry)
      })

    /** The gauges, from what was last read and judged. */
    const publish = (entry: Entry) =>
      Effect.gen(function*() {
        const behind = behindOf(entry)
        yield* Metric.set(entry.tag(metrics.stalled), entry.stalled ? 1 : 0)
        if (behind !== undefined) yield* Metric.set(entry.tag(metrics.behind), Number(behind))
        if (entry.oldestUnappliedAgeMs !== undefined) {
          yield* Metric.set(entry.tag(metrics.oldestAge), behind === 0n ? 0 : entry.oldestUnappliedAgeMs)
        }
        if (entry.head !== undefined) yield* Metric.set(entry.tag(metrics.head), Number(entry.head))
        if (entry.checkpoint !== undefined) yield* Metric.set(entry.tag(metrics.checkpoint), Number(entry.checkpoint))
        if (entry.group !== undefined) {
          yield* Metric.set(entry.tag(metrics.outstanding), entry.group.outstanding)
          yield* Metric.set(entry.tag(metrics.parked), entry.group.parked)
        }
      })

    const check = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      for (const entry of entries.values()) yield* judge(entry, now)
    })

    yield* check.pipe(
      Effect.catchAllCause((cause) => Effect.logError("liveness check failed", cause)),
      Effect.zipRight(Effect.sleep(interval)),
      Effect.forever,
      Effect.forkScoped
    )

    const snapshot = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const states: Array<ProjectionState> = []
      for (const entry of entries.values()) {
        const totals = yield* engineTotals(entry.runnable.name)
        const behind = behindOf(entry)
        states.push({
          projection: entry.runnable.name,
          checkpointId: entry.id,
          mode: settings.mode,
          running: entry.running,
          checkpoint: entry.checkpoint,
          head: entry.head,
          behind,
          // Caught up: nothing is unapplied, whatever the last read of the age said.
          oldestUnappliedAgeMs: behind === 0n && entry.oldestUnappliedAgeMs !== undefined ? 0 : entry.oldestUnappliedAgeMs,
          stalled: entry.stalled,
          stalledForMs: entry.stalledForMs,
          unhealthy: entry.unhealthy,
          stalls: entry.stalls,
          restarts: entry.restarts,
          ...totals,
          inFlight: entry.progress?.inFlight,
          // 0: nothing settled yet
          lastSettledAgoMs: entry.progress === undefined || entry.progress.lastSettledAt === 0
            ? undefined
            : Math.max(0, now - entry.progress.lastSettledAt),
          group: entry.group,
          sourceError: entry.sourceError
        })
      }
      return states as ReadonlyArray<ProjectionState>
    })

    const verdict = (judgeOne: (entry: Entry) => string | undefined): Effect.Effect<Verdict> =>
      Effect.sync(() => {
        const projections = [...entries.values()].map((entry) => {
          const reason = judgeOne(entry)
          const behind = behindOf(entry)
          return reason === undefined
            ? { projection: entry.runnable.name, ok: true, behind }
            : { projection: entry.runnable.name, ok: false, reason, behind }
        })
        return { ok: projections.every((p) => p.ok), projections }
      })

    const health = verdict((entry) =>
      !entry.running
        ? "not running"
        : entry.unhealthy
        ? `stalled for ${entry.stalledForMs} ms, ${behindOf(entry)} positions behind the head, through ${entry.restarts} restart(s)` +
          (entry.sourceError !== undefined ? `; source: ${entry.sourceError}` : "")
        : undefined
    )

    const readiness = verdict((entry) =>
      !entry.running
        ? "not running"
        : behindOf(entry) === undefined
        ? "the head has not been read yet"
        : behindOf(entry)! > readyDistance
        ? `${behindOf(entry)} positions behind the head (ready within ${readyDistance})`
        : undefined
    )

    const refresh = Effect.forEach(entries.values(), publish, { discard: true })

    return { supervise, snapshot, health, readiness, check, refresh } satisfies Monitor
  })

/** A JSON value of a position: a number while exact, a decimal string beyond 2^53. @since 0.1.0 */
export const positionJson = (value: bigint | undefined): number | string | null =>
  value === undefined ? null : value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : String(value)

/**
 * A projection's state as JSON (positions as numbers while exact, times in milliseconds).
 *
 * @since 0.1.0
 */
export const stateJson = (state: ProjectionState) => ({
  projection: state.projection,
  checkpointId: state.checkpointId,
  mode: state.mode,
  running: state.running,
  checkpoint: positionJson(state.checkpoint),
  head: positionJson(state.head),
  behind: positionJson(state.behind),
  oldestUnappliedAgeMs: state.oldestUnappliedAgeMs ?? null,
  stalled: state.stalled,
  stalledForMs: state.stalledForMs,
  unhealthy: state.unhealthy,
  stalls: state.stalls,
  restarts: state.restarts,
  processed: state.processed,
  skipped: state.skipped,
  duplicates: state.duplicates,
  deadLettered: state.deadLettered,
  inFlight: state.inFlight ?? null,
  lastSettledAgoMs: state.lastSettledAgoMs ?? null,
  group: state.group ?? null,
  sourceError: state.sourceError ?? null
})

/** A verdict as JSON. @since 0.1.0 */
export const verdictJson = (verdict: Verdict) => ({
  ok: verdict.ok,
  projections: verdict.projections.map((p) => ({ ...p, behind: positionJson(p.behind) }))
})
