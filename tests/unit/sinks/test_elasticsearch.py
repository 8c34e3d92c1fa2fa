"""The Elasticsearch / OpenSearch sink against a fake cluster over real TCP."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from forwarder.config import Config
from forwarder.failures import Failure
from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks import create_sink
from forwarder.sinks.base import (
    UNRECOGNIZED_ANSWER,
    BatchResult,
    Reject,
    Retry,
    SinkError,
    TooLarge,
    deliver,
)
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.elasticsearch.config import ElasticsearchSinkConfig
from forwarder.sinks.elasticsearch.sink import ElasticsearchSink
from forwarder.sinks.ids import event_key
from forwarder.sinks.loop import Item, ship
from tests.fakes.elasticsearch import BulkAnswer, FakeElasticsearch
from tests.fakes.server import AsgiServer
from tests.helpers import normalized_sample, sample_paths

INDEX = "logs-aha.audit-default"
FAST_RETRY = RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.05)
# Long enough for any bounded delivery here; a delivery still retrying then is a wedge.
WEDGED_AFTER_SECONDS = 10.0


def documents(count: int) -> list[dict[str, Any]]:
    """`count` distinct normalized events from the sample corpus."""
    docs = [normalized_sample(path) for path in sample_paths()]
    assert len(docs) >= count
    return docs[:count]


def sink_for(url: str, **options: Any) -> ElasticsearchSink:
    config = ElasticsearchSinkConfig.model_validate(
        {"type": "elasticsearch", "name": "es", "url": url} | options
    )
    return ElasticsearchSink(config)


def prepared(sink: ElasticsearchSink, docs: list[dict[str, Any]], fmt: str = "ecs") -> list[bytes]:
    encode = encoder_for(fmt)
    return [sink.prepare(doc, encode(doc)) for doc in docs]


def outcome_of(sink: ElasticsearchSink, events: list[bytes], **retry: Any) -> Any:
    """The batch through the framework's delivery, as a sink process sends it."""
    return deliver(
        sink, events, SinkMetrics(CollectorRegistry()), FAST_RETRY.model_copy(update=retry)
    )


def whole_retry(result: BatchResult) -> Retry:
    """The one Retry a failed request answers for all its events."""
    assert isinstance(result.whole, Retry) and not result.items, result
    return result.whole


@pytest.fixture
def cluster() -> Iterator[tuple[FakeElasticsearch, AsgiServer]]:
    fake = FakeElasticsearch()
    with AsgiServer(fake) as server:
        yield fake, server


async def test_events_are_created_under_their_key_and_a_resend_is_harmless(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    sink = sink_for(server.url)
    docs = documents(3)
    events = prepared(sink, docs)
    await sink.start()
    try:
        await sink.healthcheck()
        assert (await sink.send_batch(events)).delivered
        # The same batch again, as after a crash before the offsets were committed.
        assert (await sink.send_batch(events)).delivered
    finally:
        await sink.close()
    stored = fake.documents[INDEX]
    assert set(stored) == {event_key(doc) for doc in docs}
    for doc in docs:
        assert stored[event_key(doc)] == orjson.loads(orjson.dumps(doc))
    first, second = fake.bulk_requests()
    assert first.headers["content-type"] == "application/x-ndjson"
    assert [orjson.loads(line) for line in first.body.splitlines()[::2]] == [
        {"create": {"_index": INDEX, "_id": event_key(doc)}} for doc in docs
    ]
    assert orjson.loads(second.body.splitlines()[0]) == orjson.loads(first.body.splitlines()[0])


async def test_partial_failure_retries_what_can_succeed_and_rejects_the_rest(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    sink = sink_for(server.url)
    docs = documents(4)
    events = prepared(sink, docs)
    keys = [event_key(doc) for doc in docs]
    await sink.start()
    try:
        assert (await sink.send_batch([events[3]])).delivered  # already there: 409 is success
        fake.fail_item(keys[0], 429, "es_rejected_execution_exception", "queue full", times=1)
        fake.fail_item(
            keys[1], 400, "mapper_parsing_exception", "failed to parse field [user.id]", times=None
        )
        result = await sink.send_batch(events)
        assert sorted(result.items) == [0, 1]  # the others are Ok
        assert isinstance(result.items[0], Retry)
        rejected = result.items[1]
        assert isinstance(rejected, Reject)
        assert "mapper_parsing_exception" in rejected.reason
        assert "failed to parse field [user.id]" in rejected.reason

        # The same through deliver(): the 429 item lands on the next attempt, the created
        # ones answer 409 and count as delivered.
        fake.fail_item(keys[0], 429, "es_rejected_execution_exception", "queue full", times=1)
        outcome = await deliver(sink, events, SinkMetrics(CollectorRegistry()), FAST_RETRY)
    finally:
        await sink.close()
    assert sorted(outcome.delivered) == [0, 2, 3]
    assert list(outcome.rejected) == [1]
    assert fake.ids(INDEX) == {keys[0], keys[2], keys[3]}
    # The retry sent only the item that failed, not the whole batch again.
    last = fake.bulk_requests()[-1]
    assert [orjson.loads(line)["create"]["_id"] for line in last.body.splitlines()[::2]] == [
        keys[0]
    ]


@pytest.mark.parametrize(
    ("status", "kind", "retriable"),
    [
        (429, "es_rejected_execution_exception", True),
        (500, "exception", True),
        (502, "bad_gateway", True),
        (503, "unavailable_shards_exception", True),
        (400, "illegal_argument_exception", False),
    ],
)
async def test_whole_request_failures(
    cluster: tuple[FakeElasticsearch, AsgiServer], status: int, kind: str, retriable: bool
) -> None:
    fake, server = cluster
    sink = sink_for(server.url)
    fake.fail_requests(status, kind, "told to fail", retry_after="7" if status == 429 else None)
    events = prepared(sink, documents(2))
    try:
        result = await sink.send_batch(events)
    finally:
        await sink.close()
    assert not result.items  # one verdict for the whole request
    verdict = result.whole
    assert isinstance(verdict, Retry if retriable else Reject)
    assert f"HTTP {status}" in verdict.reason and kind in verdict.reason
    assert (verdict.after if isinstance(verdict, Retry) else None) == (
        7.0 if status == 429 else None
    )
    assert fake.ids(INDEX) == set()


async def test_a_too_large_request_is_split_and_a_too_large_event_rejected(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    sink = sink_for(server.url)
    docs = documents(4)
    docs[2] = docs[2] | {"message": "x" * 20_000}
    events = prepared(sink, docs)
    # Room for two ordinary events, never for the big one.
    fake.max_content_length = max(len(event) for i, event in enumerate(events) if i != 2) * 2
    try:
        outcome = await outcome_of(sink, events)
    finally:
        await sink.close()
    assert sorted(outcome.delivered) == [0, 1, 3]
    assert list(outcome.rejected) == [2]
    assert "HTTP 413" in outcome.rejected[2]
    assert fake.ids(INDEX) == {event_key(docs[i]) for i in (0, 1, 3)}
    # Split by the framework: each half its own request, the big event last alone.
    sizes = [len(request.body.splitlines()) // 2 for request in fake.bulk_requests()]
    assert sizes == [4, 2, 2, 1, 1]


async def test_a_single_event_larger_than_accepted_is_rejected(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    fake.max_content_length = 100
    sink = sink_for(server.url)
    try:
        result = await sink.send_batch(prepared(sink, documents(1)))
        outcome = await outcome_of(sink, prepared(sink, documents(1)))
    finally:
        await sink.close()
    assert isinstance(result.whole, TooLarge) and "HTTP 413" in result.whole.reason
    assert list(outcome.rejected) == [0] and outcome.attempts == 1
    assert outcome.rejected[0].startswith("too large for the destination, even alone: ")
    assert "HTTP 413" in outcome.rejected[0]


async def test_a_slow_answer_past_the_time_out_is_retriable(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    fake.delay_seconds = 1.0
    sink = sink_for(server.url, http={"timeout_seconds": 0.2})
    try:
        result = await sink.send_batch(prepared(sink, documents(1)))
    finally:
        await sink.close()
    assert "Timeout" in whole_retry(result).reason


@pytest.mark.parametrize(
    "credentials",
    [
        {"api_key": "key-id:key-secret"},
        {"api_key": base64.b64encode(b"key-id:key-secret").decode()},
        {"username": "forwarder", "password": "s3cret-pass"},
    ],
    ids=["api-key-id-and-key", "api-key-encoded", "basic"],
)
async def test_accepted_credentials(credentials: dict[str, str]) -> None:
    fake = FakeElasticsearch(api_keys={"key-id:key-secret"}, users={"forwarder": "s3cret-pass"})
    with AsgiServer(fake) as server:
        sink = sink_for(server.url, **credentials)
        try:
            await sink.healthcheck()
            assert (await sink.send_batch(prepared(sink, documents(1)))).delivered
        finally:
            await sink.close()
    assert len(fake.ids(INDEX)) == 1


@pytest.mark.parametrize("answer", ["errors_false_empty", "errors_false_fewer"])
async def test_errors_false_delivers_the_batch_whatever_the_items_hold(
    cluster: tuple[FakeElasticsearch, AsgiServer], answer: BulkAnswer
) -> None:
    # Elasticsearch-compatible endpoints seen answering `errors: false` with no items, or fewer:
    # by the Bulk API's contract every action succeeded, so each batch is sent once.
    fake, server = cluster
    fake.mangle_bulk_answers(answer)
    sink = sink_for(server.url)
    docs = documents(9)
    events = prepared(sink, docs)
    metrics = SinkMetrics(CollectorRegistry())
    outcomes = []
    try:
        for start in range(0, len(events), 3):
            batch = events[start : start + 3]
            outcomes.append(
                await asyncio.wait_for(
                    deliver(sink, batch, metrics, FAST_RETRY), WEDGED_AFTER_SECONDS
                )
            )
    finally:
        await sink.close()
    for outcome in outcomes:
        assert sorted(outcome.delivered) == [0, 1, 2]
        assert outcome.rejected == {}
        assert outcome.attempts == 1
    assert len(fake.bulk_requests()) == 3  # one request per batch, no resend
    assert fake.ids(INDEX) == {event_key(doc) for doc in docs}


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("errors_true_fewer", "errors=true and 2 items for 3 actions"),
        ("not_json", "bulk answer is not JSON (HTTP 200): OK"),
    ],
)
async def test_an_answer_not_matching_the_actions_is_resent_a_few_times_then_dead_lettered(
    cluster: tuple[FakeElasticsearch, AsgiServer], answer: BulkAnswer, said: str
) -> None:
    # Retrying for ever (the default) must not apply to an answer nobody can read: the batch is
    # resent max_unrecognized_attempts times, dead-lettered, and the batch behind it goes on.
    fake, server = cluster
    limit = FAST_RETRY.max_unrecognized_attempts
    fake.mangle_bulk_answers(answer, times=limit)
    sink = sink_for(server.url)
    docs = documents(5)
    events = prepared(sink, docs)
    registry = CollectorRegistry()
    metrics = SinkMetrics(registry)
    try:
        first = await asyncio.wait_for(
            deliver(sink, events[:3], metrics, FAST_RETRY), WEDGED_AFTER_SECONDS
        )
        requests_for_first = len(fake.bulk_requests())
        behind = await asyncio.wait_for(
            deliver(sink, events[3:], metrics, FAST_RETRY), WEDGED_AFTER_SECONDS
        )
    finally:
        await sink.close()
    assert requests_for_first == limit == 3
    assert first.delivered == []
    assert first.unrecognized == {0, 1, 2}
    assert set(first.rejected) == {0, 1, 2}
    for index, reason in first.rejected.items():
        assert first.dead_letter_reason(index) == UNRECOGNIZED_ANSWER
        assert reason.startswith(f"{UNRECOGNIZED_ANSWER}: the destination's answer could not")
        assert said in reason
    assert sorted(behind.delivered) == [0, 1] and behind.rejected == {}
    assert len(fake.bulk_requests()) == limit + 1
    assert {event_key(doc) for doc in docs[3:]} <= fake.ids(INDEX)
    assert registry.get_sample_value(
        "aha_siem_sink_unrecognized_answers_total", {"sink": "es"}
    ) == float(limit)


async def test_a_sink_process_dead_letters_unrecognized_answers_with_their_reason(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    config = ElasticsearchSinkConfig.model_validate(
        {"type": "elasticsearch", "name": "es", "url": server.url, "retry": FAST_RETRY}
    )
    sink = ElasticsearchSink(config)
    docs = documents(2)
    items = [
        Item(key=event_key(doc).encode(), value=orjson.dumps(doc), payload=event)
        for doc, event in zip(docs, prepared(sink, docs), strict=True)
    ]
    dead: list[dict[str, Any]] = []

    async def send_dlq(**message: Any) -> asyncio.Future[None]:
        dead.append(message)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    fake.mangle_bulk_answers("errors_true_fewer")
    registry = CollectorRegistry()
    try:
        shipped = await asyncio.wait_for(
            ship(sink, config, items, SinkMetrics(registry), send_dlq), WEDGED_AFTER_SECONDS
        )
    finally:
        await sink.close()
    assert shipped == (0, 2)
    assert [message["value"] for message in dead] == [item.value for item in items]
    headers = dict(dead[0]["headers"])
    assert headers["error"].startswith(b"unrecognized_answer: the destination's answer could not")
    assert headers["attempts"] == b"3"
    assert (
        registry.get_sample_value(
            "aha_siem_sink_dead_lettered_total", {"sink": "es", "reason": "unrecognized_answer"}
        )
        == 2.0
    )


async def test_an_unmatched_answer_to_half_of_a_split_request_marks_those_events(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    sink = sink_for(server.url)
    events = prepared(sink, documents(4))
    fake.max_content_length = max(len(event) for event in events) * 2
    fake.mangle_bulk_answers("errors_true_fewer")
    try:
        outcome = await outcome_of(sink, events)
    finally:
        await sink.close()
    # Each half's answer is not understood: its events are marked, and bounded, on their own.
    assert outcome.unrecognized == {0, 1, 2, 3}
    assert "1 items for 2 actions" in outcome.rejected[0]
    sizes = [len(request.body.splitlines()) // 2 for request in fake.bulk_requests()]
    assert sizes == [4] + [2, 2] * FAST_RETRY.max_unrecognized_attempts


async def test_refused_credentials_wait_reported_down_and_logged_as_the_destinations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeElasticsearch(api_keys={"key-id:key-secret"})
    registry = CollectorRegistry()
    caplog.set_level(logging.WARNING, logger="forwarder.sinks")
    with AsgiServer(fake) as server:
        sink = sink_for(server.url, api_key="key-id:wrong-secret")
        try:
            outcome = await deliver(
                sink,
                prepared(sink, documents(1)),
                SinkMetrics(registry),
                FAST_RETRY.model_copy(update={"max_attempts": 5}),
            )
        finally:
            await sink.close()
    # Retried like any outage (here up to max_attempts), never counted as unrecognized.
    assert outcome.attempts == 5 and outcome.unrecognized == set()
    assert registry.get_sample_value("aha_siem_sink_up", {"sink": "es"}) == 0
    unrecognized = registry.get_sample_value(
        "aha_siem_sink_unrecognized_answers_total", {"sink": "es"}
    )
    assert unrecognized is None
    refused = [
        record
        for record in caplog.records
        if record.name == "forwarder.sinks" and getattr(record, "failure", None) == "destination"
    ]
    assert len(refused) == 4  # one per retry
    assert all(record.levelno == logging.ERROR for record in refused)
    logged = refused[0].__dict__["error"]
    assert "HTTP 401" in logged and "credentials" in logged and "wrong-secret" not in logged


async def test_bad_credentials_are_retriable_and_never_shown() -> None:
    fake = FakeElasticsearch(api_keys={"key-id:key-secret"})
    with AsgiServer(fake) as server:
        sink = sink_for(server.url, api_key="key-id:wrong-secret")
        try:
            with pytest.raises(SinkError) as health:
                await sink.healthcheck()
            sent = whole_retry(await sink.send_batch(prepared(sink, documents(1))))
            outcome = await deliver(
                sink,
                prepared(sink, documents(1)),
                SinkMetrics(CollectorRegistry()),
                FAST_RETRY.model_copy(update={"max_attempts": 2}),
            )
        finally:
            await sink.close()
    assert sent.failure is Failure.DESTINATION
    for error in (str(health.value), sent.reason):
        assert "HTTP 401" in error and "credentials" in error
        assert "wrong-secret" not in error
    assert outcome.attempts == 2  # retried, not rejected at once
    assert fake.ids(INDEX) == set()


@pytest.mark.parametrize("distribution", ["elasticsearch", "opensearch"])
async def test_healthcheck_knows_both_distributions(distribution: str) -> None:
    fake = FakeElasticsearch(distribution=distribution)
    with AsgiServer(fake) as server:
        sink = sink_for(server.url)
        try:
            await sink.healthcheck()
        finally:
            await sink.close()
    assert [request.path for request in fake.requests] == ["/"]


async def test_healthcheck_passes_for_a_key_that_may_only_write() -> None:
    fake = FakeElasticsearch(api_keys={"id:key"}, cluster_info_forbidden=True)
    with AsgiServer(fake) as server:
        sink = sink_for(server.url, api_key="id:key")
        try:
            await sink.healthcheck()
        finally:
            await sink.close()


async def test_healthcheck_fails_when_nothing_listens() -> None:
    sink = sink_for("http://127.0.0.1:9", http={"connect_timeout_seconds": 1})
    try:
        with pytest.raises(SinkError, match="cluster unreachable"):
            await sink.healthcheck()
    finally:
        await sink.close()


async def test_gzip_pipeline_and_a_plain_index(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    sink = sink_for(server.url, gzip=True, index="aha-audit", pipeline="aha-enrich")
    docs = documents(2)
    try:
        assert (await sink.send_batch(prepared(sink, docs))).delivered
    finally:
        await sink.close()
    (request,) = fake.bulk_requests()
    assert request.headers["content-encoding"] == "gzip"
    assert request.query == {"pipeline": ["aha-enrich"]}
    assert fake.ids("aha-audit") == {event_key(doc) for doc in docs}


async def test_ocsf_documents_get_the_timestamp_a_data_stream_needs(
    cluster: tuple[FakeElasticsearch, AsgiServer],
) -> None:
    fake, server = cluster
    sink = sink_for(server.url, format="ocsf")
    (doc,) = documents(1)
    try:
        assert (await sink.send_batch(prepared(sink, [doc], "ocsf"))).delivered
    finally:
        await sink.close()
    stored = fake.documents[INDEX][event_key(doc)]
    assert stored["@timestamp"] == doc["@timestamp"]
    assert stored == {"@timestamp": doc["@timestamp"]} | orjson.loads(encoder_for("ocsf")(doc))


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    fake = FakeElasticsearch()
    with AsgiServer(fake, certfile=cert, keyfile=key) as server:
        untrusted = sink_for(server.url)
        trusted = sink_for(server.url, http={"tls": {"ca_file": str(ca_file)}})
        try:
            with pytest.raises(SinkError) as caught:
                await untrusted.healthcheck()
            await trusted.healthcheck()
            assert (await trusted.send_batch(prepared(trusted, documents(1)))).delivered
        finally:
            await untrusted.close()
            await trusted.close()
    assert server.url.startswith("https://")
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert len(fake.ids(INDEX)) == 1


def test_config_is_part_of_the_sink_union_and_checked() -> None:
    config = Config.model_validate(
        {"sinks": [{"type": "elasticsearch", "name": "es", "url": "https://es:9200"}]}
    )
    (sink_config,) = config.sinks
    assert isinstance(sink_config, ElasticsearchSinkConfig)
    assert sink_config.index == INDEX
    assert isinstance(create_sink(sink_config), ElasticsearchSink)
    bad: list[dict[str, Any]] = [
        {"format": "cef"},
        {"username": "u"},
        {"api_key": "k", "username": "u", "password": "p"},
        {"index": "Logs-Upper"},
        {"url": "es:9200"},
        {"unknown": 1},
    ]
    for extra in bad:
        with pytest.raises(ValidationError):
            ElasticsearchSinkConfig.model_validate(
                {"type": "elasticsearch", "name": "es", "url": "https://es:9200"} | extra
            )
    secret = ElasticsearchSinkConfig.model_validate(
        {"type": "elasticsearch", "name": "es", "url": "https://es:9200", "api_key": "id:top"}
    )
    assert "top" not in repr(secret)
