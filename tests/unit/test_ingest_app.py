from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from forwarder.config import Config, hash_token, parse
from forwarder.ingest.app import IngestApp, TokenTable
from forwarder.ingest.spool import SpoolFull
from tests.helpers import SAMPLES, RecordingWriter

TOKEN = "s3cret-token-for-tests"
BASIC_TOKEN = "token-that-also-needs-basic"
SAMPLE = (SAMPLES / "feature_update_status.json").read_bytes()


def make_config(**ingest: Any) -> Config:
    return parse(
        {
            "ingest": {
                "tokens": [
                    {"name": "acme-prod", "sha256": hash_token(TOKEN), "account": "acme"},
                    {"name": "other", "sha256": hash_token("other-token")},
                    {
                        "name": "basic",
                        "sha256": hash_token(BASIC_TOKEN),
                        "basic_auth": {"username": "aha", "password_sha256": hash_token("pa:ss")},
                    },
                ],
                "max_body_bytes": 4096,
                **ingest,
            }
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, config: Config, peer: str = "198.51.100.7") -> None:
        self.writer = RecordingWriter()
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.app = IngestApp(config, self.writer, self.registry, clock=self.clock)
        self.app._started = True
        self.transport = httpx.ASGITransport(app=self.app, client=(peer, 4711))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport, base_url="http://ingest")

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def run_lifespan(app: IngestApp, *phases: str) -> list[str]:
    sent: list[str] = []
    queue = [{"type": f"lifespan.{phase}"} for phase in phases]

    async def receive() -> dict[str, str]:
        return queue.pop(0)

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    return sent


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(make_config())
    await h.writer.start()
    yield h


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    async with harness.client() as http:
        yield http


async def test_accepted_body_is_written_unchanged_with_key_and_headers(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    response = await client.post(
        f"/v1/aha/{TOKEN}",
        content=SAMPLE,
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    [(topic, value, key, headers)] = harness.writer.sent
    assert topic == "aha.audit.raw"
    assert value == SAMPLE
    assert key == b"feature:7712852070702501001"
    assert headers["token-id"] == "acme-prod"
    assert headers["source"] == "webhook"
    assert headers["source-ip"] == "198.51.100.7"
    assert headers["body-sha256"] == hashlib.sha256(SAMPLE).hexdigest()
    assert headers["received-at"].endswith("Z")


@pytest.mark.parametrize("path", ["/v1/aha/wrong-token", "/v1/aha/", f"/v1/aha/{TOKEN}/extra"])
async def test_unknown_token_is_401_and_nothing_is_written(
    client: httpx.AsyncClient, harness: Harness, path: str
) -> None:
    response = await client.post(path, content=SAMPLE)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert TOKEN not in response.text
    assert harness.writer.sent == []


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (basic("aha", "pa:ss"), 202),
        (basic("aha", "wrong"), 401),
        (basic("other", "pa:ss"), 401),
        ({}, 401),
        ({"authorization": "Basic !!!not-base64"}, 401),
        ({"authorization": "Bearer pa:ss"}, 401),
    ],
)
async def test_basic_credentials_are_required_for_a_token_that_has_them(
    client: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    response = await client.post(f"/v1/aha/{BASIC_TOKEN}", content=SAMPLE, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")


async def test_tokens_without_basic_credentials_ignore_the_header(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE, headers=basic("x", "y"))
    assert response.status_code == 202


async def test_failed_authentications_are_rate_limited_per_client() -> None:
    h = Harness(make_config(auth_failures_per_minute=6, auth_failure_burst=3))
    async with h.client() as http:
        statuses = [
            (await http.post("/v1/aha/guess", content=SAMPLE)).status_code for _ in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        # The right token does not help while locked out: guessing stays pointless.
        locked = await http.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
        assert locked.status_code == 429
        assert locked.headers["retry-after"]
        h.clock.now += 10.0  # one token back at 6 per minute
        assert (await http.post(f"/v1/aha/{TOKEN}", content=SAMPLE)).status_code == 202
    other = Harness(make_config())
    other.app._auth_failures = h.app._auth_failures
    other.transport = httpx.ASGITransport(app=other.app, client=("203.0.113.50", 1))
    async with other.client() as http:
        assert (await http.post(f"/v1/aha/{TOKEN}", content=SAMPLE)).status_code == 202
    assert h.metric("aha_siem_ingest_rejected_total", reason="rate_limited") == 2


async def test_allow_list_and_trusted_proxy() -> None:
    config = make_config(allowed_cidrs=["203.0.113.0/24"], trusted_proxies=["10.0.0.0/8"])
    direct = Harness(config, peer="198.51.100.7")
    async with direct.client() as http:
        refused = await http.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
        assert refused.status_code == 403
        assert refused.json()["error"] == "forbidden"
        # A client outside the proxy cannot claim an allowed address.
        forged = await http.post(
            f"/v1/aha/{TOKEN}", content=SAMPLE, headers={"x-forwarded-for": "203.0.113.9"}
        )
        assert forged.status_code == 403
    proxied = Harness(config, peer="10.1.2.3")
    async with proxied.client() as http:
        ok = await http.post(
            f"/v1/aha/{TOKEN}", content=SAMPLE, headers={"x-forwarded-for": "203.0.113.9"}
        )
        assert ok.status_code == 202
        denied = await http.post(
            f"/v1/aha/{TOKEN}", content=SAMPLE, headers={"x-forwarded-for": "192.0.2.1"}
        )
        assert denied.status_code == 403
    assert proxied.writer.sent[0][3]["source-ip"] == "203.0.113.9"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"audit": {}}', "`event`"),
        (b'{"event": "audit"}', "object under `audit`"),
        (b'{"event": "audit", "audit": "text"}', "object under `audit`"),
    ],
)
async def test_invalid_body_is_400_with_json_error_and_kept_on_the_invalid_topic(
    client: httpx.AsyncClient, harness: Harness, body: bytes, reason: str
) -> None:
    response = await client.post(f"/v1/aha/{TOKEN}", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert reason in response.json()["message"]
    [(topic, value, key, headers)] = harness.writer.sent
    assert topic == "aha.audit.invalid"
    assert value == body
    assert key == hashlib.sha256(body).hexdigest().encode()
    assert reason in headers["error"]
    assert headers["token-id"] == "acme-prod"


async def test_invalid_bodies_kept_are_bounded_by_rate_and_the_rest_counted() -> None:
    h = Harness(make_config(invalid_per_second=1, invalid_burst=2))
    async with h.client() as http:
        statuses = [
            (await http.post(f"/v1/aha/{TOKEN}", content=b"nope")).status_code for _ in range(5)
        ]
    assert statuses == [400] * 5
    assert len(h.writer.sent) == 2
    assert h.metric("aha_siem_ingest_invalid_dropped_total", reason="rate_limited") == 3


async def test_unknown_event_type_is_accepted(client: httpx.AsyncClient, harness: Harness) -> None:
    body = (SAMPLES / "security_event_unknown_type.json").read_bytes()
    response = await client.post(f"/v1/aha/{TOKEN}", content=body)
    assert response.status_code == 202
    assert harness.writer.sent[0][2] == b"security:7712852328277082131"


async def test_oversized_body_is_413(client: httpx.AsyncClient, harness: Harness) -> None:
    body = orjson.dumps({"event": "audit", "audit": {"description": "x" * 5000}})
    response = await client.post(f"/v1/aha/{TOKEN}", content=body)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:3000]
        yield body[3000:]

    # No Content-Length: the limit holds while the body streams in.
    streamed = await client.post(f"/v1/aha/{TOKEN}", content=chunks())
    assert streamed.status_code == 413
    assert harness.writer.sent == []


async def test_gzip_body_is_decoded_and_stored_decoded(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    response = await client.post(
        f"/v1/aha/{TOKEN}", content=gzip.compress(SAMPLE), headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 202
    assert harness.writer.sent[0][1] == SAMPLE


async def test_gzip_bomb_is_413_without_inflating_it(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    bomb = gzip.compress(b'{"event":"audit","audit":{"d":"' + b"0" * 3_000_000 + b'"}}')
    assert len(bomb) < 4096
    response = await client.post(
        f"/v1/aha/{TOKEN}", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 413
    assert harness.writer.sent == []


async def test_broken_gzip_is_400_and_kept(client: httpx.AsyncClient, harness: Harness) -> None:
    broken = gzip.compress(SAMPLE)[:-20]
    response = await client.post(
        f"/v1/aha/{TOKEN}", content=broken, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 400
    assert "gzip" in response.json()["message"]
    assert harness.writer.sent[0][0] == "aha.audit.invalid"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"content-type": "text/plain"}, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, "unsupported_media_type"),
        ({"content-encoding": "br"}, "unsupported_encoding"),
    ],
)
async def test_unsupported_content_is_415(
    client: httpx.AsyncClient, harness: Harness, headers: dict[str, str], error: str
) -> None:
    response = await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"] == error
    assert harness.writer.sent == []


async def test_slow_body_is_408() -> None:
    h = Harness(make_config(body_timeout_seconds=0.2))

    async def trickle() -> AsyncIterator[bytes]:
        yield SAMPLE[:10]
        await asyncio.sleep(1.0)
        yield SAMPLE[10:]

    async with h.client() as http:
        response = await http.post(f"/v1/aha/{TOKEN}", content=trickle())
    assert response.status_code == 408
    assert response.json()["error"] == "body_timeout"


async def test_too_many_concurrent_requests_get_503_json() -> None:
    h = Harness(make_config(max_concurrent_requests=2))
    release = asyncio.Event()

    async def slow_write(*args: Any) -> str:
        await release.wait()
        return "kafka"

    h.writer.write = slow_write  # type: ignore[method-assign]
    async with h.client() as http:
        held = [
            asyncio.create_task(http.post(f"/v1/aha/{TOKEN}", content=SAMPLE)) for _ in range(2)
        ]
        await asyncio.sleep(0.1)
        overloaded = await http.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
        release.set()
        assert [(await task).status_code for task in held] == [202, 202]
    assert overloaded.status_code == 503
    assert overloaded.json()["error"] == "overloaded"


async def test_spool_full_is_503_and_other_failures_never_202(
    client: httpx.AsyncClient, harness: Harness
) -> None:
    harness.writer.fail = SpoolFull("spool at its 1 GiB limit")
    full = await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
    assert full.status_code == 503
    assert full.json()["error"] == "spool_full"
    harness.writer.fail = OSError(5, "I/O error")
    broken = await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
    assert broken.status_code == 503
    assert harness.metric("aha_siem_ingest_rejected_total", reason="spool_full") == 1


async def test_get_on_webhook_route_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/v1/aha/{TOKEN}")).status_code == 405


async def test_health_readiness_and_metrics(client: httpx.AsyncClient, harness: Harness) -> None:
    await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
    await client.post("/v1/aha/nope", content=SAMPLE)
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'aha_siem_ingest_requests_total{route="webhook",status="202"} 1.0' in metrics
    assert 'aha_siem_ingest_rejected_total{reason="unauthorized"} 1.0' in metrics
    assert f"aha_siem_ingest_received_bytes_total {float(len(SAMPLE))}" in metrics
    assert TOKEN not in metrics
    harness.writer.fail = ConnectionError("down")
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get("/nowhere")).status_code == 404


async def test_lifespan_starts_and_stops_the_writer() -> None:
    writer = RecordingWriter()
    app = IngestApp(make_config(), writer, CollectorRegistry())
    assert await run_lifespan(app, "startup", "shutdown") == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert writer.started is False


async def test_lifespan_reports_a_writer_that_cannot_start() -> None:
    class Broken(RecordingWriter):
        async def start(self) -> None:
            raise PermissionError("spool folder not writable")

    app = IngestApp(make_config(), Broken(), CollectorRegistry())
    assert await run_lifespan(app, "startup") == ["lifespan.startup.failed"]


def test_token_table_matches_each_token_and_rejects_near_misses() -> None:
    table = TokenTable(make_config().ingest.tokens)
    assert table.match(TOKEN).name == "acme-prod"  # type: ignore[union-attr]
    assert table.match("other-token").name == "other"  # type: ignore[union-attr]
    assert table.match(TOKEN[:-1]) is None
    assert table.match(TOKEN + "x") is None
    assert table.match("") is None


async def test_every_webhook_answer_carries_a_request_id_that_follows_the_record(
    client: httpx.AsyncClient, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    first = await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
    second = await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
    ids = [answer.headers["x-request-id"] for answer in (first, second)]
    assert ids[0] != ids[1]
    assert [answer.json()["request_id"] for answer in (first, second)] == ids
    assert [headers["request-id"] for *_, headers in harness.writer.sent] == ids
    # A sane id offered by a proxy is kept; anything else is replaced.
    offered = await client.post(
        f"/v1/aha/{TOKEN}", content=SAMPLE, headers={"x-request-id": "lb-7f3a.01"}
    )
    assert offered.headers["x-request-id"] == "lb-7f3a.01"
    hostile = await client.post(
        f"/v1/aha/{TOKEN}", content=SAMPLE, headers={"x-request-id": "a\tb" + "x" * 80}
    )
    assert hostile.headers["x-request-id"] != "a\tb" + "x" * 80
    # Refusals carry one too, in the answer and in what is logged about them.
    refused = await client.post("/v1/aha/wrong-token", content=SAMPLE)
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    harness.writer.fail = OSError("broker gone")
    with caplog.at_level("ERROR", logger="forwarder.ingest"):
        failed = await client.post(f"/v1/aha/{TOKEN}", content=SAMPLE)
    assert failed.status_code == 503
    from forwarder.logs import JsonFormatter

    lines = [orjson.loads(JsonFormatter().format(record)) for record in caplog.records]
    assert lines
    assert {line.get("request_id") for line in lines} == {failed.headers["x-request-id"]}
