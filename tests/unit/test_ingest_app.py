from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from forwarder.config import hash_token, parse
from forwarder.ingest.app import IngestApp, TokenTable
from tests.helpers import SAMPLES, RecordingProducer

TOKEN = "s3cret-token-for-tests"


def make_config(**ingest: Any):
    return parse(
        {
            "ingest": {
                "tokens": [
                    {"name": "acme-prod", "sha256": hash_token(TOKEN), "account": "acme"},
                    {"name": "other", "sha256": hash_token("other-token")},
                ],
                **ingest,
            }
        }
    )


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
def producer() -> RecordingProducer:
    return RecordingProducer()


@pytest.fixture
async def client(producer: RecordingProducer) -> AsyncIterator[httpx.AsyncClient]:
    app = IngestApp(make_config(max_body_bytes=4096), producer, CollectorRegistry())
    app._started = True
    await producer.start()
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
        yield http


async def test_accepted_body_is_produced_unchanged_with_key_and_headers(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    body = (SAMPLES / "feature_update_status.json").read_bytes()
    response = await client.post(
        f"/v1/aha/{TOKEN}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    [(topic, value, key, headers)] = producer.sent
    assert topic == "aha.audit.raw"
    assert value == body
    assert key == b"feature:7712852070702501001"
    assert headers["token-id"] == "acme-prod"
    assert headers["source"] == "webhook"
    assert headers["source-ip"] == "198.51.100.7"
    assert headers["body-sha256"] == hashlib.sha256(body).hexdigest()
    assert headers["received-at"].endswith("Z")


@pytest.mark.parametrize("path", ["/v1/aha/wrong-token", "/v1/aha/", f"/v1/aha/{TOKEN}/extra"])
async def test_unknown_token_is_401_and_nothing_is_produced(
    client: httpx.AsyncClient, producer: RecordingProducer, path: str
) -> None:
    response = await client.post(path, content=b'{"event":"audit","audit":{}}')
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert TOKEN not in response.text
    assert producer.sent == []


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
    client: httpx.AsyncClient, producer: RecordingProducer, body: bytes, reason: str
) -> None:
    response = await client.post(f"/v1/aha/{TOKEN}", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert reason in response.json()["message"]
    [(topic, value, key, headers)] = producer.sent
    assert topic == "aha.audit.invalid"
    assert value == body
    assert key == hashlib.sha256(body).hexdigest().encode()
    assert reason in headers["error"]


async def test_unknown_event_type_is_accepted(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    body = (SAMPLES / "security_event_unknown_type.json").read_bytes()
    response = await client.post(f"/v1/aha/{TOKEN}", content=body)
    assert response.status_code == 202
    assert producer.sent[0][2] == b"security:7712852328277082131"


async def test_oversized_body_is_413(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    body = orjson.dumps({"event": "audit", "audit": {"description": "x" * 5000}})
    response = await client.post(f"/v1/aha/{TOKEN}", content=body)
    assert response.status_code == 413
    assert producer.sent == []


async def test_kafka_failure_is_503_never_202(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    producer.fail = ConnectionError("broker down")
    body = (SAMPLES / "feature_create.json").read_bytes()
    response = await client.post(f"/v1/aha/{TOKEN}", content=body)
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"


async def test_get_on_webhook_route_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/v1/aha/{TOKEN}")).status_code == 405


async def test_health_readiness_and_metrics(
    client: httpx.AsyncClient, producer: RecordingProducer
) -> None:
    body = (SAMPLES / "feature_create.json").read_bytes()
    await client.post(f"/v1/aha/{TOKEN}", content=body)
    await client.post("/v1/aha/nope", content=body)
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'aha_siem_ingest_requests_total{route="webhook",status="202"} 1.0' in metrics
    assert 'aha_siem_ingest_rejected_total{reason="unauthorized"} 1.0' in metrics
    assert f"aha_siem_ingest_received_bytes_total {float(len(body))}" in metrics
    assert TOKEN not in metrics
    producer.fail = ConnectionError("down")
    app_ready = await client.get("/readyz")
    assert app_ready.status_code == 503
    assert (await client.get("/nowhere")).status_code == 404


async def test_lifespan_starts_and_stops_the_producer() -> None:
    producer = RecordingProducer()
    app = IngestApp(make_config(), producer, CollectorRegistry())
    assert await run_lifespan(app, "startup", "shutdown") == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert producer.started is False


async def test_lifespan_reports_a_producer_that_cannot_start() -> None:
    class Broken(RecordingProducer):
        async def start(self) -> None:
            raise ConnectionError("no brokers")

    app = IngestApp(make_config(), Broken(), CollectorRegistry())
    assert await run_lifespan(app, "startup") == ["lifespan.startup.failed"]


def test_token_table_matches_each_token_and_rejects_near_misses() -> None:
    table = TokenTable(make_config().ingest.tokens)
    assert table.match(TOKEN) == "acme-prod"
    assert table.match("other-token") == "other"
    assert table.match(TOKEN[:-1]) is None
    assert table.match(TOKEN + "x") is None
    assert table.match("") is None
