import { defineConfig } from "vitest/config";

// Node 20 has WebSocket behind a flag (it is on by default from Node 22).
// One test file at a time: each starts real servers on a 2-core machine.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    poolOptions: { forks: { execArgv: ["--experimental-websocket"] } },
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
