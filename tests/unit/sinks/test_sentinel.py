"""The Microsoft Sentinel sink against a fake Azure (token + Logs Ingestion API) over real TCP."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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
from forwarder.sinks.base import BatchResult, Reject, Retry, SinkError, TooLarge, deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.ids import event_key
from forwarder.sinks.loop import Item, ship
from forwarder.sinks.sentinel.config import SentinelSinkConfig
from forwarder.sinks.sentinel.sink import SentinelSink
from tests.fakes.sentinel import FakeAzure
from tests.fakes.server import AsgiServer, read_body
from tests.helpers import normalized_sample, sample_paths

FAST_RETRY = RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.05, max_attempts=2)
# Half an hour after the samples were made: Azure keeps their TimeGenerated.
SAMPLES_ARRIVE = datetime(2026, 11, 27, 14, 40, tzinfo=UTC)


def documents(count: int) -> list[dict[str, Any]]:
    docs = [normalized_sample(path) for path in sample_paths()]
    assert len(docs) >= count
    return docs[:count]


def sink_for(fake: FakeAzure, url: str, **options: Any) -> SentinelSink:
    settings = {
        "type": "sentinel",
        "name": "sentinel",
        "dce_endpoint": url,
        "dcr_immutable_id": fake.dcr_immutable_id,
        "tenant_id": fake.tenant_id,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "token_url": url + fake.token_path,
    }
    return SentinelSink(SentinelSinkConfig.model_validate(settings | options))


def prepared(sink: SentinelSink, docs: list[dict[str, Any]], fmt: str = "ecs") -> list[bytes]:
    encode = encoder_for(fmt)
    return [sink.prepare(doc, encode(doc)) for doc in docs]


def whole(result: BatchResult) -> Retry | Reject:
    """The one verdict of a batch sent in one call that failed."""
    assert not result.items, result
    assert isinstance(result.whole, Retry | Reject), result
    return result.whole


@pytest.fixture
def azure() -> Iterator[tuple[FakeAzure, AsgiServer]]:
    fake = FakeAzure(clock=lambda: SAMPLES_ARRIVE)
    with AsgiServer(fake) as server:
        yield fake, server


async def test_rows_arrive_with_their_columns_and_one_token_serves_many_calls(
    azure: tuple[FakeAzure, AsgiServer],
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url)
    docs = documents(3)
    events = prepared(sink, docs)
    await sink.start()
    try:
        await sink.healthcheck()
        assert (await sink.send_batch(events[:2])).delivered
        assert (await sink.send_batch(events[2:])).delivered
    finally:
        await sink.close()
    assert fake.rows == [
        {
            "EventKey": event_key(doc),
            "TimeGenerated": doc["@timestamp"],
            "EventTime": doc["@timestamp"],
            "EventAction": doc["event"]["action"],
            "Message": doc["message"],
            "Event": orjson.loads(orjson.dumps(doc)),
        }
        for doc in docs
    ]
    assert fake.truncated == []
    assert len(fake.token_requests) == 1
    assert fake.token_requests[0] == {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "scope": "https://monitor.azure.com//.default",
    }
    upload = fake.uploads[-1]
    assert upload.path == f"/dataCollectionRules/{fake.dcr_immutable_id}/streams/Custom-AhaAudit"
    assert upload.query == {"api-version": ["2023-01-01"]}
    assert upload.headers["content-type"] == "application/json"
    assert upload.headers["content-encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(upload.body))[0]["EventKey"] == event_key(docs[2])


async def test_ocsf_events_go_in_the_event_column(azure: tuple[FakeAzure, AsgiServer]) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url, format="ocsf", gzip=False)
    (doc,) = documents(1)
    try:
        assert (await sink.send_batch(prepared(sink, [doc], "ocsf"))).delivered
    finally:
        await sink.close()
    (row,) = fake.rows
    assert row["Event"] == orjson.loads(encoder_for("ocsf")(doc))
    assert row["TimeGenerated"] == row["EventTime"] == doc["@timestamp"]
    assert "content-encoding" not in fake.uploads[0].headers


async def test_a_token_the_api_refuses_is_replaced_once(
    azure: tuple[FakeAzure, AsgiServer],
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url)
    events = prepared(sink, documents(2))
    try:
        assert (await sink.send_batch(events[:1])).delivered
        fake.expire_tokens()  # expired at Azure while the sink still trusts it
        assert (await sink.send_batch(events[1:])).delivered
    finally:
        await sink.close()
    assert [upload.status for upload in fake.uploads] == [204, 401, 204]
    assert len(fake.token_requests) == 2
    assert len(fake.rows) == 2


async def test_a_short_lived_token_is_renewed_before_it_expires() -> None:
    fake = FakeAzure(expires_in=2)
    with AsgiServer(fake) as server:
        sink = sink_for(fake, server.url)
        events = prepared(sink, documents(2))
        try:
            assert (await sink.send_batch(events[:1])).delivered
            await asyncio.sleep(1.7)  # past the renewal point (1.6 s), before the expiry
            assert (await sink.send_batch(events[1:])).delivered
        finally:
            await sink.close()
    assert [upload.status for upload in fake.uploads] == [204, 204]
    assert len(fake.token_requests) == 2


async def test_concurrent_batches_share_one_token_fetch(
    azure: tuple[FakeAzure, AsgiServer],
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url)
    events = prepared(sink, documents(5))
    try:
        await asyncio.gather(*(sink.send_batch([event]) for event in events))
    finally:
        await sink.close()
    assert len(fake.token_requests) == 1
    assert len(fake.rows) == 5


async def test_a_token_refused_again_after_renewal_is_retriable() -> None:
    fake = FakeAzure(expires_in=0)  # every token is dead on arrival
    with AsgiServer(fake) as server:
        sink = sink_for(fake, server.url)
        try:
            refused = whole(await sink.send_batch(prepared(sink, documents(1))))
        finally:
            await sink.close()
    assert isinstance(refused, Retry)
    assert "HTTP 401" in refused.reason
    assert [upload.status for upload in fake.uploads] == [401, 401]
    assert fake.rows == []


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ({"client_secret": "not-the-secret"}, "invalid_client"),
        ({"client_id": "99999999-0000-0000-0000-000000000000"}, "unauthorized_client"),
        ({"scope": "https://management.azure.com/.default"}, "invalid_scope"),
    ],
)
async def test_bad_credentials_wait_instead_of_dead_lettering(
    azure: tuple[FakeAzure, AsgiServer], setting: dict[str, str], error: str
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url, **setting)
    events = prepared(sink, documents(1))
    try:
        with pytest.raises(SinkError) as health:
            await sink.healthcheck()
        sent = whole(await sink.send_batch(events))
        outcome = await deliver(sink, events, SinkMetrics(CollectorRegistry()), FAST_RETRY)
    finally:
        await sink.close()
    assert isinstance(sent, Retry)
    assert sent.failure is Failure.DESTINATION  # logged as an error, never dropped
    for said in (str(health.value), sent.reason):
        assert error in said
        assert "not-the-secret" not in said and fake.client_secret not in said
    assert outcome.attempts == 2 and outcome.delivered == []
    assert fake.uploads == []


@pytest.mark.parametrize(
    ("change", "status", "retriable", "hint"),
    [
        ({"authorized": False}, 403, True, "Monitoring Metrics Publisher"),
        (
            {"dcr_immutable_id": "dcr-ffffffffffffffffffffffffffffffff"},
            404,
            True,
            "dcr_immutable_id",
        ),
        ({"streams": ("Custom-Other",)}, 400, False, "InvalidStream"),
    ],
)
async def test_refusals_of_the_rule_say_what_to_fix(
    change: dict[str, Any], status: int, retriable: bool, hint: str
) -> None:
    fake = FakeAzure()
    with AsgiServer(fake) as server:
        sink = sink_for(fake, server.url)
        for key, value in change.items():
            setattr(fake, key, value)
        try:
            refused = whole(await sink.send_batch(prepared(sink, documents(1))))
        finally:
            await sink.close()
    assert isinstance(refused, Retry if retriable else Reject)
    assert refused.failure is (Failure.DESTINATION if retriable else Failure.RECORD)
    assert f"HTTP {status}" in refused.reason and hint in refused.reason
    assert fake.rows == []


async def test_a_token_answer_without_a_token_waits_as_a_destination_failure() -> None:
    # Not understood, but the events were never sent: they wait for the token_url to be fixed
    # (sink down, error logs) instead of going to the DLQ after a few attempts.
    async def sign_in_page(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"<html>Sign in</html>"})

    fake = FakeAzure()
    with AsgiServer(fake) as server, AsgiServer(sign_in_page) as portal:
        sink = sink_for(fake, server.url, token_url=f"{portal.url}/token")
        events = prepared(sink, documents(1))
        try:
            waiting = whole(await sink.send_batch(events))
            outcome = await deliver(sink, events, SinkMetrics(CollectorRegistry()), FAST_RETRY)
        finally:
            await sink.close()
    assert isinstance(waiting, Retry)
    assert waiting.failure is Failure.DESTINATION
    assert "without access_token" in waiting.reason and "token_url" in waiting.reason
    assert outcome.attempts == 2 and outcome.unrecognized == set()
    assert fake.rows == []


@pytest.mark.parametrize(
    ("status", "code", "after"),
    [
        (429, "TooManyRequests", "5"),
        (503, "ServiceUnavailable", "2"),
        (500, "InternalServerError", None),
    ],
)
async def test_throttling_and_server_errors_are_retried_after_what_azure_says(
    azure: tuple[FakeAzure, AsgiServer], status: int, code: str, after: str | None
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url)
    fake.fail_uploads(status, code, retry_after=after)
    events = prepared(sink, documents(2))
    try:
        busy = whole(await sink.send_batch(events))
        assert (await sink.send_batch(events)).delivered
    finally:
        await sink.close()
    assert isinstance(busy, Retry)
    assert busy.after == (float(after) if after else None)
    assert code in busy.reason
    assert len(fake.rows) == 2


def raw_row(key: str, filler: int) -> bytes:
    """A row as a caller could send it, `filler` bytes of message: larger than `prepare` makes."""
    return orjson.dumps(
        {
            "EventKey": key,
            "TimeGenerated": "2026-11-27T14:05:12.417Z",
            "Message": "m" * filler,
            "Event": {},
        }
    )


async def test_calls_over_one_mebibyte_are_split_and_an_oversized_row_rejected(
    azure: tuple[FakeAzure, AsgiServer],
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url)
    rows = [raw_row("a", 450_000), raw_row("b", 450_000), raw_row("c", 1_100_000), raw_row("d", 10)]
    try:
        result = await sink.send_batch(rows)
    finally:
        await sink.close()
    assert list(result.items) == [2]
    refused = result.items[2]
    assert isinstance(refused, Reject)
    assert "1 MiB" in refused.reason
    assert sorted(row["EventKey"] for row in fake.sent) == ["a", "b", "d"]
    # Every call stayed within the limit, so Azure never had to refuse one.
    assert all(upload.status == 204 for upload in fake.uploads)
    # The row never sent has no request id; the others have the id of the call that took them.
    assert 2 not in result.request_ids
    carried = {upload.headers["x-ms-client-request-id"] for upload in fake.uploads}
    assert {result.request_ids[i] for i in (0, 1, 3)} <= carried


async def test_a_413_from_azure_splits_the_call(azure: tuple[FakeAzure, AsgiServer]) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url)
    fake.fail_uploads(413, "ContentLengthLimitExceeded", times=2)
    docs = documents(2)
    try:
        result = await sink.send_batch(prepared(sink, docs))
        outcome = await deliver(
            sink, prepared(sink, docs), SinkMetrics(CollectorRegistry()), FAST_RETRY
        )
    finally:
        await sink.close()
    # The sink says the call was too large; the framework sends it again in halves.
    assert (
        isinstance(result.whole, TooLarge) and "ContentLengthLimitExceeded" in result.whole.reason
    )
    assert sorted(outcome.delivered) == [0, 1] and outcome.attempts == 1
    assert [upload.status for upload in fake.uploads] == [413, 413, 204, 204]
    assert [row["EventKey"] for row in fake.rows] == [event_key(doc) for doc in docs]


async def test_a_slow_answer_past_the_time_out_is_retriable(
    azure: tuple[FakeAzure, AsgiServer],
) -> None:
    fake, server = azure
    fake.delay_seconds = 1.0
    sink = sink_for(fake, server.url, http={"timeout_seconds": 0.2})
    try:
        slow = whole(await sink.send_batch(prepared(sink, documents(1))))
    finally:
        await sink.close()
    assert isinstance(slow, Retry)
    assert "Timeout" in slow.reason


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    fake = FakeAzure()
    with AsgiServer(fake, certfile=cert, keyfile=key) as server:
        sink = sink_for(fake, server.url, http={"tls": {"ca_file": str(ca_file)}})
        try:
            assert (await sink.send_batch(prepared(sink, documents(1)))).delivered
        finally:
            await sink.close()
    assert server.url.startswith("https://")
    assert len(fake.rows) == 1


def test_config_is_part_of_the_sink_union_and_checked() -> None:
    base = {
        "type": "sentinel",
        "name": "sentinel",
        "dce_endpoint": "https://aha-x1y2.westeurope-1.ingest.monitor.azure.com",
        "dcr_immutable_id": "dcr-0123456789abcdef0123456789abcdef",
        "tenant_id": "00000000-0000-0000-0000-0000000000aa",
        "client_id": "11111111-2222-3333-4444-555555555555",
        "client_secret": "top-secret-value",
    }
    (config,) = Config.model_validate({"sinks": [base]}).sinks
    assert isinstance(config, SentinelSinkConfig)
    assert isinstance(create_sink(config), SentinelSink)
    assert config.token_endpoint == (
        "https://login.microsoftonline.com/00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token"
    )
    assert config.batch_max_bytes + config.batch_max_events + 1 <= 1024 * 1024
    assert "top-secret-value" not in repr(config)
    for bad in (
        {"format": "cef"},
        {"batch_max_bytes": 1_048_200},
        {"dcr_immutable_id": "not-a-dcr"},
        {"stream_name": "AhaAudit"},
        {"client_secret": None},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            SentinelSinkConfig.model_validate(base | bad)


# -- what Azure keeps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "kept"),
    [
        (timedelta(hours=1), True),
        (timedelta(hours=47), True),
        (timedelta(hours=49), False),  # a backfill, a replay, an outage of more than 2 days
        (timedelta(days=30), False),
        (timedelta(hours=-23), True),  # up to a day ahead (a clock running fast)
        (timedelta(hours=-25), False),
    ],
)
async def test_the_event_time_survives_whatever_azure_makes_of_time_generated(
    age: timedelta, kept: bool
) -> None:
    arrival = datetime(2026, 12, 3, 19, 0, tzinfo=UTC)
    fake = FakeAzure(clock=lambda: arrival)
    (doc,) = documents(1)
    happened = (arrival - age).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc = doc | {"@timestamp": happened}
    with AsgiServer(fake) as server:
        sink = sink_for(fake, server.url)
        try:
            assert (await sink.send_batch(prepared(sink, [doc]))).delivered
        finally:
            await sink.close()
    (row,) = fake.rows
    assert row["EventTime"] == happened  # when it happened in Aha!, always
    assert row["TimeGenerated"] == (happened if kept else "2026-12-03T19:00:00.000Z")
    assert row["Event"]["@timestamp"] == happened


def huge(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with 300 KB of rich text in a change, the raw body kept, and a long message."""
    doc = orjson.loads(orjson.dumps(doc))
    text = "<p>" + "Partners sign in with their own IdP. " * 8_000 + "</p>"
    doc["aha"]["audit"]["changes"] = [
        {"field_name": "Description", "value": text, "value_text": text[3:-4]},
        {"field_name": "Name", "value": "Single sign-on"},
    ]
    doc["event"]["original"] = "x" * 200_000
    doc["message"] = "updated feature DEMO-28 " + "é" * 50_000
    return doc


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
async def test_a_large_event_is_cut_to_fit_the_column_instead_of_by_azure(
    azure: tuple[FakeAzure, AsgiServer], fmt: str
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url, format=fmt)
    doc = huge(next(d for d in documents(12) if (d.get("aha") or {}).get("audit")))
    try:
        assert (await sink.send_batch(prepared(sink, [doc], fmt))).delivered
    finally:
        await sink.close()
    assert fake.truncated == []  # nothing left for Azure to cut anywhere
    (row,) = fake.rows
    assert row["EventKey"] == event_key(doc)
    event = row["Event"]
    assert isinstance(event, dict)  # whole JSON, readable with Event.<path> in KQL
    assert len(orjson.dumps(event)) <= 64_000
    assert len(row["Message"].encode()) <= 64_000
    assert row["Message"].startswith("updated feature DEMO-28 ")
    assert row["Message"].endswith("…[truncated]")
    if fmt == "ecs":
        assert "aha_siem_truncated" in event["tags"]
        assert "original" not in event["event"]  # the raw topic keeps the body
        description, name = event["aha"]["audit"]["changes"]
        assert description["value"].startswith("<p>Partners sign in")
        assert description["value"].endswith("…[truncated]")
        assert name == {"field_name": "Name", "value": "Single sign-on"}  # short texts stay
        assert event["event"]["id"] == doc["event"]["id"]
    else:
        assert "aha_siem_truncated" in event["metadata"]["labels"]
        assert "raw_data" not in event


async def test_every_call_is_logged_with_its_request_id(
    azure: tuple[FakeAzure, AsgiServer], caplog: pytest.LogCaptureFixture
) -> None:
    fake, server = azure
    sink = sink_for(fake, server.url)
    docs = documents(3)
    events = prepared(sink, docs)
    fake.fail_uploads(503, "ServiceUnavailable")
    try:
        with caplog.at_level(logging.INFO, logger="forwarder.sinks.sentinel"):
            failed = await sink.send_batch(events)
            assert (await sink.send_batch(events)).delivered
    finally:
        await sink.close()
    calls = [record for record in caplog.records if record.getMessage() == "sentinel upload"]
    sent = [upload.headers["x-ms-client-request-id"] for upload in fake.uploads]
    assert [call.request_id for call in calls] == sent  # type: ignore[attr-defined]
    assert len(set(sent)) == 2  # a new id for every call
    assert [call.status for call in calls] == [503, 204]  # type: ignore[attr-defined]
    for call in calls:
        assert call.rows == 3  # type: ignore[attr-defined]
        assert call.first_event_key == event_key(docs[0])  # type: ignore[attr-defined]
        assert call.last_event_key == event_key(docs[2])  # type: ignore[attr-defined]
    assert isinstance(failed.whole, Retry)
    assert failed.request_ids == dict.fromkeys(range(3), sent[0])


async def test_dead_lettered_rows_carry_the_request_id_azure_logs_under() -> None:
    fake = FakeAzure(streams=("Custom-Other",))  # the rule does not declare the stream: 400
    config = SentinelSinkConfig.model_validate(
        {
            "type": "sentinel",
            "name": "sentinel",
            "dce_endpoint": "http://127.0.0.1:1",
            "dcr_immutable_id": fake.dcr_immutable_id,
            "tenant_id": fake.tenant_id,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
        }
    )
    dead: list[dict[str, Any]] = []

    async def send_dlq(**record: Any) -> asyncio.Future[None]:
        dead.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    with AsgiServer(fake) as server:
        config = config.model_copy(
            update={"dce_endpoint": server.url, "token_url": server.url + fake.token_path}
        )
        sink = SentinelSink(config)
        docs = documents(2)
        items = [
            Item(event_key(doc).encode(), orjson.dumps(doc), sink.prepare(doc, orjson.dumps(doc)))
            for doc in docs
        ]
        try:
            delivered, rejected = await ship(
                sink, config, items, SinkMetrics(CollectorRegistry()), send_dlq
            )
        finally:
            await sink.close()
    assert (delivered, rejected) == (0, 2)
    (upload,) = fake.uploads
    for record in dead:
        headers = dict(record["headers"])
        assert (
            headers["destination-request-id"] == upload.headers["x-ms-client-request-id"].encode()
        )
        assert b"InvalidStream" in headers["error"]
