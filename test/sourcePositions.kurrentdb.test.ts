/**
 * The source-positions suite (sourcePositions.suite.ts) through
 * `@kurrent/kurrentdb-client`: both the `$ce-` links and the `$idx-ce-` index.
 */
import { vi } from "vitest"

vi.hoisted(() => {
  process.env.EVENTSTORE_CLIENT = "kurrentdb"
})

await import("./sourcePositions.suite.js")
