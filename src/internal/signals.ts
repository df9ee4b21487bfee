/**
 * How the `reconciler` process runs its program and stops: the first SIGINT or
 * SIGTERM interrupts the program (the engine drains: in-flight batches finish,
 * the checkpoint is committed, the rest is nacked) and the process exits when
 * it is done; a second signal during the drain stops at once. When npm started
 * the process (`npm run`, `npx`, `npm start`), npm's shell or npx may die from
 * a signal without passing it on: the parent's death starts the drain too.
 */
import type * as Exit from "effect/Exit"
import * as Effect from "effect/Effect"
import * as os from "node:os"

/**
 * Two deliveries of one stop request arrive this close: a terminal's Ctrl-C
 * reaches the whole process group and npm relays it once more; a service manager
 * signals every process of the unit and npm relays that too.
 */
const SAME_REQUEST_MS = 1_000
/** How often the parent is looked at (only under npm). */
const PARENT_POLL_MS = 200

export interface RunOptions {
  /** The program's name, at the start of every line written. */
  readonly name: string
  /** The exit code for how the program ended; `stopped` tells that a stop was requested. */
  readonly exitCode: (exit: Exit.Exit<unknown, unknown>, stopped: boolean) => number
  /** Watch for the parent's death (default: when npm started the process). */
  readonly watchParent?: boolean | undefined
}

/** True when npm (`npm run`, `npm start`, `npx`, `npm exec`) started this process. */
export const startedByNpm = (): boolean => process.env.npm_command !== undefined

/**
 * Runs `program` as the process's main program and exits with
 * `options.exitCode` when it ends. Never returns control to the caller.
 */
export const runMain = (program: Effect.Effect<unknown, unknown>, options: RunOptions): void => {
  // A closed stdout or stderr (the reader went away) must not turn a drain into a crash.
  for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {})
  const say = (line: string) => void process.stderr.write(`${options.name}: ${line}\n`)

  const fiber = Effect.runFork(program)
  // Keeps the process alive while the program waits on nothing Node can see.
  const keepAlive = setInterval(() => {}, 2 ** 31 - 1)
  let stopRequested: number | undefined

  const stop = (reason: string) => {
    stopRequested = Date.now()
    say(`${reason}: stopping — draining in-flight work and committing checkpoints (send the signal again to stop at once)`)
    fiber.unsafeInterruptAsFork(fiber.id())
  }
  let firstSignal: NodeJS.Signals | undefined
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopRequested === undefined) {
      firstSignal = signal
      return stop(signal)
    }
    // The same request delivered twice (or the signal that killed the parent, just after its death was seen).
    if ((firstSignal === undefined || signal === firstSignal) && Date.now() - stopRequested < SAME_REQUEST_MS) return
    const code = 128 + (os.constants.signals[signal] ?? 15)
    say(
      `${signal} during the drain: stopping at once without finishing it (exit ${code}); ` +
        `what was not committed is delivered again on the next start, nothing is lost`
    )
    process.exit(code)
  }
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)

  const parent = process.ppid
  const watch = (options.watchParent ?? startedByNpm())
    ? setInterval(() => {
      if (process.ppid !== parent && stopRequested === undefined) stop(`parent process ${parent} exited`)
    }, PARENT_POLL_MS).unref()
    : undefined

  fiber.addObserver((exit) => {
    clearInterval(keepAlive)
    if (watch !== undefined) clearInterval(watch)
    process.exit(options.exitCode(exit, stopRequested !== undefined))
  })
}
