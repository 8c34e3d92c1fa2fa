"""The Splunk HEC sink against a fake collector over real TCP (and once over TLS)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from prometheus_client import CollectorRegistry

from forwarder.config import Config
from forwarder.failures import Failure
from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks import create_sink
from forwarder.sinks.base import (
    BatchResult,
    Ok,
    Reject,
    Retry,
    SinkError,
    TooLarge,
    Verdict,
    deliver,
)
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.splunk_hec import SplunkHecSink, SplunkHecSinkConfig
from tests.fakes.server import AsgiServer
from tests.fakes.splunk_hec import ACK_PATH, FakeHec, FakeHecCluster
from tests.helpers import normalized_sample, sample_paths

TOKEN = "8f4e3c2a-1b2c-4d5e-9f60-7a8b9c0d1e2f"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Switch:
    """One server for the module; each test plugs in its own fake collector."""

    def __init__(self) -> None:
        self.fake: FakeHec | FakeHecCluster = FakeHec(TOKEN)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.fake(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[AsgiServer, Switch]]:
    switch = Switch()
    with AsgiServer(switch) as running:
        yield running, switch


@pytest.fixture
def fake(server: tuple[AsgiServer, Switch]) -> FakeHec:
    collector = FakeHec(TOKEN)
    server[1].fake = collector
    return collector


@pytest.fixture
def url(server: tuple[AsgiServer, Switch]) -> str:
    return server[0].url


def sink_config(url: str, **overrides: Any) -> SplunkHecSinkConfig:
    return SplunkHecSinkConfig.model_validate(
        {"type": "splunk_hec", "name": "splunk", "url": url, "token": TOKEN} | overrides
    )


@pytest.fixture
async def open_sinks() -> AsyncIterator[list[SplunkHecSink]]:
    sinks: list[SplunkHecSink] = []
    yield sinks
    for sink in sinks:
        await sink.close()


@pytest.fixture
def make(open_sinks: list[SplunkHecSink], url: str) -> Any:
    def build(**overrides: Any) -> SplunkHecSink:
        sink = create_sink(sink_config(overrides.pop("url", url), **overrides))
        assert isinstance(sink, SplunkHecSink)
        open_sinks.append(sink)
        return sink

    return build


def docs(count: int) -> list[dict[str, Any]]:
    return [normalized_sample(path) for path in sample_paths()[:count]]


def prepared(sink: SplunkHecSink, documents: list[dict[str, Any]], fmt: str = "ecs") -> list[bytes]:
    encode = encoder_for(fmt)
    return [sink.prepare(doc, encode(doc)) for doc in documents]


def ack_settings(**overrides: Any) -> dict[str, Any]:
    return {"enabled": True, "poll_interval_seconds": 0.05, "timeout_seconds": 2.0} | overrides


def whole(result: BatchResult) -> Verdict:
    """The one verdict on every event of the batch (a failure of the request itself)."""
    assert not result.items, result
    return result.whole


def reason(verdict: Verdict) -> str:
    assert isinstance(verdict, Retry | Reject | TooLarge), verdict
    return verdict.reason


def metrics() -> SinkMetrics:
    return SinkMetrics(CollectorRegistry())


# -- delivery -------------------------------------------------------------------------------


async def test_a_batch_is_one_gzip_request_of_concatenated_envelopes(
    fake: FakeHec, make: Any
) -> None:
    sink = make(index="aha_audit")
    await sink.start()
    documents = docs(3)
    assert (await sink.send_batch(prepared(sink, documents))).delivered

    [request] = fake.event_requests()
    assert request.headers["authorization"] == f"Splunk {TOKEN}"
    assert request.headers["content-encoding"] == "gzip"
    assert "x-splunk-request-channel" not in request.headers  # no acknowledgement asked
    assert gzip.decompress(request.body).count(b'"sourcetype":"aha:audit:ecs"') == 3
    assert [envelope["event"] for envelope in fake.events] == documents
    assert {envelope["index"] for envelope in fake.events} == {"aha_audit"}
    assert [envelope["fields"]["event.action"] for envelope in fake.events] == [
        doc["event"]["action"] for doc in documents
    ]


async def test_gzip_off_sends_plain_json(fake: FakeHec, make: Any) -> None:
    sink = make(gzip=False)
    assert (await sink.send_batch(prepared(sink, docs(2)))).delivered
    [request] = fake.event_requests()
    assert "content-encoding" not in request.headers
    assert request.body.startswith(b'{"time":')
    assert len(fake.events) == 2


async def test_cef_events_arrive_as_strings(fake: FakeHec, make: Any) -> None:
    sink = make(format="cef")
    documents = docs(2)
    assert (await sink.send_batch(prepared(sink, documents, "cef"))).delivered
    assert [envelope["event"] for envelope in fake.events] == [
        encoder_for("cef")(doc).decode() for doc in documents
    ]
    assert {envelope["sourcetype"] for envelope in fake.events} == {"aha:audit:cef"}


@pytest.mark.parametrize(
    ("code", "retriable"),
    [
        (6, False),  # Invalid data format (no event named: the whole request)
        (12, False),  # Event field is required
        (13, False),  # Event field cannot be blank
        (15, False),  # Error in handling indexed fields
        (5, False),  # No data
        (7, True),  # Incorrect index: the token's allow list, fixed by an operator
        (8, True),  # Internal server error
        (9, True),  # Server is busy
        (10, True),  # Data channel is missing: the token wants acknowledgement
        (1, True),  # Token disabled
        (4, True),  # Invalid token
    ],
)
async def test_each_hec_code(fake: FakeHec, make: Any, code: int, retriable: bool) -> None:
    sink = make()
    fake.force_code(code)
    verdict = whole(await sink.send_batch(prepared(sink, docs(2))))
    assert isinstance(verdict, Retry if retriable else Reject)
    assert f"code {code}" in verdict.reason


@pytest.mark.parametrize(
    ("status", "body", "retriable"),
    [
        (500, "<html>oops</html>", True),
        (502, "Bad gateway", True),
        (404, {"text": "The requested URL was not found on this server.", "code": 404}, True),
        (400, "Bad request", False),
        (405, "Method not allowed", False),
    ],
)
async def test_plain_http_answers(
    fake: FakeHec, make: Any, status: int, body: Any, retriable: bool
) -> None:
    sink = make()
    fake.force(status, body)
    verdict = whole(await sink.send_batch(prepared(sink, docs(1))))
    assert isinstance(verdict, Retry if retriable else Reject)
    assert f"HTTP {status}" in verdict.reason


async def test_busy_collector_is_retried_after_its_retry_after(fake: FakeHec, make: Any) -> None:
    sink = make()
    fake.busy, fake.busy_retry_after = 1, 1
    events = prepared(sink, docs(2))
    busy = whole(await sink.send_batch(events))
    assert isinstance(busy, Retry) and busy.after == 1.0

    fake.busy = 1
    started = time.monotonic()
    outcome = await deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.01))
    assert time.monotonic() - started >= 1.0  # Retry-After, not the 10 ms back-off
    assert outcome.delivered == [0, 1] and not outcome.rejected
    assert len(fake.events) == 2


async def test_a_2xx_with_an_undocumented_code_is_retried_a_bounded_number_of_times(
    fake: FakeHec, make: Any
) -> None:
    sink = make()
    fake.force(200, {"text": "Something new", "code": 99}, times=1000)
    events = prepared(sink, docs(2))
    outcome = await asyncio.wait_for(
        deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.01)), 10
    )
    assert not outcome.delivered and outcome.unrecognized == {0, 1}
    assert "code 99" in outcome.rejected[0]
    assert len(fake.event_requests()) == RetryConfig().max_unrecognized_attempts


async def test_slow_answer_past_the_time_out_is_retriable(fake: FakeHec, make: Any) -> None:
    sink = make(http={"timeout_seconds": 0.3})
    fake.delay_seconds = 3.0
    started = time.monotonic()
    slow = whole(await sink.send_batch(prepared(sink, docs(1))))
    assert time.monotonic() - started < 2.5
    assert isinstance(slow, Retry) and "Timeout" in slow.reason


async def test_unreachable_collector_is_retriable(make: Any) -> None:
    sink = make(url="http://127.0.0.1:9", http={"connect_timeout_seconds": 1})
    assert isinstance(whole(await sink.send_batch([b'{"event":"x"}'])), Retry)
    with pytest.raises(SinkError):
        await sink.healthcheck()


# -- one bad event in a batch -----------------------------------------------------------


def event_keys(envelopes: list[dict[str, Any]]) -> list[str]:
    return [envelope["fields"]["event_key"] for envelope in envelopes]


async def test_an_invalid_event_is_rejected_and_only_the_events_after_it_retried(
    fake: FakeHec, make: Any
) -> None:
    sink = make(gzip=False)
    good = prepared(sink, docs(3))
    blank = b'{"source":"x","event":""}'
    batch = [good[0], blank, good[1], good[2]]
    result = await sink.send_batch(batch)
    verdicts = result.verdicts(len(batch))
    # HEC indexed event 0 before refusing event 1 and never read 2 and 3.
    assert [type(verdict) for verdict in verdicts] == [Ok, Reject, Retry, Retry]
    assert "code 13" in reason(verdicts[1])
    assert event_keys(fake.events) == event_keys([orjson.loads(good[0])])


async def test_deliver_dead_letters_only_the_invalid_event_and_indexes_nothing_twice(
    fake: FakeHec, make: Any
) -> None:
    sink = make()
    good = prepared(sink, docs(4))
    bad_fields = b'{"fields":{"n":1},"event":{"a":1}}'  # indexed field values must be text
    batch = [good[0], good[1], bad_fields, good[2], good[3]]

    outcome = await deliver(sink, batch, metrics(), RetryConfig(initial_backoff_seconds=0.01))

    assert sorted(outcome.delivered) == [0, 1, 3, 4]
    assert outcome.rejected.keys() == {2} and "code 15" in outcome.rejected[2]
    expected = event_keys([orjson.loads(event) for event in good])
    assert sorted(event_keys(fake.events)) == sorted(expected)  # each once, none lost
    _, second = fake.event_requests()
    assert len(gzip.decompress(second.body).splitlines()) == 2  # only the events after it


async def test_with_acks_the_events_before_an_invalid_one_count_as_delivered_on_trust(
    fake: FakeHec, make: Any
) -> None:
    # The 400 carries no ackId for the events HEC took before the invalid one: they are counted
    # delivered without acknowledgement (a fallback) rather than indexed a second time.
    fake.ack = True
    metrics, registry = observed()
    sink = make(gzip=False, acknowledgement=ack_settings())
    sink.use_metrics(metrics)
    good = prepared(sink, docs(3))
    batch = [good[0], good[1], b'{"event":null}', good[2]]

    outcome = await deliver(sink, batch, metrics, RetryConfig(initial_backoff_seconds=0.01))

    assert sorted(outcome.delivered) == [0, 1, 3] and outcome.rejected.keys() == {2}
    assert sorted(event_keys(fake.indexed())) == sorted(
        event_keys([orjson.loads(event) for event in good])
    )
    assert sample(registry, "aha_siem_hec_ack_fallbacks_total", reason="before_invalid_event") == 1
    # The event after the refused one went in acknowledged, on its own ackId.
    assert fake.ack_queries == [[0]]


async def test_a_busy_answer_naming_an_event_resends_only_that_event_and_the_ones_after_it(
    fake: FakeHec, make: Any
) -> None:
    # HEC took events 0 and 1, then its queues filled at event 2: 503 code 9 names it.
    sink = make(gzip=False)
    events = prepared(sink, docs(4))
    busy = {"text": "Server is busy", "code": 9, "invalid-event-number": 2}
    fake.force(503, busy, **{"Retry-After": "0"})
    result = await sink.send_batch(events)
    verdicts = result.verdicts(len(events))
    # Events 0 and 1 are in Splunk; event 2 is not at fault: retried with 3, not dead-lettered.
    assert [type(verdict) for verdict in verdicts] == [Ok, Ok, Retry, Retry]
    assert "code 9" in reason(verdicts[2])

    fake.force(503, busy, **{"Retry-After": "0"})
    outcome = await deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.01))
    assert sorted(outcome.delivered) == [0, 1, 2, 3] and not outcome.rejected
    *_, resent = fake.event_requests()
    assert event_keys([orjson.loads(line) for line in resent.body.splitlines()]) == event_keys(
        [orjson.loads(event) for event in events[2:]]
    )


async def test_with_acks_a_busy_answer_counts_the_events_before_it_delivered_on_trust(
    fake: FakeHec, make: Any
) -> None:
    fake.ack = True
    metrics, registry = observed()
    sink = make(gzip=False, acknowledgement=ack_settings())
    sink.use_metrics(metrics)
    events = prepared(sink, docs(3))
    fake.force(503, {"text": "Server is busy", "code": 9, "invalid-event-number": 1})
    outcome = await deliver(sink, events, metrics, RetryConfig(initial_backoff_seconds=0.01))
    assert sorted(outcome.delivered) == [0, 1, 2]
    assert sample(registry, "aha_siem_hec_ack_fallbacks_total", reason="before_invalid_event") == 1
    _, resent = fake.event_requests()
    assert len(resent.body.splitlines()) == 2  # event 0 was not sent again
    assert fake.ack_queries == [[0]]  # the resent events went in acknowledged


async def test_an_invalid_first_or_last_event_leaves_nothing_to_resend_before_or_after_it(
    fake: FakeHec, make: Any
) -> None:
    sink = make(gzip=False)
    good = prepared(sink, docs(2))
    blank = b'{"event":"  "}'
    first = (await sink.send_batch([blank, *good])).verdicts(3)
    assert [type(verdict) for verdict in first] == [Reject, Retry, Retry]
    assert fake.events == []
    last = (await sink.send_batch([*good, blank])).verdicts(3)
    assert [type(verdict) for verdict in last] == [Ok, Ok, Reject]
    assert event_keys(fake.events) == event_keys([orjson.loads(event) for event in good])


async def test_too_large_requests_are_split(fake: FakeHec, make: Any) -> None:
    sink = make(gzip=False)
    events = prepared(sink, docs(4))
    fake.max_content_length = max(len(event) for event in events) * 2 + 2
    assert isinstance(whole(await sink.send_batch(events)), TooLarge)
    outcome = await deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.01))
    assert sorted(outcome.delivered) == [0, 1, 2, 3] and outcome.attempts == 1
    assert [envelope["event"] for envelope in fake.events] == docs(4)
    assert len(fake.event_requests()) == 4  # refused whole (twice here), then two halves


async def test_one_event_too_large_is_rejected(fake: FakeHec, make: Any) -> None:
    sink = make()
    [event] = prepared(sink, docs(1))
    fake.max_content_length = len(event) - 1
    outcome = await deliver(sink, [event], metrics(), RetryConfig(initial_backoff_seconds=0.01))
    assert outcome.delivered == [] and list(outcome.rejected) == [0]
    assert outcome.rejected[0].startswith("too large for the destination, even alone: ")
    assert "HTTP 413" in outcome.rejected[0] and outcome.dead_letter_reason(0) == "rejected"


# -- the token ---------------------------------------------------------------------------


async def test_a_wrong_token_is_retriable_and_never_shown(
    fake: FakeHec, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = str(uuid.uuid4())
    sink = make(token=wrong)
    sent = whole(await sink.send_batch(prepared(sink, docs(1))))
    with pytest.raises(SinkError) as health_error:
        await sink.healthcheck()
    assert isinstance(sent, Retry)
    for said in (sent.reason, str(health_error.value)):
        assert "token refused" in said and wrong not in said
    assert sent.failure is Failure.DESTINATION  # logged as an error at every retry
    assert wrong not in caplog.text and wrong not in repr(sink._config)
    assert fake.events == []


async def test_events_wait_for_a_disabled_token_to_be_enabled(fake: FakeHec, make: Any) -> None:
    sink = make()
    fake.tokens[TOKEN] = False
    events = prepared(sink, docs(2))
    delivery = asyncio.create_task(
        deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.05))
    )
    while len(fake.event_requests()) < 3:
        await asyncio.sleep(0.02)
    assert not delivery.done()
    fake.tokens[TOKEN] = True
    outcome = await asyncio.wait_for(delivery, 10)
    assert outcome.delivered == [0, 1] and not outcome.rejected  # nothing dead-lettered
    assert len(fake.events) == 2


# -- indexer acknowledgement ---------------------------------------------------------------


def channel_of(request: Any) -> str:
    return str(request.headers["x-splunk-request-channel"])


def observed() -> tuple[SinkMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return SinkMetrics(registry), registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"sink": "splunk", **labels}) or 0.0


async def test_ack_waits_until_indexed(fake: FakeHec, make: Any) -> None:
    fake.ack = True
    fake.ack_delay_seconds = 0.3
    sink = make(acknowledgement=ack_settings())
    started = time.monotonic()
    assert (await sink.send_batch(prepared(sink, docs(2)))).delivered
    assert (await sink.send_batch(prepared(sink, docs(1)))).delivered
    assert time.monotonic() - started >= 0.6  # returned only once each request was indexed

    channels = {request.headers["x-splunk-request-channel"] for request in fake.requests}
    assert channels == {sink.channel} and GUID.match(sink.channel)
    assert len(fake.event_requests()) == 2  # late, not lost: no resend
    assert [0] in fake.ack_queries and [1] in fake.ack_queries
    assert len(fake.events) == 3


async def test_a_lost_ack_is_resent_on_a_new_channel_once_the_time_out_passes(
    fake: FakeHec, make: Any
) -> None:
    fake.ack, fake.lose_acks = True, 1
    sink = make(acknowledgement=ack_settings(timeout_seconds=0.3))
    events = prepared(sink, docs(2))
    assert (await sink.send_batch(events)).delivered
    first, resend = fake.event_requests()
    assert channel_of(first) != channel_of(resend)
    # The first copy may be in Splunk too: at-least-once.
    assert len(fake.events) == 4 and len(fake.indexed()) == 2


async def test_a_late_ack_of_the_first_send_settles_the_resend(fake: FakeHec, make: Any) -> None:
    fake.ack = True
    # The first send is indexed late (after its time-out, before the resend's), the resend's
    # ack is lost: only the first send's ackId, still polled, can settle the batch.
    fake.ack_plan = [1.5, None]
    metrics, registry = observed()
    sink = make(acknowledgement=ack_settings(timeout_seconds=1.0, max_resends=1))
    sink.use_metrics(metrics)
    assert (await sink.send_batch(prepared(sink, docs(1)))).delivered
    first, resend = fake.event_requests()
    # Each ackId is asked on the channel that issued it (both channels number from 0).
    asked = {
        (channel_of(request), tuple(orjson.loads(request.body)["acks"]))
        for request in fake.ack_requests()
    }
    assert {(channel_of(first), (0,)), (channel_of(resend), (0,))} <= asked
    assert sample(registry, "aha_siem_hec_ack_fallbacks_total", reason="ack_timeout") == 0


async def test_acks_that_stay_false_are_resent_a_bounded_number_of_times_then_trusted(
    fake: FakeHec, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An indexer that never reports the events indexed (or a balancer that asks another one):
    # the delivery ends, and the events are in Splunk at most 1 + max_resends times.
    fake.ack, fake.lose_acks = True, 1000
    metrics, registry = observed()
    sink = make(acknowledgement=ack_settings(timeout_seconds=0.25, max_resends=2))
    sink.use_metrics(metrics)
    events = prepared(sink, docs(2))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="forwarder.sinks.splunk_hec"):
        outcome = await asyncio.wait_for(
            deliver(sink, events, metrics, RetryConfig(initial_backoff_seconds=0.01)), 10
        )
    elapsed = time.monotonic() - started

    assert outcome.delivered == [0, 1] and not outcome.rejected
    requests = fake.event_requests()
    assert len(requests) == 3  # the send and two resends, no more
    assert len({channel_of(request) for request in requests}) == 3  # each on a new channel
    assert elapsed >= 0.75  # each send waited its full time-out
    assert sample(registry, "aha_siem_hec_ack_fallbacks_total", reason="ack_timeout") == 1
    assert "no indexer acknowledgement" in caplog.text


async def test_acks_that_stay_false_can_go_to_the_dlq_instead(fake: FakeHec, make: Any) -> None:
    fake.ack, fake.lose_acks = True, 1000
    sink = make(
        acknowledgement=ack_settings(
            timeout_seconds=0.2, max_resends=1, on_unacknowledged="dead_letter"
        )
    )
    events = prepared(sink, docs(2))
    outcome = await asyncio.wait_for(
        deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.01)), 10
    )
    assert not outcome.delivered and outcome.rejected.keys() == {0, 1}
    assert "no indexer acknowledgement" in outcome.rejected[0]
    assert not outcome.exhausted  # refused by rule, not by retries running out
    assert len(fake.event_requests()) == 2


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, "404 page not found", "not_found"),  # a proxy that does not route the ack path
        (400, {"text": "Data channel is missing", "code": 10}, "channel"),
        (400, {"text": "Invalid data channel", "code": 11}, "channel"),
        (500, "<html>Internal Server Error</html>", "server_error"),
        (503, {"text": "Server is busy", "code": 9}, "server_error"),
        (200, "<html>Welcome</html>", "unreadable"),  # not JSON
        (200, {"text": "Success", "code": 0}, "unreadable"),  # no `acks`
        (405, "Method Not Allowed", "http"),
    ],
)
async def test_a_failing_ack_endpoint_falls_back_to_the_200(
    fake: FakeHec,
    make: Any,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: Any,
    kind: str,
) -> None:
    fake.ack = True
    fake.force_ack(status, body, times=1000)
    metrics, registry = observed()
    sink = make(acknowledgement=ack_settings(timeout_seconds=30.0, max_failed_polls=3))
    sink.use_metrics(metrics)
    events = prepared(sink, docs(2))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="forwarder.sinks.splunk_hec"):
        outcome = await asyncio.wait_for(
            deliver(sink, events, metrics, RetryConfig(initial_backoff_seconds=0.01)), 5
        )
        assert (await asyncio.wait_for(sink.send_batch(events), 5)).delivered

    assert outcome.delivered == [0, 1] and not outcome.rejected
    assert time.monotonic() - started < 5  # three polls each, not the 30 s time-out
    first, second = fake.event_requests()  # no resend: each batch is in Splunk once
    assert len(fake.events) == 4
    assert sample(registry, "aha_siem_hec_ack_errors_total", kind=kind) == 6
    assert sample(registry, "aha_siem_hec_ack_fallbacks_total", reason="ack_unavailable") == 2
    # The channel that failed takes no more events.
    assert channel_of(first) != channel_of(second)
    # Logged once for the kind, not once per poll.
    assert caplog.text.count("ack status query failed") == 1


async def test_ack_disabled_on_the_ack_endpoint_trusts_the_200(
    fake: FakeHec, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake.ack = True
    fake.force_ack(400, {"text": "ACK is disabled", "code": 14}, times=1000)
    metrics, registry = observed()
    sink = make(acknowledgement=ack_settings())
    sink.use_metrics(metrics)
    with caplog.at_level(logging.WARNING, logger="forwarder.sinks.splunk_hec"):
        assert (await asyncio.wait_for(sink.send_batch(prepared(sink, docs(1))), 5)).delivered
        assert (await asyncio.wait_for(sink.send_batch(prepared(sink, docs(1))), 5)).delivered
    assert len(fake.events) == 2 and len(fake.ack_requests()) == 2
    assert sample(registry, "aha_siem_hec_ack_fallbacks_total", reason="ack_disabled") == 2
    assert caplog.text.count("does not use it") == 1


async def test_ack_poll_finds_every_part_of_a_split_batch(fake: FakeHec, make: Any) -> None:
    fake.ack = True
    sink = make(gzip=False, acknowledgement=ack_settings())
    events = prepared(sink, docs(4))
    fake.max_content_length = max(len(event) for event in events) * 2 + 2
    outcome = await deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.01))
    assert sorted(outcome.delivered) == [0, 1, 2, 3]
    assert len(fake.events) == 4
    # Each half is a request of its own, settled by its own ackId before the next is sent:
    # the channel is free again, and each query asks only for the ackId of the half it waits on.
    _, first, second = fake.event_requests()
    assert fake.ack_queries == [[0], [1]]
    assert {channel_of(request) for request in fake.ack_requests()} == {
        channel_of(first),
        channel_of(second),
    }


async def test_token_with_acks_but_sink_without_is_reported(fake: FakeHec, make: Any) -> None:
    fake.ack = True
    sink = make()
    refused = whole(await sink.send_batch(prepared(sink, docs(1))))
    assert isinstance(refused, Retry) and "enable acknowledgement" in refused.reason
    with pytest.raises(SinkError):
        await sink.healthcheck()


async def test_sink_with_acks_but_token_without_trusts_the_200(
    fake: FakeHec, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    metrics, registry = observed()
    sink = make(acknowledgement=ack_settings())
    sink.use_metrics(metrics)
    with caplog.at_level(logging.WARNING, logger="forwarder.sinks.splunk_hec"):
        assert (await sink.send_batch(prepared(sink, docs(1)))).delivered
        assert (await sink.send_batch(prepared(sink, docs(1)))).delivered
    assert len(fake.events) == 2 and fake.ack_queries == []
    assert caplog.text.count("does not use it") == 1
    assert sample(registry, "aha_siem_hec_ack_fallbacks_total", reason="no_ack_id") == 2


# -- behind a load balancer ------------------------------------------------------------------


@pytest.fixture
def balancer(server: tuple[AsgiServer, Switch]) -> Any:
    def build(*, sticky: bool) -> FakeHecCluster:
        cluster = FakeHecCluster(
            [FakeHec(TOKEN, ack=True), FakeHec(TOKEN, ack=True)], sticky=sticky
        )
        server[1].fake = cluster
        return cluster

    return build


async def test_a_sticky_balancer_keeps_each_channel_on_the_indexer_that_took_its_events(
    balancer: Any, make: Any
) -> None:
    cluster = balancer(sticky=True)
    broken, _ = cluster.indexers
    broken.lose_acks = 1000  # takes events (HTTP 200) but never indexes them
    sink = make(acknowledgement=ack_settings(timeout_seconds=0.3))
    documents = docs(2)
    assert (await asyncio.wait_for(sink.send_batch(prepared(sink, documents)), 10)).delivered

    assert [envelope["event"] for envelope in cluster.indexed()] == documents
    first, resend = cluster.event_requests()
    # The resend went on a new channel without the old cookie: the balancer chose afresh.
    assert (first.indexer, resend.indexer) == (0, 1)
    assert first.channel != resend.channel and resend.cookie is None
    # Every ack query carried its own channel's cookie: asked of the indexer that issued the id.
    took = {route.channel: route.indexer for route in cluster.event_requests()}
    queries = [route for route in cluster.routed if route.path == ACK_PATH]
    assert {query.channel for query in queries} == set(took)
    assert all(query.cookie == str(took[query.channel]) for query in queries)

    # Later batches go where the resend was indexed: its channel (and cookie) is kept.
    assert (await asyncio.wait_for(sink.send_batch(prepared(sink, docs(1))), 10)).delivered
    *_, later = cluster.event_requests()
    assert (later.channel, later.cookie, later.indexer) == (resend.channel, "1", 1)
    assert len(cluster.event_requests()) == 3 and len(cluster.indexed()) == 3


async def test_colliding_ack_ids_never_settle_a_part_that_was_not_indexed(
    balancer: Any, make: Any
) -> None:
    # No stickiness: the two halves of a split batch reach two indexers, which both number
    # their first ackId on a channel 0, and every ack query reaches the second indexer.
    cluster = balancer(sticky=False)
    broken, _ = cluster.indexers
    broken.lose_acks = 1000
    cluster.ack_route = 1
    sink = make(gzip=False, acknowledgement=ack_settings(timeout_seconds=0.3))
    documents = docs(4)
    events = prepared(sink, documents)
    for indexer in cluster.indexers:
        indexer.max_content_length = max(len(event) for event in events) * 2 + 2

    outcome = await asyncio.wait_for(
        deliver(sink, events, metrics(), RetryConfig(initial_backoff_seconds=0.01)), 10
    )

    assert sorted(outcome.delivered) == [0, 1, 2, 3]
    indexed = [envelope["event"] for envelope in cluster.indexed()]
    assert all(doc in indexed for doc in documents)  # delivered means indexed
    taken = [envelope["event"] for envelope in cluster.events]
    assert all(taken.count(doc) <= 2 for doc in documents)


# -- health ------------------------------------------------------------------------------------


async def test_healthcheck(fake: FakeHec, make: Any) -> None:
    sink = make()
    await sink.healthcheck()
    assert fake.events == []  # the token probe indexes nothing
    fake.healthy = False
    with pytest.raises(SinkError, match="queues are full"):
        await sink.healthcheck()


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AsgiServer, Switch, Path]]:
    folder = tmp_path_factory.mktemp("hec-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(folder / "server.pem")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    switch = Switch()
    with AsgiServer(
        switch, certfile=folder / "server.pem", keyfile=folder / "server.pem"
    ) as running:
        yield running, switch, folder / "ca.pem"


async def test_tls_with_a_ca_bundle(tls_server: tuple[AsgiServer, Switch, Path], make: Any) -> None:
    running, switch, ca_file = tls_server
    switch.fake = FakeHec(TOKEN)
    sink = make(url=running.url, http={"tls": {"ca_file": str(ca_file)}})
    await sink.healthcheck()
    assert (await sink.send_batch(prepared(sink, docs(1)))).delivered
    assert len(switch.fake.events) == 1

    untrusting = make(url=running.url)
    refused = whole(await untrusting.send_batch(prepared(untrusting, docs(1))))
    assert isinstance(refused, Retry) and len(switch.fake.events) == 1


async def test_an_unreadable_ca_bundle_is_retriable(make: Any, tmp_path: Path) -> None:
    sink = make(http={"tls": {"ca_file": str(tmp_path / "missing.pem")}})
    for attempt in (sink.start, sink.healthcheck):
        with pytest.raises(SinkError, match="TLS files"):
            await attempt()
    sent = whole(await sink.send_batch([b"{}"]))
    assert isinstance(sent, Retry) and "TLS files" in sent.reason


# -- config ---------------------------------------------------------------------------------


def test_config_in_the_main_file() -> None:
    config = Config.model_validate(
        {
            "sinks": [
                {
                    "type": "splunk_hec",
                    "name": "splunk",
                    "url": "https://splunk.example.com:8088/",
                    "token": TOKEN,
                    "format": "leef",
                }
            ]
        }
    )
    [sink] = config.sinks
    assert isinstance(sink, SplunkHecSinkConfig)
    assert sink.url == "https://splunk.example.com:8088"
    assert sink.effective_sourcetype == "aha:audit:leef"
    assert TOKEN not in repr(sink) and sink.gzip and not sink.acknowledgement.enabled


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "https://splunk:8088/services/collector/event"}, "leave out /services/collector"),
        ({"url": "splunk:8088"}, "http(s)://"),
        ({"format": "syslog-cef"}, "not accepted"),
        ({"token": " "}, "non-empty"),
        ({"acknowledgement": {"poll_interval_seconds": 10, "timeout_seconds": 5}}, "poll_interval"),
        ({"indexes": "main"}, "Extra inputs"),
    ],
)
def test_config_mistakes_are_named(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sink_config(overrides.pop("url", "https://splunk:8088"), **overrides)
