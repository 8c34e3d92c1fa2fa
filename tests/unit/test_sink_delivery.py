from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from forwarder.metrics import WorkerMetrics
from forwarder.sinks.base import SinkError, deliver


class ScriptedSink:
    """Fails with the scripted errors in turn, then accepts."""

    name = "scripted"

    def __init__(self, *errors: SinkError) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.delivered: list[bytes] = []

    async def start(self) -> None: ...

    async def healthcheck(self) -> None: ...

    async def close(self) -> None: ...

    async def send_batch(self, events: Sequence[bytes]) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.delivered.extend(events)


def metrics() -> tuple[WorkerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return WorkerMetrics(registry), registry


async def test_retriable_failures_are_retried_until_delivered() -> None:
    sink = ScriptedSink(
        SinkError("503", retriable=True, retry_after=0.01),
        SinkError("timeout", retriable=True, retry_after=0.01),
    )
    worker_metrics, registry = metrics()
    await deliver(sink, [b"a", b"b"], worker_metrics)
    assert sink.delivered == [b"a", b"b"]
    assert sink.calls == 3
    assert registry.get_sample_value("aha_siem_sink_retries_total", {"sink": "scripted"}) == 2
    assert registry.get_sample_value("aha_siem_sink_events_sent_total", {"sink": "scripted"}) == 2
    assert registry.get_sample_value("aha_siem_sink_up", {"sink": "scripted"}) == 1


async def test_a_rejection_is_raised_with_its_attempt_count_and_not_retried() -> None:
    sink = ScriptedSink(
        SinkError("503", retriable=True, retry_after=0.01), SinkError("400 bad", retriable=False)
    )
    worker_metrics, registry = metrics()
    with pytest.raises(SinkError) as raised:
        await deliver(sink, [b"a"], worker_metrics)
    assert raised.value.attempts == 2
    assert sink.calls == 2
    assert sink.delivered == []
    assert (
        registry.get_sample_value("aha_siem_sink_events_sent_total", {"sink": "scripted"}) is None
    )
