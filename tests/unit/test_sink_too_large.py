"""The 413 rule, once for every sink: the framework halves a request the destination found too
large, down to one event, which goes to the DLQ (docs/decisions/0010-sink-failures.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from forwarder.config import Config
from forwarder.failures import Failure
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import (
    DELIVERED,
    BatchResult,
    Reject,
    Retry,
    TooLarge,
    Verdict,
    deliver,
)
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.loop import Item, ship

FAST = RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.01)
TOO_LARGE = TooLarge("HTTP 413 Request Entity Too Large")


class LimitedSink:
    """A destination that takes a request of at most `limit` bytes (an HTTP 413 beyond it).

    `answer` may say something else about a request (by its events) before the size is looked
    at; every request the sink gets is kept, and every event it took.
    """

    name = "limited"

    def __init__(
        self, limit: int, answer: Callable[[list[bytes]], BatchResult | None] | None = None
    ) -> None:
        self.limit = limit
        self.answer = answer
        self.requests: list[list[bytes]] = []
        self.taken: list[bytes] = []

    async def start(self) -> None: ...

    async def healthcheck(self) -> None: ...

    async def close(self) -> None: ...

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        return payload

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        batch = list(events)
        self.requests.append(batch)
        if sum(map(len, batch)) > self.limit:
            return BatchResult.of(TOO_LARGE)
        scripted = self.answer(batch) if self.answer else None
        result = scripted or DELIVERED
        self.taken.extend(
            event
            for position, event in enumerate(batch)
            if result.verdict(position) == DELIVERED.whole
        )
        return result


def metrics() -> SinkMetrics:
    return SinkMetrics(CollectorRegistry())


async def test_a_request_too_large_is_halved_until_each_part_fits() -> None:
    sink = LimitedSink(limit=2)
    events = [b"a", b"b", b"c", b"d", b"e", b"f"]
    outcome = await deliver(sink, events, metrics(), FAST)
    assert [len(request) for request in sink.requests] == [6, 3, 1, 2, 3, 1, 2]
    assert sorted(outcome.delivered) == list(range(6)) and outcome.rejected == {}
    assert sorted(sink.taken) == events  # each taken once
    assert outcome.attempts == 1  # halving is not a retry: no back-off, no retry counted


async def test_a_lone_event_too_large_goes_to_the_dlq_with_the_reason_and_the_rest_is_delivered(
    tmp_path: Path,
) -> None:
    sink = LimitedSink(limit=8)
    huge = b"x" * 20
    events = [b"a", b"b", huge, b"c"]
    config = Config.model_validate(
        {"sinks": [{"name": "limited", "type": "file", "path": str(tmp_path / "out")}]}
    )
    dead: list[dict[str, Any]] = []

    async def send_dlq(**record: Any) -> Any:
        dead.append(record)

        async def acked() -> None:
            return None

        return acked()

    registry = CollectorRegistry()
    items = [Item(key=b"k%d" % n, value=b"event-%d" % n, payload=e) for n, e in enumerate(events)]
    sent, dead_lettered = await ship(sink, config.sinks[0], items, SinkMetrics(registry), send_dlq)
    assert (sent, dead_lettered) == (3, 1)
    assert sorted(sink.taken) == [b"a", b"b", b"c"]
    assert [record["value"] for record in dead] == [b"event-2"]
    error = dict(dead[0]["headers"])["error"].decode()
    assert error == "too large for the destination, even alone: HTTP 413 Request Entity Too Large"
    assert [huge] in sink.requests  # it was tried alone before it was set aside
    assert (
        registry.get_sample_value(
            "aha_siem_sink_dead_lettered_total", {"sink": "limited", "reason": "rejected"}
        )
        == 1
    )


async def test_the_outcomes_of_the_halves_are_merged() -> None:
    # The second half's destination refuses one event for its content: the outcome names it
    # by its index in the whole batch, beside the events both halves delivered.
    def refuse_c(batch: list[bytes]) -> BatchResult | None:
        if b"c" in batch:
            return BatchResult.each({batch.index(b"c"): Reject("HTTP 400 mapper_parsing")})
        return None

    sink = LimitedSink(limit=2, answer=refuse_c)
    outcome = await deliver(sink, [b"a", b"b", b"c", b"d"], metrics(), FAST)
    assert sink.requests == [[b"a", b"b", b"c", b"d"], [b"a", b"b"], [b"c", b"d"]]
    assert sorted(outcome.delivered) == [0, 1, 3]
    assert outcome.rejected == {2: "HTTP 400 mapper_parsing"}
    assert outcome.dead_letter_reason(2) == "rejected"


async def test_a_half_taken_is_not_sent_again_when_the_other_half_is_retried() -> None:
    busy = iter([True, True, False])

    def second_half_busy(batch: list[bytes]) -> BatchResult | None:
        if batch[0] == b"c" and next(busy):
            return BatchResult.of(Retry("HTTP 503", after=0.0))
        return None

    sink = LimitedSink(limit=2, answer=second_half_busy)
    outcome = await deliver(sink, [b"a", b"b", b"c", b"d"], metrics(), FAST)
    assert sink.requests == [
        [b"a", b"b", b"c", b"d"],
        [b"a", b"b"],
        [b"c", b"d"],  # busy
        [b"c", b"d"],  # busy: only this half is sent again, not the whole batch
        [b"c", b"d"],
    ]
    assert sorted(sink.taken) == [b"a", b"b", b"c", b"d"]
    assert sorted(outcome.delivered) == [0, 1, 2, 3] and outcome.attempts == 3


async def test_retry_after_of_a_half_sets_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("asyncio.sleep", fake_sleep)
    answers = iter([BatchResult.of(Retry("HTTP 429", after=7.0))])

    def first_half_throttled(batch: list[bytes]) -> BatchResult | None:
        return next(answers, None) if batch[0] == b"a" else None

    sink = LimitedSink(limit=2, answer=first_half_throttled)
    outcome = await deliver(sink, [b"a", b"b", b"c", b"d"], metrics(), RetryConfig())
    assert waits == [7.0]
    assert sorted(outcome.delivered) == [0, 1, 2, 3]


async def test_a_destination_down_for_one_half_holds_the_other_half_until_the_back_off() -> None:
    down = iter([True])

    def down_once(batch: list[bytes]) -> BatchResult | None:
        if next(down, False):
            return BatchResult.of(Retry("ConnectError", failure=Failure.TRANSIENT))
        return None

    sink = LimitedSink(limit=2, answer=down_once)
    outcome = await deliver(sink, [b"a", b"b", b"c", b"d"], metrics(), FAST)
    # The first half met the outage: the second half was not sent into it, and after the
    # back-off each half went as its own request.
    assert sink.requests == [
        [b"a", b"b", b"c", b"d"],
        [b"a", b"b"],
        [b"a", b"b"],
        [b"c", b"d"],
    ]
    assert sorted(outcome.delivered) == [0, 1, 2, 3] and outcome.attempts == 2


async def test_an_event_named_too_large_inside_a_request_is_tried_alone_before_the_dlq() -> None:
    # A destination may judge events one by one (a per-event limit): only the one it names
    # is sent again, alone; the others were taken.
    def judge(batch: list[bytes]) -> BatchResult | None:
        verdicts: dict[int, Verdict] = {
            position: TooLarge("event over the per-event limit")
            for position, event in enumerate(batch)
            if event == b"big" and len(batch) > 1
        }
        return BatchResult.each(verdicts) if verdicts else None

    sink = LimitedSink(limit=100, answer=judge)
    outcome = await deliver(sink, [b"a", b"big", b"c"], metrics(), FAST)
    assert sink.requests == [[b"a", b"big", b"c"], [b"big"]]
    assert sorted(outcome.delivered) == [0, 1, 2]
