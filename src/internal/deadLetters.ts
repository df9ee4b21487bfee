/**
 * The dead-letter lifecycle as the command line runs it: `list`, `show ID`,
 * `retry` and `skip`, by letter id, by projection, or all. Every letter ends
 * applied (retry, after a fix) or skipped (by decision, recorded with who and
 * why); the document it quarantines is released with its held events applied
 * in order.
 */
import * as os from "node:os"
import { Console, Data, Effect, Schedule } from "effect"
import { EventSource } from "../EventSource.js"
import type { Runnable } from "../Projection.js"
import { checkpointId } from "../Projection.js"
import type { DeadLetter } from "../ReadModelStore.js"
import { ReadModelStore } from "../ReadModelStore.js"
import type { Mode } from "./fold.js"
import type { Decision, Release } from "./quarantine.js"
import { resolve } from "./quarantine.js"

/** A letter id that no projection of the module has. */
export class LetterNotFound extends Data.TaggedError("LetterNotFound")<{ readonly message: string; readonly ids: ReadonlyArray<string> }> {}

/** A command that would act on every letter without being told so. */
export class NoLettersNamed extends Data.TaggedError("NoLettersNamed")<{ readonly message: string }> {}

/** A letter with the projection or handler it belongs to. */
export interface Addressed {
  readonly runnable: Runnable
  readonly letter: DeadLetter
}

/** The open letters of the runnables, oldest position first per projection. */
export const open = (runnables: ReadonlyArray<Runnable>) =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const found: Array<Addressed> = []
    for (const runnable of runnables) {
      const letters = [...(yield* store.deadLetters(checkpointId(runnable)))]
        .sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0))
      for (const letter of letters) found.push({ runnable, letter })
    }
    return found
  })

/** What a command acts on: the named letters, or every letter of the selected projections when `all` is set. */
export interface Target {
  readonly ids: ReadonlyArray<string>
  readonly all: boolean
}

/** The letters a target names; an unknown id fails, naming nothing fails unless `all`. */
export const select = (runnables: ReadonlyArray<Runnable>, target: Target) =>
  Effect.gen(function*() {
    const letters = yield* open(runnables)
    if (target.ids.length === 0) {
      if (!target.all) {
        return yield* new NoLettersNamed({
          message: "name the letters (their ids, see `dead-letters list`), or pass --all (with --projection to narrow it)"
        })
      }
      return letters
    }
    const unknown = target.ids.filter((id) => !letters.some((l) => l.letter.id === id))
    if (unknown.length > 0) {
      return yield* new LetterNotFound({ message: `no open dead letter with id ${unknown.join(", ")}`, ids: unknown })
    }
    return letters.filter((l) => target.ids.includes(l.letter.id))
  })

/** Who runs the command, for the record: `--by`, else the OS user. */
export const currentUser = (by: string | undefined): string => {
  if (by !== undefined && by.length > 0) return by
  try {
    return os.userInfo().username
  } catch {
    return process.env.USER ?? "unknown"
  }
}

const firstLine = (text: string) => text.split("\n")[0]!

/** The `list` table's rows. */
export const rows = (letters: ReadonlyArray<Addressed>): Array<Array<string>> =>
  letters.map(({ letter }) => [
    letter.id,
    letter.projection,
    letter.document ?? "(unknown)",
    `${letter.streamId}@${letter.revision}`,
    letter.eventType,
    letter.eventId,
    letter.at.toISOString(),
    letter.reason // whole: the table folds it, the line saying what was wrong included
  ])

export const listHeader = ["id", "projection", "document", "stream@revision", "type", "event", "at", "reason"]

/** The bytes as text when they are UTF-8, else as base64. */
const printable = (bytes: Uint8Array): string => {
  if (bytes.length === 0) return "(empty)"
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes)
  } catch {
    return `base64:${Buffer.from(bytes).toString("base64")}`
  }
}

/** Everything about one letter, and the events its document holds behind it. */
export const show = (addressed: Addressed) =>
  Effect.gen(function*() {
    const store = yield* ReadModelStore
    const { letter } = addressed
    const held = letter.document === undefined ? [] : yield* store.heldEvents(letter.projection, letter.document)
    const lines = [
      `id:           ${letter.id}`,
      `projection:   ${letter.projection}`,
      `document:     ${letter.document ?? "(unknown: the event did not decode or its key failed)"}`,
      `event:        ${letter.eventType} ${letter.eventId}`,
      `position:     ${letter.streamId}@${letter.revision} (subscription position ${letter.position})`,
      `at:           ${letter.at.toISOString()}`,
      `reason:       ${letter.reason}`,
      `data:         ${printable(letter.data)}`,
      `metadata:     ${printable(letter.metadata)}`,
      `held events:  ${held.length}`,
      ...held.map((e) => `  ${e.streamId}@${e.revision} ${e.eventType} ${e.eventId}`)
    ]
    return lines.join("\n")
  })

/** One line per outcome; `ok` is false when the letter did not end or its document is blocked again. */
export const describeRelease = (release: Release): { readonly line: string; readonly ok: boolean } => {
  const { letter } = release
  const at = `${letter.id} (${letter.projection}, ${letter.document ?? "unknown document"}, ${letter.streamId}@${letter.revision})`
  switch (release._tag) {
    case "Released":
      return { line: `${at}: released, ${release.applied} event(s) applied`, ok: true }
    case "Requarantined":
      return {
        line: `${at}: ended, ${release.applied} event(s) applied; ${release.next.document} quarantined again at ` +
          `${release.next.streamId}@${release.next.revision} (letter ${release.next.id}): ${firstLine(release.next.reason)}`,
        ok: false
      }
    case "FailedAgain":
      return { line: `${at}: failed again, the letter stays: ${firstLine(release.reason)}`, ok: false }
    case "Late":
      return {
        line: `${at}: not applied: ${release.documents.join(", ")} moved past it meanwhile (skip it, or rebuild)`,
        ok: false
      }
  }
}

const transientRetry = Schedule.exponential("100 millis").pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(5)))

/**
 * Where the projections run: the mode decides which markers tell an event
 * applied; in persistent mode the consumer group (default: the projection's
 * `name@version`) holds the parked copies of the letters' events.
 */
export interface Placement {
  readonly mode: Mode
  readonly group?: string | undefined
}

/**
 * Retries or skips the letters, in position order; returns their outcomes. A
 * transient store error runs that letter's release again (a release is
 * idempotent: the markers pass what it applied already).
 */
export const resolveAll = (letters: ReadonlyArray<Addressed>, decision: Decision, mode: Mode = "catch-up") =>
  Effect.forEach(letters, ({ letter, runnable }) =>
    resolve(runnable, letter, decision, { mode }).pipe(Effect.retry({ schedule: transientRetry, while: (error) => error.transient })))

/**
 * Persistent mode: replays the parked messages of the groups of `runnables`.
 * The parked copies of letters that ended come back to the running engines,
 * which acknowledge them as duplicates (never applied twice); copies of letters
 * still open are parked again. Returns one line per group; a failed replay is
 * reported, not fatal: the letters ended in the store whatever the group does.
 */
export const replayParked = (runnables: ReadonlyArray<Runnable>, group: string | undefined) =>
  Effect.gen(function*() {
    const source = yield* EventSource
    const lines: Array<string> = []
    if (source.replayParked === undefined) return lines
    for (const runnable of runnables) {
      const name = group ?? checkpointId(runnable)
      const outcome = yield* Effect.either(source.replayParked(runnable.categories, name))
      lines.push(
        outcome._tag === "Right"
          ? `parked messages of group ${name} replayed (copies of ended letters are acknowledged, the others parked again)`
          : `warning: replaying the parked messages of group ${name} failed (${outcome.left.message}); ` +
            "the letters ended all the same, the parked copies stay until parked messages are replayed"
      )
    }
    return lines
  })

/**
 * Runs `retry` or `skip` and prints one line per letter; sets exit code 1 when
 * a letter did not end or its document is quarantined again.
 */
export const run = (
  runnables: ReadonlyArray<Runnable>,
  target: Target,
  decision: Decision,
  placement: Placement = { mode: "catch-up" }
) =>
  Effect.gen(function*() {
    const letters = yield* select(runnables, target)
    const outcomes = yield* resolveAll(letters, decision, placement.mode)
    let failures = 0
    for (const outcome of outcomes) {
      const { line, ok } = describeRelease(outcome)
      if (!ok) failures++
      yield* Console.log(line)
    }
    const verb = decision.action === "retried" ? "retried" : "skipped"
    yield* Console.log(`${outcomes.length - failures} of ${outcomes.length} letter(s) ${verb} and released`)
    if (placement.mode === "persistent" && outcomes.length > 0) {
      const touched = runnables.filter((r) => letters.some((l) => l.runnable === r))
      for (const line of yield* replayParked(touched, placement.group)) yield* Console.log(line)
    }
    if (failures > 0) yield* Effect.sync(() => (process.exitCode = 1))
  })

/** The quarantined documents of each projection and the event that blocks each, for `status`. */
export const quarantineLines = (runnables: ReadonlyArray<Runnable>) =>
  Effect.map(open(runnables), (letters) =>
    letters.map(({ letter }) =>
      letter.document === undefined
        ? `${letter.projection}: event ${letter.streamId}@${letter.revision} (${letter.eventType}) dead-lettered ` +
          `[${letter.id}]: ${firstLine(letter.reason)}`
        : `${letter.projection}: ${letter.document} quarantined at ${letter.streamId}@${letter.revision} ` +
          `(${letter.eventType}) [${letter.id}]: ${firstLine(letter.reason)}`
    ))
