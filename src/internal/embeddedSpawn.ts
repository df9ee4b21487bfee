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

/** A forked child, and whether it has loaded (it says so before it reads its start message). */
export interface Forked {
  readonly child: ChildProcess
  readonly loaded: () => boolean
}

/** Forks the servers' child; it waits for its start message. */
export const spawn = (): Forked => {
  const { execArgv, file } = entry()
  const child = fork(file, [], { execArgv: [...execArgv], stdio: ["ignore", "inherit", "inherit", "ipc"], serialization: "json" })
  let loaded = false
  const onMessage = (message: { readonly type?: unknown }) => {
    if (message?.type !== "loaded") return
    loaded = true
    child.off("message", onMessage)
  }
  child.on("message", onMessage)
  return { child, loaded: () => loaded }
}

let spare: Forked | undefined

/**
 * Forks the servers' child now, to be taken by the next `EmbeddedProcess.make`
 * of this process: a program calls it first thing, and the child's loading
 * overlaps its own. A spare nobody takes exits with this process. Its pid.
 */
export const prestart = (): number | undefined => {
  if (spare === undefined) spare = spawn()
  return spare.child.pid
}

/** The early-forked child, if one is waiting and alive (taken: the next call gets none). */
export const takeSpare = (): Forked | undefined => {
  const taken = spare
  spare = undefined
  if (taken === undefined || taken.child.exitCode !== null || taken.child.signalCode !== null) return undefined
  return taken
}
