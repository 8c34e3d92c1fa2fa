"""Metrics of `aha-siem reconcile` (and of the API client, which backfill shares)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import forwarder.metrics  # noqa: F401  (turns off the `*_created` series for every process)

_RUN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ApiMetrics:
    """Requests to Aha!'s REST API."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "aha_siem_aha_api_requests_total",
            "Requests to Aha!'s REST API, by account and HTTP status (`error`: no answer).",
            ["account", "status"],
            registry=registry,
        )
        self.rate_limit_waits = Counter(
            "aha_siem_aha_api_rate_limit_waits_total",
            "Answers 429 (rate limited) from Aha!'s REST API that were waited out, by account.",
            ["account"],
            registry=registry,
        )
        self.rate_limit_wait_seconds = Counter(
            "aha_siem_aha_api_rate_limit_wait_seconds_total",
            "Seconds spent waiting for Aha!'s rate limit to clear, by account.",
            ["account"],
            registry=registry,
        )


class ReconcileMetrics(ApiMetrics):
    """Metrics of continuous reconciliation."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.missing = Counter(
            "aha_siem_reconcile_missing_total",
            "Audits Aha! lists that the raw topic did not have and the account's webhook filters "
            "let through, injected into it, by account.",
            ["account"],
            registry=registry,
        )
        self.skipped = Counter(
            "aha_siem_reconcile_skipped_total",
            "Audits listed by Aha! and not injected, by account and reason: seen (id already in "
            "the raw topic), the webhook's filters (workspace, workspace_unknown, record_type, "
            "field, user), duplicate (listed twice or outside the window), refused (by Kafka).",
            ["account", "reason"],
            registry=registry,
        )
        self.changed = Counter(
            "aha_siem_reconcile_changed_total",
            "Audits whose id was in the raw topic with other content (not injected), by account.",
            ["account"],
            registry=registry,
        )
        self.checked = Counter(
            "aha_siem_reconcile_checked_total",
            "Audits listed by Aha! and compared with the raw topic, by account.",
            ["account"],
            registry=registry,
        )
        self.runs = Counter(
            "aha_siem_reconcile_runs_total",
            "Reconciliation runs, by account and outcome (success, unauthorized, not_found, "
            "rate_limited, unavailable, api_error, kafka_error, error).",
            ["account", "outcome"],
            registry=registry,
        )
        self.last_success = Gauge(
            "aha_siem_reconcile_last_success_timestamp_seconds",
            "Unix time of the last successful reconciliation run, by account.",
            ["account"],
            registry=registry,
        )
        self.duration = Histogram(
            "aha_siem_reconcile_run_duration_seconds",
            "Time one reconciliation run took (API pages, raw topic scan, injection), by account.",
            ["account"],
            buckets=_RUN_BUCKETS,
            registry=registry,
        )
