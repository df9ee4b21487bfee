/**
 * One logger, three formats, a level, and no secrets: what
 * `RECONCILER_LOG_FORMAT` / `RECONCILER_LOG_LEVEL` choose, as written to the
 * console (captured here by replacing `console.log`).
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer, LogLevel, Redacted } from "effect"
import * as App from "../src/App.js"
import * as Logging from "../src/Logging.js"

const captured = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const lines: Array<string> = []
      const original = globalThis.console.log
      globalThis.console.log = (...args: Array<unknown>) => void lines.push(args.map(String).join(" "))
      return { lines, original }
    }),
    ({ lines }) => Effect.map(effect, () => lines),
    ({ original }) => Effect.sync(() => (globalThis.console.log = original))
  )

const withEnv = (env: Record<string, string>) => Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

const secret = "hunter2-do-not-print"
const emit = Effect.gen(function*() {
  yield* Effect.logDebug("debug line")
  yield* Effect.logInfo("connecting to", Redacted.make(`mongodb://admin:${secret}@db:27017`))
  yield* Effect.logWarning(`dead-lettered: the client said mongodb://admin:${secret}@db:27017/x is down`)
  yield* Effect.logError("failed", new Error(`esdb://ops:${secret}@es:2113 refused`)).pipe(Effect.annotateLogs("uri", `esdb://ops:${secret}@es:2113`))
})

describe("Logging", () => {
  for (const format of ["logfmt", "json", "pretty"] as const) {
    it.effect(`${format}: one line per entry at Info and above, secrets masked`, () =>
      Effect.gen(function*() {
        const lines = yield* captured(emit.pipe(Effect.provide(Logging.layerConfig()), withEnv({ RECONCILER_LOG_FORMAT: format })))
        const text = lines.join("\n")
        expect(text).not.toContain(secret)
        expect(text).not.toContain("debug line")
        expect(text).toContain("dead-lettered")
        expect(text).toContain("mongodb://<redacted>@db:27017/x")
        if (format === "json") {
          const entries = lines.map((line) => JSON.parse(line))
          expect(entries.map((e) => e.logLevel)).toEqual(["INFO", "WARN", "ERROR"])
          expect(entries[2].annotations.uri).toBe("esdb://<redacted>@es:2113")
        }
        if (format === "logfmt") {
          expect(lines).toHaveLength(3)
          expect(lines[1]).toMatch(/^timestamp=\S+ level=WARN fiber=#\d+ message="dead-lettered/)
        }
      }))
  }

  it.effect("RECONCILER_LOG_LEVEL chooses the minimum level; bad settings are configuration errors", () =>
    Effect.gen(function*() {
      const lines = yield* captured(emit.pipe(Effect.provide(Logging.layerConfig()), withEnv({ RECONCILER_LOG_LEVEL: "Debug" })))
      expect(lines[0]).toContain("debug line")
      const quiet = yield* captured(emit.pipe(Effect.provide(Logging.layerConfig()), withEnv({ RECONCILER_LOG_LEVEL: "Error" })))
      expect(quiet.length).toBeGreaterThan(0)
      expect(quiet.every((line) => line.includes("level=ERROR"))).toBe(true)
      const defaults = yield* Logging.config({ level: LogLevel.Warning }).pipe(withEnv({}))
      expect(defaults).toEqual({ format: "logfmt", level: LogLevel.Warning })
      for (const env of [{ RECONCILER_LOG_FORMAT: "xml" }, { RECONCILER_LOG_LEVEL: "loud" }]) {
        const error = yield* Layer.build(Logging.layerConfig()).pipe(Effect.scoped, withEnv(env), Effect.flip)
        expect(String(error)).toContain(Object.keys(env)[0])
      }
    }))

  it("maskCredentials keeps hosts and hides user-info", () => {
    expect(Logging.maskCredentials("mongodb://u:p@h1,h2/db?x=1 and esdb://h:2113")).toBe("mongodb://<redacted>@h1,h2/db?x=1 and esdb://h:2113")
  })
})

describe("operation settings", () => {
  it.effect("defaults, every variable read, bad values rejected", () =>
    Effect.gen(function*() {
      expect(yield* App.operationSettings.pipe(withEnv({}))).toMatchObject({
        httpPort: undefined,
        httpHost: "0.0.0.0",
        readyDistance: 100
      })
      expect(
        yield* App.operationSettings.pipe(withEnv({
          RECONCILER_HTTP_PORT: "0",
          RECONCILER_HTTP_HOST: "127.0.0.1",
          RECONCILER_READY_DISTANCE: "5",
          RECONCILER_LIVENESS_INTERVAL: "250 millis",
          RECONCILER_STALL_AFTER: "10 seconds"
        }))
      ).toMatchObject({ httpPort: 0, httpHost: "127.0.0.1", readyDistance: 5 })
      for (const [name, value] of [["RECONCILER_HTTP_PORT", "70000"], ["RECONCILER_READY_DISTANCE", "-1"], ["RECONCILER_STALL_AFTER", "later"]]) {
        const error = yield* App.operationSettings.pipe(withEnv({ [name!]: value! }), Effect.flip)
        expect(String(error)).toContain(name)
      }
    }))
})
