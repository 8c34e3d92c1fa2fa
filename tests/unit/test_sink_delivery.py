from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from forwarder.failures import Failure
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import (
    DELIVERED,
    UNRECOGNIZED_ANSWER,
    BatchResult,
    Ok,
    Reject,
    Retry,
    TooLarge,
    Verdict,
    about,
    deliver,
)
from forwarder.sinks.config import RetryConfig


class ScriptedSink:
    """Answers with the scripted results in turn (each about the batch it is given), then
    takes everything."""

    name = "scripted"

    def __init__(self, *results: BatchResult) -> None:
        self.results = list(results)
        self.calls = 0
        self.batches: list[list[bytes]] = []
        self.delivered: list[bytes] = []

    async def start(self) -> None: ...

    async def healthcheck(self) -> None: ...

    async def close(self) -> None: ...

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        self.calls += 1
        self.batches.append(list(events))
        result = self.results.pop(0) if self.results else DELIVERED
        self.delivered.extend(
            event
            for position, event in enumerate(events)
            if isinstance(result.verdict(position), Ok)
        )
        return result


def failed(verdict: Verdict, **request_ids: str) -> BatchResult:
    """One verdict for the whole request."""
    return BatchResult.of(verdict, {int(k[1:]): v for k, v in request_ids.items()})


def metrics() -> tuple[SinkMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return SinkMetrics(registry), registry


async def test_retriable_failures_are_retried_until_delivered() -> None:
    sink = ScriptedSink(failed(Retry("503", 0.01)), failed(Retry("timeout", 0.01)))
    worker_metrics, registry = metrics()
    await deliver(sink, [b"a", b"b"], worker_metrics)
    assert sink.delivered == [b"a", b"b"]
    assert sink.calls == 3
    assert registry.get_sample_value("aha_siem_sink_retries_total", {"sink": "scripted"}) == 2
    assert registry.get_sample_value("aha_siem_sink_events_sent_total", {"sink": "scripted"}) == 2
    assert registry.get_sample_value("aha_siem_sink_up", {"sink": "scripted"}) == 1


async def test_a_rejection_dead_letters_the_batch_without_retrying() -> None:
    sink = ScriptedSink(failed(Retry("503", 0.01)), failed(Reject("400 bad")))
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


async def test_a_partial_failure_resends_only_the_retriable_items_and_reports_the_rejected() -> (
    None
):
    # First call: d is rejected, b and c are retried; second call (b, c): c retried again.
    sink = ScriptedSink(
        BatchResult.each(
            {1: Retry("busy", 0.01), 2: Retry("busy", 0.01), 3: Reject("mapper_parsing_exception")}
        ),
        BatchResult.each({1: Retry("busy", 0.01)}),
    )
    worker_metrics, registry = metrics()
    outcome = await deliver(sink, [b"a", b"b", b"c", b"d"], worker_metrics)
    assert sink.batches == [[b"a", b"b", b"c", b"d"], [b"b", b"c"], [b"c"]]
    assert sorted(sink.delivered) == [b"a", b"b", b"c"]
    assert sorted(outcome.delivered) == [0, 1, 2]
    assert outcome.rejected == {3: "mapper_parsing_exception"}
    assert registry.get_sample_value("aha_siem_sink_events_sent_total", {"sink": "scripted"}) == 3


async def test_max_attempts_sends_what_never_succeeded_to_the_dead_letter_side() -> None:
    sink = ScriptedSink(*[failed(Retry("503", 0.0))] * 5)
    worker_metrics, _ = metrics()
    outcome = await deliver(sink, [b"a", b"b"], worker_metrics, RetryConfig(max_attempts=3))
    assert sink.calls == 3
    assert outcome.delivered == []
    assert set(outcome.rejected) == {0, 1}
    assert all(reason == "retries exhausted: 503" for reason in outcome.rejected.values())
    assert outcome.exhausted == {0, 1}
    assert outcome.dead_letter_reason(0) == "retries_exhausted"


async def test_retry_after_from_the_destination_sets_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("asyncio.sleep", fake_sleep)
    sink = ScriptedSink(failed(Retry("429", 7.0)), failed(Retry("429", 900.0)))
    worker_metrics, _ = metrics()
    await deliver(sink, [b"a"], worker_metrics, RetryConfig(initial_backoff_seconds=0.1))
    assert waits == [7.0, 600.0]  # an absurd Retry-After is capped


def unreadable(answer: str = "HTTP 200: <html>Welcome</html>") -> BatchResult:
    return failed(Retry(answer, 0.0, Failure.UNRECOGNIZED))


async def test_an_answer_not_understood_is_retried_a_bounded_number_of_times_then_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # max_attempts is None (retry for ever), yet an answer the sink cannot interpret is not
    # looped on: max_unrecognized_attempts attempts, each logged with the answer, then the DLQ.
    caplog.set_level(logging.WARNING, logger="forwarder.sinks")
    sink = ScriptedSink(*[unreadable() for _ in range(10)])
    worker_metrics, registry = metrics()
    retry = RetryConfig(max_unrecognized_attempts=4)
    assert retry.max_attempts is None
    outcome = await deliver(sink, [b"a", b"b"], worker_metrics, retry)
    assert sink.calls == 4
    assert outcome.attempts == 4
    assert outcome.delivered == []
    assert outcome.unrecognized == {0, 1}
    assert outcome.exhausted == set()
    for index, reason in outcome.rejected.items():
        assert outcome.dead_letter_reason(index) == UNRECOGNIZED_ANSWER
        assert reason == (
            "unrecognized_answer: the destination's answer could not be understood "
            "(4 attempts): HTTP 200: <html>Welcome</html>"
        )
    assert (
        registry.get_sample_value("aha_siem_sink_unrecognized_answers_total", {"sink": "scripted"})
        == 4
    )
    assert registry.get_sample_value("aha_siem_sink_retries_total", {"sink": "scripted"}) == 3
    warned = [
        r for r in caplog.records if r.__dict__.get("answer") and r.levelno == logging.WARNING
    ]
    assert [r.__dict__["unrecognized_attempts"] for r in warned] == [1, 2, 3, 4]
    assert all("<html>Welcome</html>" in r.__dict__["answer"] for r in warned)
    assert any(
        r.levelno == logging.ERROR and "dead-lettering" in r.getMessage() for r in caplog.records
    )


async def test_the_default_bound_is_three_and_an_understood_answer_in_between_is_no_reset() -> None:
    # An outage between two unreadable answers neither counts nor resets the count.
    sink = ScriptedSink(unreadable(), failed(Retry("503", 0.0)), unreadable(), unreadable())
    worker_metrics, _ = metrics()
    outcome = await deliver(sink, [b"a"], worker_metrics, RetryConfig())
    assert RetryConfig().max_unrecognized_attempts == 3
    assert sink.calls == 4
    assert outcome.unrecognized == {0}
    # And when the destination then answers plainly, the events go through.
    sink = ScriptedSink(unreadable(), unreadable())
    outcome = await deliver(sink, [b"a"], worker_metrics, RetryConfig())
    assert outcome.delivered == [0] and outcome.rejected == {}


class UnreadItemSink(ScriptedSink):
    """Takes every event but `unread`, whose item in the answer it never understands."""

    def __init__(self, unread: bytes) -> None:
        super().__init__()
        self.unread = unread

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        self.calls += 1
        self.batches.append(list(events))
        self.delivered.extend(event for event in events if event != self.unread)
        return BatchResult.each(
            {
                position: Retry("bulk item without a status", 0.0, Failure.UNRECOGNIZED)
                for position, event in enumerate(events)
                if event == self.unread
            }
        )


async def test_one_item_not_understood_is_bounded_alone_and_the_rest_delivered() -> None:
    sink = UnreadItemSink(b"b")
    worker_metrics, registry = metrics()
    outcome = await deliver(sink, [b"a", b"b", b"c"], worker_metrics, RetryConfig())
    assert sink.batches == [[b"a", b"b", b"c"], [b"b"], [b"b"]]
    assert sorted(outcome.delivered) == [0, 2]
    assert outcome.unrecognized == {1}
    assert outcome.rejected[1].startswith("unrecognized_answer: ")
    assert outcome.rejected[1].endswith("(3 attempts): bulk item without a status")
    assert registry.get_sample_value("aha_siem_sink_events_sent_total", {"sink": "scripted"}) == 2


def test_every_verdict_carries_its_failure_class() -> None:
    assert Retry("503").failure is Failure.TRANSIENT
    assert Retry("401", failure=Failure.DESTINATION).failure is Failure.DESTINATION
    assert Reject("400").failure is Failure.RECORD
    assert TooLarge("413").failure is Failure.RECORD
    # Naming the request keeps the class and the wait.
    named = about(Retry("403", 5.0, Failure.DESTINATION), "POST https://siem")
    assert named == Retry("POST https://siem: 403", 5.0, Failure.DESTINATION)
    assert about(Ok(), "POST https://siem") == Ok()


def test_a_batch_result_has_one_verdict_per_position() -> None:
    whole = BatchResult.of(Retry("503"))
    assert whole.verdicts(2) == [Retry("503"), Retry("503")] and not whole.delivered
    each = BatchResult.each({1: Reject("400")})
    assert each.verdicts(3) == [Ok(), Reject("400"), Ok()] and not each.delivered
    assert DELIVERED.verdicts(2) == [Ok(), Ok()] and DELIVERED.delivered


async def test_a_destination_failure_is_logged_as_an_error_and_reports_the_sink_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="forwarder.sinks")
    refused = failed(Retry("HTTP 403 (check the credentials)", 0.0, Failure.DESTINATION))
    sink = ScriptedSink(*[refused] * 6)
    worker_metrics, registry = metrics()
    outcome = await deliver(sink, [b"a"], worker_metrics, RetryConfig())
    # Never dropped, however long it takes (here: until the credentials were fixed).
    assert sink.calls == 7 and outcome.delivered == [0] and outcome.rejected == {}
    errors = [r for r in caplog.records if r.__dict__.get("failure") == "destination"]
    assert len(errors) == 6 and all(r.levelno == logging.ERROR for r in errors)
    worker_metrics, registry = metrics()
    sink = ScriptedSink(*[refused] * 3)
    await deliver(sink, [b"a"], worker_metrics, RetryConfig(max_attempts=2))
    assert registry.get_sample_value("aha_siem_sink_up", {"sink": "scripted"}) == 0


async def test_each_event_keeps_the_request_id_of_the_last_failed_request_that_carried_it() -> None:
    # Positions are those of each attempt's batch: after the first call only b and c remain,
    # so the second call's position 1 is c.
    sink = ScriptedSink(
        BatchResult.each(
            {0: Reject("400"), 1: Retry("busy", 0.01), 2: Retry("busy", 0.01)},
            {0: "req-1", 1: "req-1", 2: "req-1"},
        ),
        BatchResult.of(Reject("400 for c"), {0: "req-2", 1: "req-3"}),
    )
    outcome = await deliver(sink, [b"a", b"b", b"c"], metrics()[0])
    assert outcome.rejected.keys() == {0, 1, 2}
    assert outcome.request_ids == {0: "req-1", 1: "req-2", 2: "req-3"}
