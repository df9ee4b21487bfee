/**
 * The engine's metrics, tagged with `projection` where they are used; exported
 * publicly as `Reconciler.metrics`. The totals are incremental counters (they
 * only grow), so an exporter sees them as monotonic counters — in Prometheus
 * text, `counter` series named `<name>_total`.
 */
import { Metric, MetricBoundaries } from "effect"

export const metrics = {
  processed: Metric.counter("reconciler_events_processed", { description: "events applied to documents or handled", incremental: true }),
  skipped: Metric.counter("reconciler_events_skipped", { description: "events of types the projection does not declare", incremental: true }),
  duplicates: Metric.counter("reconciler_duplicates_ignored", { description: "redelivered events found already applied", incremental: true }),
  deadLettered: Metric.counter("reconciler_events_dead_lettered", { description: "poison events dead-lettered or parked", incremental: true }),
  retries: Metric.counter("reconciler_retries", { description: "retried store operations and resubscriptions", incremental: true }),
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
  }),
  held: Metric.gauge("reconciler_held_deliveries", {
    description: "persistent mode: deliveries held until their stream's earlier events are applied"
  }),
  gaps: Metric.counter("reconciler_gaps_skipped", {
    description: "persistent mode: ranges of a stream's events found gone (deleted, truncated) and skipped by decision",
    incremental: true
  }),
  streamReads: Metric.counter("reconciler_stream_reads", {
    description: "persistent mode: events read from their stream because the group had not handed them over in time",
    incremental: true
  })
}
