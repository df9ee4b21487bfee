/**
 * `npm start -- --events N` against the same command at a baseline commit, in
 * one run, alternating (so that the machine's load falls on both alike).
 *
 * The baseline's tree is exported with `git archive` into a temporary
 * directory that borrows this checkout's `node_modules` (the baseline's
 * dependencies are a subset at the same versions). Both run with the embedded
 * servers (the connection-string variables are cleared). Reported per side:
 * the wall time of the whole command (what a user waits for), the demo's own
 * figure (append until caught up, as it prints it), and for this tree the
 * demo's breakdown (start-up, append, catch-up, verify).
 *
 *   npm run bench:demo -- [--events 20000] [--reps 3] [--baseline be5a4a7]
 */
import { execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync, symlinkSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const argv = process.argv.slice(2)
const arg = (name: string, fallback: string): string => {
  const at = argv.indexOf(`--${name}`)
  return at >= 0 && argv[at + 1] !== undefined ? argv[at + 1]! : fallback
}
const events = Number(arg("events", "20000"))
const reps = Number(arg("reps", "3"))
const baseline = arg("baseline", "be5a4a7")

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

interface Run {
  readonly wall: number
  readonly reported: number
  readonly breakdown: string | undefined
}

/** `npm start -- --events N` in `cwd`: wall seconds, the demo's own seconds, its breakdown line. */
const run = (cwd: string): Promise<Run> =>
  new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env }
    delete env.EVENTSTORE_CONNECTION_STRING
    delete env.MONGODB_URI
    delete env.MONGODB_DATABASE
    const started = performance.now()
    const child = spawn("npm", ["start", "--", "--events", String(events)], { cwd, env, stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.on("error", reject)
    child.on("exit", (code) => {
      const wall = (performance.now() - started) / 1000
      const verified = output.match(new RegExp(`^verified ${events} events, \\d+ documents, 0 mismatches \\(([\\d.]+) s`, "m"))
      if (code !== 0 || verified === null) return reject(new Error(`npm start in ${cwd} exited ${code}:\n${output}`))
      resolve({ wall, reported: Number(verified[1]), breakdown: output.match(/^time: (.*)$/m)?.[1] })
    })
  })

const main = async () => {
  const commit = execFileSync("git", ["rev-parse", "--short", baseline], { cwd: root }).toString().trim()
  const head = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root }).toString().trim()
  const dirty = execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], { cwd: root }).toString().trim() !== ""
  const dir = mkdtempSync(path.join(os.tmpdir(), `demo-${commit}-`))
  try {
    execFileSync("sh", ["-c", `git archive ${commit} | tar -x -C ${JSON.stringify(dir)}`], { cwd: root })
    symlinkSync(path.join(root, "node_modules"), path.join(dir, "node_modules"))
    console.log(
      `npm start -- --events ${events}: ${head}${dirty ? " (with uncommitted changes)" : ""} against ${commit}, ` +
        `${reps} alternating runs (Node ${process.version}, load ${os.loadavg().map((l) => l.toFixed(1)).join(" ")})`
    )
    const base: Array<Run> = []
    const ours: Array<Run> = []
    for (let rep = 0; rep < reps; rep++) {
      base.push(await run(dir))
      ours.push(await run(root))
      const b = base[rep]!
      const o = ours[rep]!
      console.log(
        `  run ${rep + 1}: ${commit} ${b.wall.toFixed(1)} s (demo ${b.reported.toFixed(1)} s), ` +
          `${head} ${o.wall.toFixed(1)} s (demo ${o.reported.toFixed(1)} s; ${o.breakdown ?? "no breakdown"})`
      )
    }
    const row = (name: string, runs: ReadonlyArray<Run>) => ({
      tree: name,
      "wall s (median)": Number(median(runs.map((r) => r.wall)).toFixed(1)),
      "demo s (median)": Number(median(runs.map((r) => r.reported)).toFixed(1))
    })
    console.table([row(commit, base), row(head, ours)])
    const wall = median(base.map((r) => r.wall)) / median(ours.map((r) => r.wall))
    const demo = median(base.map((r) => r.reported)) / median(ours.map((r) => r.reported))
    console.log(`speed-up: ${wall.toFixed(2)}× wall, ${demo.toFixed(2)}× the demo's own figure (target ≥ 4×)`)
    console.log(`load after: ${os.loadavg().map((l) => l.toFixed(1)).join(" ")}`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
