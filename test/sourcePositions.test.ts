/** The source-positions suite (sourcePositions.suite.ts) through `@eventstore/db-client`. */
await import("./sourcePositions.suite.js")
