/**
 * The package as a user gets it: `npm pack`, the tarball installed into a fresh
 * app of its own (no tsx, no dev dependencies; offline from the npm cache where
 * it can), then
 *
 * - the README's smallest app in plain JavaScript runs a projection on the
 *   in-memory ports; `require()` works too;
 * - the README's TypeScript app type-checks with `tsc --init` defaults and a
 *   current `@types/node`, and the package's declarations are clean under it;
 * - the installed bin: `--help` (plain, fast, no driver or server loaded), a
 *   `.ts` module without tsx (a message saying what to do), `reconciler embedded`,
 *   `reconciler run` against it, SIGTERM to the bin's own process mid-stream
 *   (exit 0, checkpoint committed, nothing of its process tree left), and a
 *   restart converging to the reference fold.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll } from "vitest"
import { alive, descendants, root, spawn, until } from "./support/child.js"
import { ledgerViews, referenceFold } from "./support/e2e.js"

const run = promisify(execFile)
/** A current @types/node (pinned, so the test does not change under us). */
const TYPES_NODE = "26.6.11"
/** What the app depends on, as the README's install line says. */
const versions = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")) as {
  devDependencies: Record<string, string>
  dependencies: Record<string, string>
}

/** The environment of npm and tsc inside the app: nothing inherited from the npm that may be running the tests. */
const cleanEnv = () =>
  Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name))) as NodeJS.ProcessEnv

let work: string
let app: string
let tarball: { readonly file: string; readonly size: number; readonly unpackedSize: number; readonly files: ReadonlyArray<string> }

/** The README's code blocks marked `<!-- package-test: NAME -->`, by name. */
const readmeFiles = (): Map<string, string> => {
  const readme = fs.readFileSync(path.join(root, "README.md"), "utf8")
  const files = new Map<string, string>()
  for (const match of readme.matchAll(/<!-- package-test: (\S+) -->\n```\w+\n([\s\S]*?)\n```/g)) {
    files.set(match[1]!, match[2]! + "\n")
  }
  return files
}

beforeAll(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), "reconciler-package-"))
  app = path.join(work, "app")
  fs.mkdirSync(app)
  // dist/ is fresh (test/support/build.ts): pack it as `npm publish` would, without building again.
  const { stdout } = await run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", work], {
    cwd: root,
    env: cleanEnv()
  })
  const [packed] = JSON.parse(stdout) as Array<{ filename: string; size: number; unpackedSize: number; files: Array<{ path: string }> }>
  tarball = {
    file: path.join(work, packed!.filename),
    size: packed!.size,
    unpackedSize: packed!.unpackedSize,
    files: packed!.files.map((f) => f.path)
  }
  fs.writeFileSync(
    path.join(app, "package.json"),
    JSON.stringify({
      name: "consumer",
      version: "1.0.0",
      private: true,
      type: "module",
      dependencies: {
        "effect-reconciler": `file:${tarball.file}`,
        effect: versions.devDependencies.effect,
        "@eventstore/db-client": versions.devDependencies["@eventstore/db-client"],
        "@effect/platform-node": versions.dependencies["@effect/platform-node"],
        "@types/node": TYPES_NODE
      }
    }, null, 2)
  )
  for (const [name, text] of readmeFiles()) fs.writeFileSync(path.join(app, name), text)
  await run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: app, env: cleanEnv() })
}, 300_000)

afterAll(() => {
  if (work !== undefined) fs.rmSync(work, { recursive: true, force: true })
})

const installed = (...parts: ReadonlyArray<string>) => path.join(app, "node_modules", ...parts)
const bin = () => installed(".bin", "reconciler")

/** Runs `node <args>` in the app; resolves with its output and exit code. */
const node = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) =>
  Effect.promise(() =>
    run(process.execPath, [...args], { cwd: app, env: { ...cleanEnv(), ...env } }).then(
      ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
      (error: { code: number; stdout: string; stderr: string }) => ({ code: error.code, stdout: error.stdout, stderr: error.stderr })
    )
  )

describe("the packed package, installed into an app of its own", () => {
  it("ships the compiled package and its sources, not the repository", () => {
    const has = (file: string) => tarball.files.includes(file)
    for (const file of ["dist/index.js", "dist/index.d.ts", "dist/index.js.map", "dist/embedded.js", "dist/bin/reconciler.js", "src/index.ts"]) {
      expect(has(file), file).toBe(true)
    }
    const tops = new Set(tarball.files.map((f) => f.split("/")[0]))
    for (const absent of ["test", "bench", ".ci", "examples", "node_modules", "tsconfig.json", "vitest.config.ts"]) {
      expect(tops.has(absent), absent).toBe(false)
    }
    expect(has("dist/.tsbuildinfo")).toBe(false)
    // one compiled module per source module
    for (const source of tarball.files.filter((f) => /^src\/.*\.ts$/.test(f))) {
      expect(has(source.replace(/^src\//, "dist/").replace(/\.ts$/, ".js")), source).toBe(true)
    }
    // the installed app got no tsx, no test tooling, no compiler from us
    for (const tool of ["tsx", "typescript", "vitest", "@effect/vitest"]) expect(fs.existsSync(installed(tool)), tool).toBe(false)
    console.log(
      `[package] tarball ${(tarball.size / 1024).toFixed(0)} kB, unpacked ${(tarball.unpackedSize / 1024).toFixed(0)} kB, ` +
        `${tarball.files.length} files`
    )
  })

  it.effect("the README's plain JavaScript app runs a projection on the in-memory ports; require() works too", () =>
    Effect.gen(function*() {
      const tried = yield* node(["try.js"])
      expect(tried.stderr).toBe("")
      expect(tried.stdout.trim()).toBe(JSON.stringify({ "1": { balance: 15 } }))
      // Node ≥ 20.19 loads the ES modules synchronously for require().
      fs.writeFileSync(path.join(app, "required.cjs"), `const { Projection, App } = require("effect-reconciler")\nconsole.log(typeof Projection.make, typeof App.run)\n`)
      const required = yield* node(["--no-warnings", "required.cjs"])
      expect(required.stdout.trim()).toBe("function function")
      // the embedded servers have their own entry point
      const embedded = yield* node(["--input-type=module", "-e", `const m = await import("effect-reconciler/embedded"); console.log(typeof m.EventStoreServer.make, typeof m.MongoServer.make)`])
      expect(embedded.stdout.trim()).toBe("function function")
    }))

  it.effect("the test kit from effect-reconciler/testing runs a spec and a law check in plain JavaScript, and catches a wrong expectation", () =>
    Effect.gen(function*() {
      fs.writeFileSync(
        path.join(app, "kit.js"),
        [
          `import { Effect } from "effect"`,
          `import { ProjectionLaws, ProjectionSpec } from "effect-reconciler/testing"`,
          `import { balances } from "./projections.js"`,
          `const deposit = (amount) => ({ stream: "account-1", type: "Deposited", data: { account: "1", amount } })`,
          `const spec = (expected) => ProjectionSpec.for(balances).given(deposit(10)).when(deposit(5)).then(expected)`,
          `await Effect.runPromise(spec({ "1": { balance: 15 } }))`,
          `await Effect.runPromise(ProjectionLaws.check(balances, { numRuns: 10 }))`,
          `const wrong = await Effect.runPromise(Effect.either(spec({ "1": { balance: 16 } })))`,
          `console.log(JSON.stringify({ wrong: wrong._tag, tag: wrong.left?._tag }))`
        ].join("\n") + "\n"
      )
      const kit = yield* node(["kit.js"])
      expect(kit.code, kit.stderr).toBe(0)
      expect(kit.stdout.trim().split("\n").at(-1)).toBe(JSON.stringify({ wrong: "Left", tag: "ProjectionSpecFailed" }))
    }), { timeout: 120_000 })

  it.effect("the README's TypeScript app type-checks with tsc --init defaults and a current @types/node", () =>
    Effect.gen(function*() {
      const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")
      yield* node([tsc, "--init"])
      // What tsc --init's own comment asks for when the code uses Node: its types.
      const config = fs.readFileSync(path.join(app, "tsconfig.json"), "utf8").replace(/"types": \[\]/, `"types": ["node"]`)
      expect(config).toContain(`"types": ["node"]`)
      fs.writeFileSync(path.join(app, "tsconfig.json"), config)
      expect(fs.readFileSync(installed("@types", "node", "package.json"), "utf8")).toContain(`"version": "${TYPES_NODE}"`)
      const files = ["projections.ts", "service.ts"]
      const checked = yield* node([tsc, "--noEmit", "-p", "tsconfig.json"])
      expect(checked.stdout + checked.stderr, "tsc --init defaults").toBe("")
      // Also with the declarations checked (skipLibCheck off): nothing of ours may fail.
      const strict = yield* node([tsc, "--noEmit", "-p", "tsconfig.json", "--skipLibCheck", "false"])
      const ours = (strict.stdout + strict.stderr).split("\n").filter((line) => line.includes("effect-reconciler/"))
      expect(ours).toEqual([])
      for (const file of files) expect(fs.existsSync(path.join(app, file))).toBe(true)
    }), { timeout: 120_000 })

  it.scopedLive("the installed bin: --help loads no driver, a .ts module without tsx says what to do", () =>
    Effect.gen(function*() {
      // Which modules --help loads, traced by a loader hook in the same process.
      fs.writeFileSync(path.join(work, "trace-hooks.mjs"), `export async function load(url, context, next) { if (url.startsWith("file:")) process.stderr.write("loaded " + url + "\\n"); return next(url, context) }\n`)
      fs.writeFileSync(path.join(work, "trace.mjs"), `import { register } from "node:module"; register(${JSON.stringify("file://" + path.join(work, "trace-hooks.mjs"))})\n`)
      const traced = yield* node(["--import", path.join(work, "trace.mjs"), bin(), "--help"])
      expect(traced.code).toBe(0)
      const loaded = traced.stderr.split("\n").filter((l) => l.startsWith("loaded "))
      expect(loaded.some((l) => l.includes("effect-reconciler/dist/bin/reconciler.js"))).toBe(true)
      for (const heavy of ["/mongodb/", "/@grpc/", "/@eventstore/", "/mingo/", "/bson/", "effect-reconciler/dist/App.js", "effect-reconciler/dist/embedded/"]) {
        expect(loaded.filter((l) => l.includes(heavy)), heavy).toEqual([])
      }

      // Wall time of the bin's --help, the way a user starts it (median of 3), next to node itself.
      const timed = (args: ReadonlyArray<string>) =>
        Effect.gen(function*() {
          const times: Array<number> = []
          for (let i = 0; i < 3; i++) {
            const started = performance.now()
            const child = yield* spawn(args[0]!, args.slice(1), {}, { cwd: app })
            expect((yield* child.exit()).code).toBe(0)
            times.push(performance.now() - started)
          }
          return times.sort((a, b) => a - b)[1]!
        })
      const help = yield* timed([bin(), "--help"])
      const bare = yield* timed([process.execPath, "-e", "0"])
      console.log(`[package] reconciler --help: ${help.toFixed(0)} ms (node -e 0: ${bare.toFixed(0)} ms), load ${os.loadavg()[0]!.toFixed(1)}`)

      const helped = yield* spawn(bin(), ["run", "--help"], {}, { cwd: app, color: true })
      expect((yield* helped.exit()).code).toBe(0)
      expect(helped.output()).toContain("RECONCILER_DRAIN_TIMEOUT")
      expect(helped.output()).not.toMatch(/\x1b\[/)

      fs.writeFileSync(path.join(app, "ledger.ts"), "export const nothing = 1\n")
      const typescript = yield* spawn(bin(), ["status", "--module", "ledger.ts", "--embedded"], {}, { cwd: app })
      expect((yield* typescript.exit()).code).toBe(1)
      expect(typescript.output()).toMatch(/ledger\.ts is TypeScript, which Node v[\d.]+ does not load by itself: compile it \(tsc\) and pass the \.js file/)
    }), { timeout: 120_000 })

  it.scopedLive("the installed bin against `reconciler embedded`: SIGTERM to the bin mid-stream drains and exits 0; a restart converges; so under npm run and npx", () =>
    Effect.gen(function*() {
      // The test ledger (test/support/ledger.ts) in plain JavaScript, importing the installed package.
      fs.writeFileSync(
        path.join(app, "ledger.js"),
        `import { Schema } from "effect"
import { Projection } from "effect-reconciler"

export const ledger = Projection.make({
  name: "ledger",
  categories: ["ledger"],
  document: Schema.Struct({ total: Schema.Number, applied: Schema.Array(Schema.String) }),
  events: {
    Credited: Schema.Struct({ doc: Schema.String, amount: Schema.Int }),
    Linked: Schema.Struct({ a: Schema.String, b: Schema.String })
  },
  key: (event) => (event.type === "Linked" ? [event.data.a, event.data.b] : event.data.doc),
  evolve: (doc, event) => ({
    total: (doc?.total ?? 0) + (event.type === "Credited" ? event.data.amount : 0),
    applied: [...(doc?.applied ?? []), event.id]
  })
})
`
      )
      const servers = yield* spawn(bin(), ["embedded", "--eventstore-port", "0", "--mongo-port", "0"], {}, { cwd: app })
      const eventStoreUri = (yield* servers.line(/EventStoreDB listening on (\S+)/))[1]!
      const mongoUri = (yield* servers.line(/MongoDB listening on (\S+)/))[1]!
      const { checkpoint, append, recorded, readModel, head } = yield* ledgerViews(eventStoreUri, mongoUri, "package_test")
      const env = {
        EVENTSTORE_CONNECTION_STRING: eventStoreUri,
        MONGODB_URI: mongoUri,
        MONGODB_DATABASE: "package_test",
        RECONCILER_LANES: "3",
        RECONCILER_BATCH_SIZE: "10",
        RECONCILER_COMMIT_INTERVAL: "50 millis",
        RECONCILER_DRAIN_TIMEOUT: "10 seconds"
      }
      const service = () =>
        spawn(bin(), ["run", "--module", "ledger.js"], env, { cwd: app }).pipe(Effect.tap((child) => child.line(/reconciling ledger/)))

      yield* append(1500, 11)
      const writer = yield* Effect.fork(append(1000, 12)) // keeps appending while the service runs
      const first = yield* service()
      yield* until("the service to be under way", Effect.map(checkpoint, (c) => c >= 200n))
      const stillBehind = (yield* head) > (yield* checkpoint)
      const tree = [first.process.pid!, ...descendants(first.process.pid!)]
      // The bin's own process only: not its group, not a wrapper.
      process.kill(first.process.pid!, "SIGTERM")
      expect(yield* first.exit("20 seconds")).toEqual({ code: 0, signal: null })
      expect(first.output()).toMatch(/reconciler: SIGTERM: stopping — draining/)
      expect(tree.filter(alive)).toEqual([])
      expect(stillBehind).toBe(true) // stopped mid-stream
      const committed = yield* checkpoint
      expect(committed).toBeGreaterThanOrEqual(200n)
      expect(yield* readModel).toEqual(referenceFold((yield* recorded).filter((e) => e.position <= committed)))

      yield* Fiber.join(writer)
      const second = yield* service()
      const target = yield* head
      yield* until("the restart to reach the head", Effect.map(checkpoint, (c) => c >= target), { attempts: 1200 })
      process.kill(second.process.pid!, "SIGINT") // Ctrl-C drains the same way
      expect(yield* second.exit()).toEqual({ code: 0, signal: null })
      expect(second.output()).toMatch(/reconciler: SIGINT: stopping — draining/)
      const events = yield* recorded
      expect(events).toHaveLength(2500)
      expect(yield* readModel).toEqual(referenceFold(events))

      // Started through npm — a script without `exec`, and npx — SIGTERM to npm itself: npm's shell
      // (or npx) dies without passing it on, the bin sees its parent go and drains all the same.
      const scripts = JSON.parse(fs.readFileSync(path.join(app, "package.json"), "utf8"))
      fs.writeFileSync(
        path.join(app, "package.json"),
        JSON.stringify({ ...scripts, scripts: { service: "reconciler run --module ledger.js" } }, null, 2)
      )
      for (const [launcher, args] of [["npm", ["run", "service"]], ["npx", ["reconciler", "run", "--module", "ledger.js"]]] as const) {
        yield* append(1000, launcher.length)
        const before = yield* checkpoint
        const started = yield* spawn(launcher, args, { ...cleanEnv(), ...env }, { cwd: app })
        yield* started.line(/reconciling ledger/)
        yield* until(`the service under ${launcher} to be under way`, Effect.map(checkpoint, (c) => c > before))
        const launched = [started.process.pid!, ...descendants(started.process.pid!)]
        // Should the test fail, nothing it started may outlive it (orphans are no longer anyone's children).
        yield* Effect.addFinalizer(() => Effect.sync(() => launched.filter(alive).forEach((pid) => process.kill(pid, "SIGKILL"))))
        process.kill(started.process.pid!, "SIGTERM")
        yield* started.line(/reconciler: parent process \d+ exited: stopping — draining/)
        yield* until(`everything ${launcher} started to exit`, Effect.sync(() => launched.filter(alive).length === 0))
        const stoppedAt = yield* checkpoint
        expect(stoppedAt, launcher).toBeGreaterThan(before)
        expect(started.output()).toMatch(/stopped; checkpoints committed/)
        expect(yield* readModel).toEqual(referenceFold((yield* recorded).filter((e) => e.position <= stoppedAt)))
      }
    }), { timeout: 240_000 })
})
