/**
 * Forking the embedded servers' child process ({@link ./embeddedChild.ts}):
 * which entry it runs, and an early fork that a program can start before it
 * loads its own modules. Node built-ins only, so that importing this module
 * costs nothing: the child then loads at the same time as its parent.
 *
 * The entry: the compiled `dist/internal/embeddedChild.js` when `dist/` is
 * current (built after every file of `src/` last changed: what `npm install`
 * leaves), which loads 3–4× faster than the TypeScript source through the tsx
 * loader; the source under tsx otherwise (an edited checkout runs what it says).
 */
import { fork } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import type { Reply, Start } from "./embeddedChild.js"

/** The child's entry and the node flags it needs. */
export interface Entry {
  readonly file: string
  readonly execArgv: ReadonlyArray<string>
}

const newest = (dir: string): number =>
  fs.readdirSync(dir, { withFileTypes: true }).reduce((latest, entry) => {
    const full = path.join(dir, entry.name)
    return Math.max(latest, entry.isDirectory() ? newest(full) : fs.statSync(full).mtimeMs)
  }, 0)

/**
 * The compiled twin of a TypeScript source tree's `internal/embeddedChild.ts`,
 * if `dist/` was built after every source (and the build configuration) last
 * changed — the rule the test setup uses to decide whether to rebuild.
 */
const compiledChild = (srcDir: string): string | undefined => {
  try {
    const root = path.dirname(srcDir)
    const file = path.join(root, "dist", "internal", "embeddedChild.js")
    const built = fs.statSync(path.join(root, "dist", ".tsbuildinfo")).mtimeMs
    const sources = Math.max(
      newest(srcDir),
      ...["package.json", "tsconfig.json", "tsconfig.build.json"].map((f) => fs.statSync(path.join(root, f)).mtimeMs)
    )
    return sources <= built && fs.existsSync(file) ? file : undefined
  } catch {
    return undefined // no dist/ (or no build info): the source it is
  }
}

/** The node flags that load the tsx loader (for a child that runs TypeScript sources). */
export const tsxExecArgv = (): ReadonlyArray<string> => ["--import", pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href]

/** The child's entry and the node flags it needs, for this module's own extension. */
export const entry = (): Entry => {
  const self = fileURLToPath(import.meta.url)
  const ext = path.extname(self)
  const here = path.dirname(self)
  if (ext !== ".ts") return { file: path.join(here, `embeddedChild${ext}`), execArgv: [] }
  const compiled = process.env.RECONCILER_EMBEDDED_FROM_SOURCE === "1" ? undefined : compiledChild(path.dirname(here))
  if (compiled !== undefined) return { file: compiled, execArgv: [] }
  // TypeScript sources: the child needs the tsx loader whatever launched us.
  return { file: path.join(here, "embeddedChild.ts"), execArgv: tsxExecArgv() }
}

/** What the child is asked to start (its first message). */
export type StartRequest = Omit<Start, "type">

/** A forked servers' child. */
export interface Forked {
  readonly child: ChildProcess
  /** Asks it to start these servers (sent once it has loaded); only the first call counts. */
  readonly start: (request: StartRequest) => void
  /** What it was asked to start (JSON), if it was. */
  readonly started: () => string | undefined
  /** Calls back with its answer to the start (`ready` or `failed`), at once if it has answered. */
  readonly onAnswer: (callback: (reply: Exclude<Reply, { type: "loaded" }>) => void) => void
}

/** The JSON a start request is compared by (two requests for the same servers are equal). */
export const startKey = (request: StartRequest): string =>
  JSON.stringify({ eventStore: request.eventStore, mongo: request.mongo })

/** Forks the servers' child; it starts what {@link Forked.start} asks for. */
export const spawn = (): Forked => {
  const { execArgv, file } = entry()
  const child = fork(file, [], { execArgv: [...execArgv], stdio: ["ignore", "inherit", "inherit", "ipc"], serialization: "json" })
  let loaded = false
  let request: StartRequest | undefined
  let answer: Exclude<Reply, { type: "loaded" }> | undefined
  const waiting: Array<(reply: Exclude<Reply, { type: "loaded" }>) => void> = []
  // The start is sent once the child listens for it (a message sent before would be lost).
  const send = () => void child.send({ type: "start", ...request! } satisfies Start)
  const onMessage = (reply: Reply) => {
    if (reply.type === "loaded") {
      loaded = true
      if (request !== undefined) send()
      return
    }
    answer = reply
    child.off("message", onMessage)
    for (const callback of waiting.splice(0)) callback(reply)
  }
  child.on("message", onMessage)
  return {
    child,
    start: (r) => {
      if (request !== undefined) return
      request = r
      if (loaded) send()
    },
    started: () => (request === undefined ? undefined : startKey(request)),
    onAnswer: (callback) => (answer !== undefined ? callback(answer) : void waiting.push(callback))
  }
}

let spare: Forked | undefined

/**
 * Forks the servers' child now, to be taken by the next `EmbeddedProcess.make`
 * of this process: a program calls it first thing, and the child's loading
 * overlaps its own. With `request`, the child also starts those servers as
 * soon as it has loaded; `make` takes it only if it asks for the same servers
 * (else it stops it and forks another). A spare nobody takes exits with this
 * process. Its pid.
 */
export const prestart = (request?: StartRequest): number | undefined => {
  if (spare === undefined) spare = spawn()
  if (request !== undefined) spare.start(request)
  return spare.child.pid
}

/** The early-forked child's answer to its start: where its servers listen (undefined: none waiting, or failed). */
export const spareReady = (): Promise<Extract<Reply, { type: "ready" }> | undefined> =>
  new Promise((resolve) => {
    if (spare === undefined || spare.started() === undefined) return resolve(undefined)
    spare.onAnswer((reply) => resolve(reply.type === "ready" ? reply : undefined))
  })

/** The early-forked child, if one is waiting and alive (taken: the next call gets none). */
export const takeSpare = (): Forked | undefined => {
  const taken = spare
  spare = undefined
  if (taken === undefined || taken.child.exitCode !== null || taken.child.signalCode !== null) return undefined
  return taken
}
