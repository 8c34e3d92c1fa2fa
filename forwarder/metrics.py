"""Prometheus metrics: created once per process from a registry that is passed in."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# No `*_created` series: they double the series count and no dashboard or alert reads them.
prometheus_client.disable_created_metrics()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class IngestMetrics:
    """Metrics of the webhook ingest shim."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "aha_siem_ingest_requests_total",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "aha_siem_ingest_request_duration_seconds",
            "Time from the request's arrival to its answer, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.received_bytes = Counter(
            "aha_siem_ingest_received_bytes_total",
            "Bytes of webhook bodies received.",
            registry=registry,
        )
        self.rejected = Counter(
            "aha_siem_ingest_rejected_total",
            "Webhook requests not accepted, by reason.",
            ["reason"],
            registry=registry,
        )
        self.invalid_dropped = Counter(
            "aha_siem_ingest_invalid_dropped_total",
            "Invalid bodies answered 400 but not kept in the invalid topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.invalid_truncated = Counter(
            "aha_siem_ingest_invalid_truncated_total",
            "Invalid bodies too large for Kafka, kept in the invalid topic cut to fit (header "
            "truncated-from gives the size they had).",
            registry=registry,
        )
        self.produce_duration = Histogram(
            "aha_siem_ingest_kafka_produce_duration_seconds",
            "Time until Kafka acknowledged a produced body, by topic.",
            ["topic"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.produce_errors = Counter(
            "aha_siem_ingest_kafka_produce_errors_total",
            "Produces Kafka did not acknowledge in time (the body went to the spool), by topic.",
            ["topic"],
            registry=registry,
        )
        self.produce_failures = Counter(
            "aha_siem_ingest_kafka_produce_failures_total",
            "Failed produces (direct or spool drain), by topic and failure class: transient, "
            "client_broken, record, destination.",
            ["topic", "failure"],
            registry=registry,
        )
        self.max_record_bytes = Gauge(
            "aha_siem_ingest_kafka_max_record_bytes",
            "Largest record the ingest sends to a topic (bigger bodies are answered 413): the "
            "topic's max.message.bytes once read from the cluster, capped by "
            "kafka.max_request_bytes.",
            ["topic"],
            registry=registry,
        )
        self.producer_recreated = Counter(
            "aha_siem_ingest_kafka_producer_recreated_total",
            "Times the producer was replaced by a new one because its state was broken "
            "(idempotent sequence or epoch out of step, fenced).",
            registry=registry,
        )


class SpoolMetrics:
    """Metrics of the ingest's local spool."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth_records = Gauge(
            "aha_siem_ingest_spool_records",
            "Records in the spool not yet acknowledged by Kafka.",
            registry=registry,
        )
        self.depth_bytes = Gauge(
            "aha_siem_ingest_spool_bytes",
            "Bytes of spool segment files on disk.",
            registry=registry,
        )
        self.appended = Counter(
            "aha_siem_ingest_spool_appended_total",
            "Records written (and fsync'd) to the spool.",
            registry=registry,
        )
        self.drained = Counter(
            "aha_siem_ingest_spool_drained_total",
            "Records drained from the spool to Kafka (rate() is the drain rate).",
            registry=registry,
        )
        self.full = Gauge(
            "aha_siem_ingest_spool_full",
            "1 while the spool refuses records (size limit reached or disk full), else 0.",
            registry=registry,
        )
        self.corrupt_bytes = Counter(
            "aha_siem_ingest_spool_corrupt_bytes_total",
            "Bytes skipped when opening the spool: torn tails of interrupted writes.",
            registry=registry,
        )
        self.quarantined = Counter(
            "aha_siem_ingest_spool_quarantined_total",
            "Spooled records Kafka refused for good, set aside in the quarantine, by topic and "
            "Kafka error.",
            ["topic", "reason"],
            registry=registry,
        )
        self.quarantine_records = Gauge(
            "aha_siem_ingest_spool_quarantine_records",
            "Records in the spool's quarantine (`aha-siem spool quarantine list` shows them).",
            registry=registry,
        )


class WorkerMetrics:
    """Metrics of the normalizing worker (each sink process has SinkMetrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_in = Counter(
            "aha_siem_worker_events_in_total",
            "Raw bodies consumed from the raw topic.",
            registry=registry,
        )
        self.events_out = Counter(
            "aha_siem_worker_events_out_total",
            "Normalized events produced to the events topic, by kind (audit, or other event types).",
            ["kind"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "aha_siem_worker_assigned_partitions",
            "Partitions of the raw topic assigned to this worker.",
            registry=registry,
        )
        self.rebalancing = Gauge(
            "aha_siem_worker_rebalancing",
            "1 from start-up or the start of a consumer group rebalance until the tables are "
            "recovered, else 0.",
            registry=registry,
        )
        self.rebalancing.set(1)
        self.rebalances = Counter(
            "aha_siem_worker_rebalances_total",
            "Consumer group rebalances this worker took part in.",
            registry=registry,
        )
        self.events_truncated = Counter(
            "aha_siem_worker_events_truncated_total",
            "Events too large for the events topic, shipped with event.original dropped and "
            "long texts cut (tag aha_siem_truncated; the raw topic keeps the whole body).",
            registry=registry,
        )
        self.events_dropped = Counter(
            "aha_siem_worker_events_dropped_total",
            "Events Kafka refused for good and that could not be cut to fit, by reason.",
            ["reason"],
            registry=registry,
        )
        self.events_dropped.labels("too_large")  # exposed at 0 from the start, for the alert
        self.dedupe_dropped = Counter(
            "aha_siem_dedupe_dropped_total",
            "Audits not shipped, by reason: exact (a copy) or collated (everything already shipped).",
            ["reason"],
            registry=registry,
        )
        self.dedupe_revisions = Counter(
            "aha_siem_dedupe_revisions_total",
            "Audits that reuse an earlier audit's id with other content (collation revisions).",
            registry=registry,
        )
        self.dedupe_records = Gauge(
            "aha_siem_dedupe_records",
            "Records with dedupe state in this worker's partitions (updated by the sweep).",
            registry=registry,
        )
        self.dedupe_held_groups = Gauge(
            "aha_siem_dedupe_held_groups",
            "window mode: records with audits held in an open window (updated each check).",
            registry=registry,
        )
        self.dedupe_held_audits = Gauge(
            "aha_siem_dedupe_held_audits",
            "window mode: audits held in open windows (updated each check).",
            registry=registry,
        )
        self.dedupe_held_seconds = Histogram(
            "aha_siem_dedupe_held_seconds",
            "window mode: time a record's group was held, from its first audit to its flush.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.dedupe_merged = Counter(
            "aha_siem_dedupe_merged_audits_total",
            "window mode: audits shipped inside a merged event (one event per flushed group).",
            registry=registry,
        )
        self.dedupe_expired = Counter(
            "aha_siem_dedupe_expired_total",
            "Records whose dedupe state expired and was removed.",
            registry=registry,
        )


class SinkMetrics:
    """Metrics of one sink process (its Faust app and consumer group); labelled by sink."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sink_events = Counter(
            "aha_siem_sink_events_sent_total",
            "Events a sink's destination acknowledged, by sink.",
            ["sink"],
            registry=registry,
        )
        self.sink_retries = Counter(
            "aha_siem_sink_retries_total",
            "Batches a sink retried after a failure, by sink.",
            ["sink"],
            registry=registry,
        )
        self.sink_dead_lettered = Counter(
            "aha_siem_sink_dead_lettered_total",
            "Events sent to the sink's dead-letter topic, by sink and reason (rejected, "
            "retries_exhausted, unrecognized_answer, encode).",
            ["sink", "reason"],
            registry=registry,
        )
        self.sink_unrecognized = Counter(
            "aha_siem_sink_unrecognized_answers_total",
            "Answers of the destination the sink could not interpret (each retried a bounded "
            "number of times, then dead-lettered), by sink.",
            ["sink"],
            registry=registry,
        )
        self.sink_batch_duration = Histogram(
            "aha_siem_sink_send_duration_seconds",
            "Time to deliver one batch, by sink.",
            ["sink"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.sink_up = Gauge(
            "aha_siem_sink_up",
            "1 when the sink's last delivery or healthcheck succeeded, else 0.",
            ["sink"],
            registry=registry,
        )
        self.end_to_end = Histogram(
            "aha_siem_sink_end_to_end_seconds",
            "Time from the webhook's arrival at the ingest to the sink's acknowledgement, by sink.",
            ["sink"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.filtered = Counter(
            "aha_siem_sink_events_filtered_total",
            "Events the sink's route did not select (acknowledged without sending), by sink.",
            ["sink"],
            registry=registry,
        )
        self.batch_events = Histogram(
            "aha_siem_sink_batch_events",
            "Events per batch handed to the destination, by sink.",
            ["sink"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )
        self.batch_bytes = Histogram(
            "aha_siem_sink_batch_bytes",
            "Bytes per batch handed to the destination (before compression), by sink.",
            ["sink"],
            buckets=(1024, 8192, 65536, 262144, 1048576, 4194304, 16777216),
            registry=registry,
        )
        self.backlog = Gauge(
            "aha_siem_sink_backlog_messages",
            "Events on the events topic the sink's consumer group has not committed yet "
            "(consumer lag over the partitions this process holds), by sink.",
            ["sink"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "aha_siem_sink_assigned_partitions",
            "Partitions of the events topic this sink process holds, by sink.",
            ["sink"],
            registry=registry,
        )
        self.rebalancing = Gauge(
            "aha_siem_sink_rebalancing",
            "1 from start-up or a rebalance's start until it completes, else 0, by sink.",
            ["sink"],
            registry=registry,
        )
        # Splunk HEC indexer acknowledgement (only a splunk_hec sink counts these).
        self.hec_ack_errors = Counter(
            "aha_siem_hec_ack_errors_total",
            "Splunk HEC ack status queries that failed, by sink and kind (not_found, channel, "
            "server_error, unreadable, http, connection).",
            ["sink", "kind"],
            registry=registry,
        )
        self.hec_ack_fallbacks = Counter(
            "aha_siem_hec_ack_fallbacks_total",
            "Splunk HEC requests counted delivered on the collector's answer without an "
            "indexer acknowledgement, by sink and reason (ack_unavailable, ack_timeout, "
            "ack_disabled, no_ack_id, before_invalid_event).",
            ["sink", "reason"],
            registry=registry,
        )


class DetectionMetrics:
    """Metrics of the detections process (streaming alerts); labelled by rule name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rules = Gauge(
            "aha_siem_detections_rules",
            "Sigma rules loaded, by kind (event: single-event rules, correlation).",
            ["kind"],
            registry=registry,
        )
        self.events = Counter(
            "aha_siem_detections_events_total",
            "Events of the events topic evaluated against the rules.",
            registry=registry,
        )
        self.matches = Counter(
            "aha_siem_detections_matches_total",
            "Events a single-event rule matched (alerting or not: a correlation's base), by rule.",
            ["rule"],
            registry=registry,
        )
        self.alerts = Counter(
            "aha_siem_detections_alerts_total",
            "Alerts produced to the alerts topic, by rule id and rule name.",
            ["rule_id", "rule"],
            registry=registry,
        )
        self.correlated = Counter(
            "aha_siem_detections_correlation_events_total",
            "Events a correlation counted or not, by rule and outcome: counted, duplicate "
            "(redelivered), covered (in the span of an alert already sent), late (older than the "
            "window), no_group (a group-by field missing).",
            ["rule", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            "aha_siem_detections_errors_total",
            "Events or alerts not evaluated or not produced, by rule (empty: the event itself) "
            "and reason: decode, evaluate, state, kafka_refused.",
            ["rule", "reason"],
            registry=registry,
        )
        self.rebalancing = Gauge(
            "aha_siem_detections_rebalancing",
            "1 from start-up or the start of a rebalance until the correlation table is "
            "recovered, else 0.",
            registry=registry,
        )
        self.rebalancing.set(1)
