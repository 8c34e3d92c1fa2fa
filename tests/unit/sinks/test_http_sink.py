"""The generic HTTPS sink against a real receiver over TCP (and once over TLS)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from prometheus_client import CollectorRegistry

from forwarder.failures import Failure
from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks import create_sink
from forwarder.sinks.base import BatchResult, Reject, Retry, SinkError, TooLarge, Verdict, deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.http.config import HttpSinkConfig
from forwarder.sinks.http.sink import HttpSink
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.server import AsgiServer
from tests.helpers import SAMPLES, normalized_sample

TOKEN = "tok-9f2c61d0e4"


def docs() -> list[dict[str, Any]]:
    names = ["feature_create.json", "release_destroy.json", "comment_create_null_user.json"]
    return [normalized_sample(SAMPLES / name) for name in names]


def make_sink(url: str, **options: Any) -> HttpSink:
    sink = create_sink(HttpSinkConfig(type="http", name="generic", url=url, **options))
    assert isinstance(sink, HttpSink)
    return sink


def whole(result: BatchResult) -> Verdict:
    """The one verdict on a batch (the receiver takes or refuses a request whole)."""
    assert not result.items
    return result.whole


def prepared(sink: HttpSink, format_name: str = "ecs") -> list[bytes]:
    encode = encoder_for(format_name)
    return [sink.prepare(doc, encode(doc)) for doc in docs()]


@pytest.fixture
def receiver() -> Iterator[tuple[HttpReceiver, str]]:
    app = HttpReceiver()
    with AsgiServer(app) as server:
        yield app, server.url


async def test_ndjson_batch_arrives_as_lines_with_bearer_and_headers(
    receiver: tuple[HttpReceiver, str],
) -> None:
    app, url = receiver
    app.authorization = f"Bearer {TOKEN}"
    sink = make_sink(
        f"{url}/ingest/events",
        auth={"type": "bearer", "token": TOKEN},
        headers={"X-Source": "aha"},
    )
    await sink.start()
    assert (await sink.send_batch(prepared(sink))).delivered
    await sink.close()
    [request] = app.accepted()
    assert request.method == "POST"
    assert request.path == "/ingest/events"
    assert request.headers["content-type"] == "application/x-ndjson"
    assert request.headers["x-source"] == "aha"
    assert request.events() == docs()


async def test_json_array_gzipped_with_put(receiver: tuple[HttpReceiver, str]) -> None:
    app, url = receiver
    sink = make_sink(url, encoding="json", gzip=True, method="PUT", format="ocsf")
    await sink.start()
    assert (await sink.send_batch(prepared(sink, "ocsf"))).delivered
    await sink.close()
    [request] = app.accepted()
    assert request.method == "PUT"
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == "application/json"
    assert len(request.raw_body) < len(request.body)
    encode = encoder_for("ocsf")
    assert request.events() == [orjson.loads(encode(doc)) for doc in docs()]


async def test_cef_goes_as_text_lines(receiver: tuple[HttpReceiver, str]) -> None:
    app, url = receiver
    sink = make_sink(url, format="cef", headers={"Content-Type": "text/plain"})
    await sink.start()
    assert (await sink.send_batch(prepared(sink, "cef"))).delivered
    await sink.close()
    [request] = app.accepted()
    assert request.headers["content-type"] == "text/plain"
    encode = encoder_for("cef")
    assert request.lines() == [encode(doc) for doc in docs()]
    assert all(line.startswith(b"CEF:0|") for line in request.lines())


async def test_basic_auth_and_a_wrong_password_keeps_the_events_waiting(
    receiver: tuple[HttpReceiver, str],
) -> None:
    app, url = receiver
    app.authorization = "Basic " + base64.b64encode(b"forwarder:s3cret-pw").decode()
    good = make_sink(url, auth={"type": "basic", "username": "forwarder", "password": "s3cret-pw"})
    assert (await good.send_batch(prepared(good))).delivered
    await good.close()
    assert len(app.accepted_events()) == 3

    bad = make_sink(url, auth={"type": "basic", "username": "forwarder", "password": "wrong-pw"})
    refused = whole(await bad.send_batch(prepared(bad)))
    await bad.close()
    # A credential problem is the destination's, not the events': they wait for an operator.
    assert isinstance(refused, Retry)
    assert refused.failure is Failure.DESTINATION
    assert "HTTP 401" in refused.reason
    assert "wrong-pw" not in refused.reason
    assert len(app.accepted_events()) == 3


async def test_secret_header_auth(receiver: tuple[HttpReceiver, str]) -> None:
    app, url = receiver
    sink = make_sink(url, auth={"type": "header", "name": "X-API-Key", "value": TOKEN})
    assert (await sink.send_batch(prepared(sink))).delivered
    await sink.close()
    [request] = app.accepted()
    assert request.headers["x-api-key"] == TOKEN


@pytest.mark.parametrize(
    ("status", "retry_after", "retry_statuses", "kind", "after"),
    [
        (500, None, (), Retry, None),
        (503, "7", (), Retry, 7.0),
        (429, "7", (), Retry, 7.0),
        (408, None, (), Retry, None),
        (400, None, (), Reject, None),
        (413, None, (), TooLarge, None),  # the framework halves the batch
        (404, None, (), Retry, None),  # the URL is wrong: the events wait for an operator
        (404, "3", (404,), Retry, 3.0),
    ],
)
async def test_status_mapping(
    receiver: tuple[HttpReceiver, str],
    status: int,
    retry_after: str | None,
    retry_statuses: tuple[int, ...],
    kind: type[Verdict],
    after: float | None,
) -> None:
    app, url = receiver
    app.statuses.append(status)
    app.retry_after = retry_after
    sink = make_sink(url, retry_statuses=retry_statuses)
    verdict = whole(await sink.send_batch(prepared(sink)))
    assert isinstance(verdict, kind)
    assert (verdict.after if isinstance(verdict, Retry) else None) == after
    assert isinstance(verdict, Retry | Reject | TooLarge) and f"HTTP {status}" in verdict.reason
    # The next request is answered 200: the same batch goes through.
    assert (await sink.send_batch(prepared(sink))).delivered
    await sink.close()
    assert len(app.accepted_events()) == 3


async def test_the_token_in_the_url_path_stays_out_of_errors(
    receiver: tuple[HttpReceiver, str],
) -> None:
    app, url = receiver
    app.default_status = 503
    sink = make_sink(f"{url}/receiver/v1/http/{TOKEN}")
    verdict = whole(await sink.send_batch(prepared(sink)))
    await sink.close()
    assert isinstance(verdict, Retry)
    assert TOKEN not in verdict.reason
    assert url in verdict.reason


async def test_slow_receiver_times_out_retriably(receiver: tuple[HttpReceiver, str]) -> None:
    app, url = receiver
    app.delay_seconds = 2.0
    sink = make_sink(url, http={"timeout_seconds": 0.3})
    started = time.monotonic()
    verdict = whole(await sink.send_batch(prepared(sink)))
    await sink.close()
    assert isinstance(verdict, Retry)
    assert "Timeout" in verdict.reason
    assert time.monotonic() - started < 1.5


async def test_nothing_listening_is_retriable() -> None:
    with AsgiServer(HttpReceiver()) as server:
        url = server.url
    sink = make_sink(url)
    verdict = whole(await sink.send_batch(prepared(sink)))
    await sink.close()
    assert isinstance(verdict, Retry)
    assert "ConnectError" in verdict.reason


async def test_deliver_retries_until_the_receiver_takes_the_batch(
    receiver: tuple[HttpReceiver, str],
) -> None:
    app, url = receiver
    app.statuses.extend([503, 429])
    sink = make_sink(url)
    registry = CollectorRegistry()
    outcome = await deliver(
        sink,
        prepared(sink),
        SinkMetrics(registry),
        RetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.05),
    )
    await sink.close()
    assert outcome.delivered == [0, 1, 2]
    assert outcome.attempts == 3
    assert [request.status for request in app.requests] == [503, 429, 200]
    assert app.accepted_events() == docs()
    assert registry.get_sample_value("aha_siem_sink_retries_total", {"sink": "generic"}) == 2


async def test_a_413_sends_the_batch_again_in_halves_and_a_lone_event_refused_goes_to_the_dlq(
    receiver: tuple[HttpReceiver, str],
) -> None:
    app, url = receiver
    # The whole batch, then its first half (one event) are too large; the rest fits.
    app.statuses.extend([413, 413])
    sink = make_sink(url)
    outcome = await deliver(sink, prepared(sink), SinkMetrics(CollectorRegistry()), RetryConfig())
    await sink.close()
    assert [len(request.events()) for request in app.requests] == [3, 1, 2]
    assert sorted(outcome.delivered) == [1, 2] and outcome.attempts == 1
    assert outcome.rejected[0].startswith("too large for the destination, even alone: POST ")
    assert "HTTP 413" in outcome.rejected[0]
    assert app.accepted_events() == docs()[1:]


async def test_healthcheck(receiver: tuple[HttpReceiver, str]) -> None:
    app, url = receiver
    app.authorization = f"Bearer {TOKEN}"
    auth = {"type": "bearer", "token": TOKEN}
    sink = make_sink(url, healthcheck_url=f"{url}/health", auth=auth)
    await sink.healthcheck()
    assert app.health_checks == 1
    app.health_status = 503
    with pytest.raises(SinkError, match="HTTP 503"):
        await sink.healthcheck()
    await sink.close()

    unchecked = make_sink(url)
    await unchecked.healthcheck()
    await unchecked.close()
    assert app.health_checks == 2
    assert app.requests == []


async def test_over_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in server_cert.cert_chain_pems[1:]:
        pem.write_to_path(str(certfile), append=True)
    server_cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(ca_file))
    app = HttpReceiver()
    with AsgiServer(app, certfile=certfile, keyfile=keyfile) as server:
        assert server.url.startswith("https://")
        trusting = make_sink(server.url, http={"tls": {"ca_file": str(ca_file)}})
        assert (await trusting.send_batch(prepared(trusting))).delivered
        await trusting.close()

        stranger = make_sink(server.url)
        refused = whole(await stranger.send_batch(prepared(stranger)))
        await stranger.close()
    assert isinstance(refused, Retry)
    assert "CERTIFICATE_VERIFY_FAILED" in refused.reason
    assert app.accepted_events() == docs()
