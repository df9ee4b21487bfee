import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The tests run the compiled package and its bin: build dist/ when a source is newer.
    globalSetup: ["test/support/build.ts"],
    // Servers and child processes need a little more room than unit tests.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The EventStoreDB client registers its protobuf classes globally: one copy per worker process.
    pool: "forks"
  }
})
