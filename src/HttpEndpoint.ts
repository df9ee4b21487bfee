/**
 * The service's HTTP endpoint, for operators and their tools (on
 * `@effect/platform`'s HTTP server, Node's `http` underneath):
 *
 * - `GET /metrics`: Prometheus text of every metric of the process, labelled
 *   by projection;
 * - `GET /healthz`: 200 while every projection runs and none is stalled
 *   through a restart; 503 with the reason per projection otherwise;
 * - `GET /readyz`: 200 while every projection is within the ready distance of
 *   the head; 503 with each projection's distance otherwise;
 * - `GET /status`: every projection as the {@link Monitor} last saw it (JSON,
 *   times in milliseconds), served from memory.
 *
 * The server lives in the caller's scope: it stops accepting and closes its
 * connections when that scope closes.
 *
 * @since 0.1.0
 */
import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import type { HttpServerError } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Effect } from "effect"
import type { Scope } from "effect"
import { createServer } from "node:http"
import type { Monitor } from "./Monitor.js"
import { stateJson, verdictJson } from "./Monitor.js"
import type { PrometheusMetrics } from "./Telemetry.js"
import { prometheusContentType } from "./Telemetry.js"

/** @since 0.1.0 */
export interface Options {
  /** 0 picks a free port. */
  readonly port: number
  /** Default `0.0.0.0` (every interface, as probes from outside the host need). */
  readonly host?: string | undefined
}

/**
 * The routes over a monitor and a metrics exporter.
 *
 * @since 0.1.0
 */
export const router = (monitor: Monitor, metrics: PrometheusMetrics["Type"]) =>
  HttpRouter.empty.pipe(
    HttpRouter.get(
      "/metrics",
      monitor.refresh.pipe(
        Effect.zipRight(metrics.scrape),
        Effect.map((text) => HttpServerResponse.text(text, { contentType: prometheusContentType }))
      )
    ),
    HttpRouter.get(
      "/healthz",
      Effect.map(monitor.health, (verdict) => HttpServerResponse.unsafeJson(verdictJson(verdict), { status: verdict.ok ? 200 : 503 }))
    ),
    HttpRouter.get(
      "/readyz",
      Effect.map(monitor.readiness, (verdict) => HttpServerResponse.unsafeJson(verdictJson(verdict), { status: verdict.ok ? 200 : 503 }))
    ),
    HttpRouter.get(
      "/status",
      Effect.map(monitor.snapshot, (states) => HttpServerResponse.unsafeJson({ projections: states.map(stateJson) }))
    )
  )

/**
 * Serves the endpoint in the current scope; returns its URL (with the port
 * chosen when `port` is 0).
 *
 * @since 0.1.0
 */
export const serve = (
  options: Options,
  monitor: Monitor,
  metrics: PrometheusMetrics["Type"]
): Effect.Effect<string, HttpServerError.ServeError, Scope.Scope> =>
  Effect.gen(function*() {
    const host = options.host ?? "0.0.0.0"
    const server = yield* NodeHttpServer.make(() => createServer(), { port: options.port, host })
    yield* server.serve(router(monitor, metrics))
    const address = server.address
    const port = address._tag === "TcpAddress" ? address.port : options.port
    // Where a client on this host reaches it.
    const shown = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host
    return `http://${shown}:${port}`
  })
