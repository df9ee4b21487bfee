/**
 * Child processes for end-to-end tests: the compiled `reconciler` bin run as an
 * operator runs it (the executable itself, its `#!/usr/bin/env node` line, no
 * wrapper), TypeScript scripts with `node --import tsx`; their output collected
 * line by line, waited on by what they print (never by sleeping), and killed in
 * the scope's finalizer whatever happens.
 */
import { type ChildProcess, spawn as spawnProcess } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { Data, Deferred, Duration, Effect, Schedule } from "effect"

export const root = path.resolve(import.meta.dirname, "../..")

/** The package's bin as `npm run build` leaves it (test/support/build.ts builds it before the tests). */
export const BIN = path.join(root, "dist", "bin", "reconciler.js")

export class ChildError extends Data.TaggedError("ChildError")<{ readonly message: string }> {}

export interface Exit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface Child {
  readonly process: ChildProcess
  /** Everything printed so far, stdout and stderr interleaved by line. */
  readonly output: () => string
  /** The first line (past or future) matching `pattern`; fails if the output ends first or after `timeout`. */
  readonly line: (pattern: RegExp, timeout?: Duration.DurationInput) => Effect.Effect<RegExpMatchArray, ChildError>
  /** The child's exit; fails after `timeout`. */
  readonly exit: (timeout?: Duration.DurationInput) => Effect.Effect<Exit, ChildError>
  readonly kill: (signal: NodeJS.Signals) => Effect.Effect<void>
}

/**
 * Spawns `script ...args` in `options.cwd` (default: the repository root): a
 * `.ts` script as `node --import tsx <script>`, anything else (the compiled bin)
 * as an executable. The finalizer SIGKILLs the child if it is still running and
 * waits for its exit.
 */
export const spawn = (
  script: string,
  args: ReadonlyArray<string>,
  env: Record<string, string | undefined> = {},
  options: { readonly cwd?: string; readonly color?: boolean } = {}
) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const [command, commandArgs] = script.endsWith(".ts")
        ? [process.execPath, ["--import", "tsx", script, ...args]]
        : [script, [...args]]
      const child = spawnProcess(command, commandArgs, {
        cwd: options.cwd ?? root,
        env: { ...process.env, ...(options.color ? {} : { NO_COLOR: "1" }), ...env },
        stdio: ["ignore", "pipe", "pipe"]
      })
      const lines: Array<string> = []
      const waiters = new Set<() => void>()
      const exited = Deferred.unsafeMake<Exit>(undefined as never)
      let exitValue: Exit | undefined
      const collect = (stream: NodeJS.ReadableStream) => {
        let partial = ""
        stream.setEncoding("utf8")
        stream.on("data", (chunk: string) => {
          partial += chunk
          const parts = partial.split("\n")
          partial = parts.pop()!
          lines.push(...parts)
          for (const wake of waiters) wake()
        })
      }
      collect(child.stdout!)
      collect(child.stderr!)
      // Output may go on after the exit: a grandchild (what npm or npx started) keeps the pipes open.
      let closed = false
      child.on("exit", (code, signal) => {
        exitValue = { code, signal }
        Deferred.unsafeDone(exited, Effect.succeed(exitValue))
      })
      child.on("close", () => {
        closed = true
        for (const wake of waiters) wake()
      })
      const output = () => lines.join("\n")
      const describe = () => `${script} ${args.join(" ")}\n--- output ---\n${output()}`

      const line: Child["line"] = (pattern, timeout = "30 seconds") =>
        Effect.async<RegExpMatchArray, ChildError>((resume) => {
          let from = 0
          const check = () => {
            for (; from < lines.length; from++) {
              const match = lines[from]!.match(pattern)
              if (match) return done(Effect.succeed(match))
            }
            if (closed) {
              done(Effect.fail(new ChildError({ message: `exited (${JSON.stringify(exitValue)}) before printing ${pattern}: ${describe()}` })))
            }
          }
          const done = (result: Effect.Effect<RegExpMatchArray, ChildError>) => {
            waiters.delete(check)
            resume(result)
          }
          waiters.add(check)
          check()
          return Effect.sync(() => waiters.delete(check))
        }).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new ChildError({ message: `no line matching ${pattern} within ${Duration.format(timeout)}: ${describe()}` })
          })
        )

      const exit: Child["exit"] = (timeout = "30 seconds") =>
        Deferred.await(exited).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new ChildError({ message: `did not exit within ${Duration.format(timeout)}: ${describe()}` })
          })
        )

      const kill = (signal: NodeJS.Signals) => Effect.sync(() => void (exitValue === undefined && child.kill(signal)))
      return { process: child, output, line, exit, kill, exited } as const
    }),
    (child) =>
      child.kill("SIGKILL").pipe(
        Effect.zipRight(Deferred.await(child.exited).pipe(Effect.timeout("10 seconds"), Effect.ignore))
      )
  ).pipe(Effect.map(({ exited: _, ...child }): Child => child))

/** Polls `check` every `interval` until it returns true, at most `attempts` times. */
export const until = <E, R>(
  what: string,
  check: Effect.Effect<boolean, E, R>,
  options: { readonly attempts?: number; readonly interval?: Duration.DurationInput } = {}
) =>
  check.pipe(
    Effect.filterOrFail((ok) => ok, () => new ChildError({ message: `gave up waiting for ${what}` })),
    Effect.retry({
      schedule: Schedule.spaced(options.interval ?? "50 millis"),
      times: options.attempts ?? 600,
      while: (e) => e instanceof ChildError
    }),
    Effect.asVoid
  )

/** The pids of `pid`'s descendants, from /proc (Linux). */
export const descendants = (pid: number): ReadonlyArray<number> => {
  const children = new Map<number, Array<number>>()
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      // pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ")".
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8")
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1])
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)])
    } catch {
      // gone meanwhile
    }
  }
  const out: Array<number> = []
  const visit = (p: number) => {
    for (const child of children.get(p) ?? []) {
      out.push(child)
      visit(child)
    }
  }
  visit(pid)
  return out
}

/** True while a process with this pid exists (and is not a zombie). */
export const alive = (pid: number): boolean => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z"
  } catch {
    return false
  }
}

/** No endpoints from the developer's environment leak into a command's run. */
export const cleanEnv = {
  EVENTSTORE_CONNECTION_STRING: undefined,
  MONGODB_URI: undefined,
  MONGODB_DATABASE: undefined,
  RECONCILER_EMBEDDED: undefined
}

/** Runs the package's bin to its end (at most 50 s): its exit code, its output, how long it took. */
export const runBin = (args: ReadonlyArray<string>, env: Record<string, string | undefined> = {}) =>
  Effect.gen(function*() {
    const started = Date.now()
    const child = yield* spawn(BIN, args, { ...cleanEnv, ...env })
    const exit = yield* child.exit("50 seconds")
    return { code: exit.code, output: child.output(), took: Date.now() - started }
  })
