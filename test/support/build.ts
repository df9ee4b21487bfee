/**
 * Vitest global setup: the tests run what users run — the compiled package
 * (`dist/`, the `reconciler` bin) — so `dist/` is built first whenever a source
 * file is newer than the last build (`npm run build`; a no-op otherwise).
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"

const root = path.resolve(import.meta.dirname, "../..")

const newest = (dir: string): number =>
  fs.readdirSync(dir, { withFileTypes: true }).reduce((latest, entry) => {
    const full = path.join(dir, entry.name)
    return Math.max(latest, entry.isDirectory() ? newest(full) : fs.statSync(full).mtimeMs)
  }, 0)

export default function setup() {
  const built = path.join(root, "dist", ".tsbuildinfo")
  const lastBuild = fs.existsSync(built) ? fs.statSync(built).mtimeMs : -1
  const sources = Math.max(
    newest(path.join(root, "src")),
    ...["package.json", "tsconfig.json", "tsconfig.build.json"].map((f) => fs.statSync(path.join(root, f)).mtimeMs)
  )
  if (sources > lastBuild) {
    execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "inherit" })
    // tsc leaves its build info alone when no output changed: mark the build as current.
    const now = new Date()
    fs.utimesSync(built, now, now)
  }
}
