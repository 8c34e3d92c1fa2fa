"""Continuous reconciliation: every few minutes, compare a settled window of Aha!'s audits with
the raw topic and inject only what is missing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import prometheus_client
from prometheus_client import CollectorRegistry

from forwarder.backfill import backfill, filters
from forwarder.backfill.api import AhaApiError, AhaClient
from forwarder.backfill.backfill import Producer, Summary
from forwarder.backfill.config import AhaAccountConfig
from forwarder.backfill.metrics import ReconcileMetrics
from forwarder.backfill.seen import scan_raw
from forwarder.config import Config
from forwarder.kafka_client import KafkaBodyProducer

log = logging.getLogger("forwarder.reconcile")


def window(account: AhaAccountConfig, now: datetime) -> tuple[datetime, datetime]:
    """The settled window checked at `now`: [now - window, now - settle)."""
    settings = account.reconcile
    return (
        now - timedelta(seconds=settings.window_seconds),
        now - timedelta(seconds=settings.settle_seconds),
    )


def outcome_of(error: BaseException) -> str:
    """The bounded `outcome` label of a failed run."""
    if isinstance(error, AhaApiError):
        return error.reason
    if type(error).__module__.startswith("aiokafka") or isinstance(error, LookupError):
        return "kafka_error"
    return "error"


async def reconcile_once(
    config: Config,
    account: AhaAccountConfig,
    client: AhaClient,
    producer: Producer | None,
    metrics: ReconcileMetrics,
    now: datetime | None = None,
) -> Summary:
    """One run for one account; raises on failure after counting it."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    start, end = window(account, now)
    try:
        seen = await scan_raw(config, start.timestamp() - config.aha.scan_margin_seconds)
        summary = await backfill.run(
            config,
            account,
            client,
            start,
            end,
            producer=producer,
            seen=seen,
            # One slice: the window is short, and a page boundary is then the only edge.
            slice_seconds=max(60.0, (end - start).total_seconds()),
        )
    except Exception as error:
        metrics.runs.labels(account.name, outcome_of(error)).inc()
        metrics.duration.labels(account.name).observe(time.monotonic() - started)
        raise
    skipped = skipped_by_reason(summary)
    metrics.checked.labels(account.name).inc(summary.audits)
    metrics.missing.labels(account.name).inc(summary.injected)
    metrics.changed.labels(account.name).inc(summary.changed)
    for reason, count in skipped.items():
        metrics.skipped.labels(account.name, reason).inc(count)
    metrics.runs.labels(account.name, "success").inc()
    metrics.last_success.labels(account.name).set(time.time())
    metrics.duration.labels(account.name).observe(time.monotonic() - started)
    log.info(
        "reconciled",
        extra={
            "account": account.name,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "checked": summary.audits,
            "missing": summary.injected,
            "changed": summary.changed,
            "pages": summary.pages,
            **{f"skipped_{reason}": count for reason, count in skipped.items() if count},
        },
    )
    return summary


SKIP_REASONS = ("seen", *filters.REASONS, "duplicate", "refused")


def skipped_by_reason(summary: Summary) -> dict[str, int]:
    """What a run listed and did not inject, by the `reason` label of the skipped metric."""
    counts = {
        "seen": summary.skipped,
        **summary.filtered,
        "duplicate": summary.duplicates,
        "refused": summary.refused,
    }
    return {reason: counts.get(reason, 0) for reason in SKIP_REASONS}


async def _account_loop(
    config: Config,
    account: AhaAccountConfig,
    producer: Producer | None,
    metrics: ReconcileMetrics,
    stop: asyncio.Event,
    once: bool,
) -> bool:
    ok = True
    async with AhaClient(account, metrics=metrics) as client:
        while not stop.is_set():
            try:
                await reconcile_once(config, account, client, producer, metrics)
                ok = True
            except Exception as error:
                ok = False
                log.error(
                    "reconciliation failed",
                    extra={
                        "account": account.name,
                        "outcome": outcome_of(error),
                        "error": type(error).__name__,
                        "detail": str(error),
                    },
                )
            if once:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), account.reconcile.interval_seconds)
    return ok


async def run(
    config: Config,
    accounts: list[AhaAccountConfig],
    *,
    once: bool = False,
    dry_run: bool = False,
    registry: CollectorRegistry | None = None,
    serve_metrics: Callable[[CollectorRegistry], None] | None = None,
) -> int:
    """Reconcile the accounts every interval until SIGINT/SIGTERM (or once); 0 when all went well."""
    registry = registry or CollectorRegistry()
    metrics = ReconcileMetrics(registry)
    for account in accounts:
        metrics.last_success.labels(account.name)
        metrics.missing.labels(account.name)
        for reason in SKIP_REASONS:
            metrics.skipped.labels(account.name, reason)
    if serve_metrics is not None:
        serve_metrics(registry)
    producer = None if dry_run else KafkaBodyProducer(config, "reconcile")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if producer is not None:
        await producer.start()
    try:
        results = await asyncio.gather(
            *(_account_loop(config, account, producer, metrics, stop, once) for account in accounts)
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if producer is not None:
            await producer.stop()
    return 0 if all(results) else 1


def metrics_server(config: Config) -> Callable[[CollectorRegistry], None] | None:
    """Serve /metrics on `aha.metrics_port` like the other processes (None when it is 0)."""
    if not config.aha.metrics_port:
        return None

    def serve(registry: CollectorRegistry) -> None:
        prometheus_client.start_http_server(
            config.aha.metrics_port, addr=config.aha.metrics_host, registry=registry
        )

    return serve
