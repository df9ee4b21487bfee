/**
 * What the service exports for observers: every Effect metric of the process
 * as Prometheus text, and traces over OTLP/HTTP when an endpoint is
 * configured.
 *
 * - **Metrics**: the Effect metric registry is bridged to OpenTelemetry by
 *   `@effect/opentelemetry` and rendered by `@opentelemetry/exporter-prometheus`
 *   (its serializer; no server of its own: the service's HTTP endpoint serves
 *   the text). Nothing is computed until a scrape asks.
 * - **Traces**: the engine's spans (`Reconciler.run`, `Reconciler.batch`,
 *   `Reconciler.commit`, the adapters' spans) go to
 *   `OTEL_EXPORTER_OTLP_ENDPOINT` (base URL; `/v1/traces` is appended, or
 *   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is) in batches. When neither is
 *   set, no tracer is installed: Effect's built-in tracer keeps spans in memory
 *   only, exactly as without this module.
 *
 * @since 0.1.0
 */
import { Config, ConfigError, Context, Effect, Layer, Option } from "effect"

// The OpenTelemetry modules are loaded only when a layer that needs them is
// built: a service without an HTTP port or a tracing endpoint does not pay
// for loading them (about a second or two at start).
const prometheusModules = Effect.promise(() =>
  Promise.all([
    import("@effect/opentelemetry/Metrics"),
    import("@effect/opentelemetry/Resource"),
    import("@opentelemetry/exporter-prometheus")
  ])
)
const tracingModules = Effect.promise(() =>
  Promise.all([
    import("@effect/opentelemetry/NodeSdk"),
    import("@opentelemetry/exporter-trace-otlp-http"),
    import("@opentelemetry/sdk-trace-base")
  ])
)

/**
 * The Prometheus text exposition of every Effect metric in the process, tags
 * as labels (the engine tags its metrics with `projection`).
 *
 * @since 0.1.0
 */
export class PrometheusMetrics extends Context.Tag("effect-reconciler/Telemetry/PrometheusMetrics")<PrometheusMetrics, {
  /** Collects and renders the current values (text format 0.0.4). */
  readonly scrape: Effect.Effect<string>
}>() {}

/** The content type of {@link PrometheusMetrics} text. @since 0.1.0 */
export const prometheusContentType = "text/plain; version=0.0.4; charset=utf-8"

/**
 * {@link PrometheusMetrics} over the process's metric registry. The reader is
 * shut down with the layer's scope.
 *
 * @since 0.1.0
 */
export const prometheusLayer = (
  options: { readonly serviceName?: string | undefined } = {}
): Layer.Layer<PrometheusMetrics> =>
  Layer.scoped(
    PrometheusMetrics,
    Effect.gen(function*() {
      const [Metrics, Resource, { PrometheusExporter, PrometheusSerializer }] = yield* prometheusModules
      // No server of its own (the service serves the text), no `target_info`
      // and `otel_scope_*` noise on every series.
      const reader = new PrometheusExporter({ preventServerStart: true, withoutTargetInfo: true, withoutScopeInfo: true })
      const serializer = new PrometheusSerializer(undefined, false, undefined, true, true)
      yield* Layer.buildWithScope(
        Metrics.layer(() => reader),
        yield* Effect.scope
      ).pipe(Effect.provide(Resource.layer({ serviceName: options.serviceName ?? "effect-reconciler" })))
      const scrape = Effect.promise(() => reader.collect()).pipe(
        Effect.map(({ resourceMetrics }) => serializer.serialize(resourceMetrics))
      )
      return { scrape }
    })
  )

/**
 * The tracing settings: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (full URL) or
 * `OTEL_EXPORTER_OTLP_ENDPOINT` (base URL), and `OTEL_SERVICE_NAME` (default
 * `effect-reconciler`).
 *
 * @since 0.1.0
 */
export const tracingConfig = Config.all({
  traces: Config.option(Config.string("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
  base: Config.option(Config.string("OTEL_EXPORTER_OTLP_ENDPOINT")),
  serviceName: Config.string("OTEL_SERVICE_NAME").pipe(Config.withDefault("effect-reconciler"))
}).pipe(
  Config.map(({ base, serviceName, traces }) => ({
    url: Option.orElse(traces, () => Option.map(base, (url) => `${url.replace(/\/+$/, "")}/v1/traces`)),
    serviceName
  }))
)

/**
 * Spans exported over OTLP/HTTP to `url`, in batches; flushed when the layer's
 * scope closes.
 *
 * @since 0.1.0
 */
export const otlpTracingLayer = (options: { readonly url: string; readonly serviceName: string }): Layer.Layer<never> =>
  Layer.unwrapEffect(
    Effect.map(tracingModules, ([NodeSdk, { OTLPTraceExporter }, { BatchSpanProcessor }]) =>
      Layer.discard(
        NodeSdk.layer(() => ({
          resource: { serviceName: options.serviceName },
          spanProcessor: new BatchSpanProcessor(new OTLPTraceExporter({ url: options.url }))
        }))
      ))
  )

/**
 * Tracing from {@link tracingConfig}: {@link otlpTracingLayer} when an
 * endpoint is set, nothing at all otherwise.
 *
 * @since 0.1.0
 */
export const tracingLayerConfig: Layer.Layer<never, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(tracingConfig, ({ serviceName, url }) =>
    Option.match(url, {
      onNone: () => Layer.empty,
      onSome: (url) => otlpTracingLayer({ url, serviceName })
    }))
)
