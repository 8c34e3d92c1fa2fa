from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import PartialFailure, SinkError, deliver
from forwarder.sinks.config import RetryConfig


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


def metrics() -> tuple[SinkMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return SinkMetrics(registry), registry


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


async def test_a_rejection_dead_letters_the_batch_without_retrying() -> None:
    sink = ScriptedSink(
        SinkError("503", retriable=True, retry_after=0.01), SinkError("400 bad", retriable=False)
    )
    worker_metrics, registry = metrics()
    outcome = await deliver(sink, [b"a"], worker_metrics)
    assert outcome.rejected == {0: "400 bad"}
    assert outcome.delivered == []
    assert outcome.attempts == 2
    assert sink.calls == 2
    assert sink.delivered == []
    assert (
        registry.get_sample_value("aha_siem_sink_events_sent_total", {"sink": "scripted"}) is None
    )


class PartialSink(ScriptedSink):
    """Takes what the script allows: each call names positions to retry and to reject."""

    def __init__(self, *script: tuple[list[int], dict[int, str]]) -> None:
        super().__init__()
        self.script = list(script)
        self.batches: list[list[bytes]] = []

    async def send_batch(self, events: Sequence[bytes]) -> None:
        self.calls += 1
        self.batches.append(list(events))
        if self.script:
            retry, rejected = self.script.pop(0)
            self.delivered.extend(
                event
                for position, event in enumerate(events)
                if position not in retry and position not in rejected
            )
            raise PartialFailure("some failed", retry=retry, rejected=rejected, retry_after=0.01)
        self.delivered.extend(events)


async def test_a_partial_failure_resends_only_the_retriable_items_and_reports_the_rejected() -> (
    None
):
    # First call: d is rejected, b and c are retried; second call (b, c): c retried again.
    sink = PartialSink(([1, 2], {3: "mapper_parsing_exception"}), ([1], {}))
    worker_metrics, registry = metrics()
    outcome = await deliver(sink, [b"a", b"b", b"c", b"d"], worker_metrics)
    assert sink.batches == [[b"a", b"b", b"c", b"d"], [b"b", b"c"], [b"c"]]
    assert sorted(sink.delivered) == [b"a", b"b", b"c"]
    assert sorted(outcome.delivered) == [0, 1, 2]
    assert outcome.rejected == {3: "mapper_parsing_exception"}
    assert registry.get_sample_value("aha_siem_sink_events_sent_total", {"sink": "scripted"}) == 3


async def test_max_attempts_sends_what_never_succeeded_to_the_dead_letter_side() -> None:
    sink = ScriptedSink(*[SinkError("503", retriable=True, retry_after=0.0)] * 5)
    worker_metrics, _ = metrics()
    outcome = await deliver(sink, [b"a", b"b"], worker_metrics, RetryConfig(max_attempts=3))
    assert sink.calls == 3
    assert outcome.delivered == []
    assert set(outcome.rejected) == {0, 1}
    assert all(reason.startswith("retries exhausted") for reason in outcome.rejected.values())


async def test_retry_after_from_the_destination_sets_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("asyncio.sleep", fake_sleep)
    sink = ScriptedSink(SinkError("429", retriable=True, retry_after=7.0))
    worker_metrics, _ = metrics()
    await deliver(sink, [b"a"], worker_metrics, RetryConfig(initial_backoff_seconds=0.1))
    assert waits == [7.0]
