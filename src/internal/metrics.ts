/**
 * The engine's metrics, tagged with `projection` where they are used; exported
 * publicly as `Reconciler.metrics`.
 */
import { Metric, MetricBoundaries } from "effect"

export const metrics = {
  processed: Metric.counter("reconciler_events_processed", { description: "events applied to documents or handled" }),
  skipped: Metric.counter("reconciler_events_skipped", { description: "events of types the projection does not declare" }),
  duplicates: Metric.counter("reconciler_duplicates_ignored", { description: "redelivered events found already applied" }),
  deadLettered: Metric.counter("reconciler_events_dead_lettered", { description: "poison events dead-lettered or parked" }),
  retries: Metric.counter("reconciler_retries", { description: "retried store operations and resubscriptions" }),
  batchSize: Metric.histogram(
    "reconciler_batch_size",
    MetricBoundaries.exponential({ start: 1, factor: 2, count: 12 }),
    "events per lane batch"
  ),
  writeLatency: Metric.histogram(
    "reconciler_write_latency_ms",
    MetricBoundaries.exponential({ start: 0.5, factor: 2, count: 16 }),
    "milliseconds per guarded bulk write of a lane's batch"
  ),
  lag: Metric.gauge("reconciler_lag_ms", { description: "age of the newest applied event" }),
  stalled: Metric.gauge("reconciler_stalled", {
    description: "1 while deliveries are in flight and none has settled for stallAfter"
  })
}
