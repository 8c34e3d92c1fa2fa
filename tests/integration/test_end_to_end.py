"""Every sample body over HTTP, back as ECS events from Kafka and from the file sink."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path

import httpx
import orjson
import pytest

from forwarder.records import record_key
from tests.helpers import sample_paths
from tests.integration.conftest import Stack
from tests.integration.kafka_io import partition_count, read_topic
from tests.schema import assert_valid_event

pytestmark = pytest.mark.integration


def wait_for_lines(path, expected: int, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_bytes().splitlines()
            if len(lines) >= expected:
                break
        time.sleep(0.2)
    return [orjson.loads(line) for line in lines]


async def test_every_sample_reaches_kafka_and_the_file_sink_as_ecs(
    stack: Stack, kafka_bootstrap: str
) -> None:
    # One audit per record here; the collation burst has a test of its own (test_dedupe.py).
    bodies = {
        path.name: path.read_bytes() for path in sample_paths() if path.parent.name != "collation"
    }
    async with httpx.AsyncClient() as client:
        for name, body in bodies.items():
            response = await client.post(
                stack.webhook_url(), content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 202, (name, response.text)

    by_hash = {hashlib.sha256(body).hexdigest(): (name, body) for name, body in bodies.items()}
    topics = stack.config.topics

    # The project creates its topics itself, with the configured partitions.
    for name in (topics.raw, topics.invalid, topics.events, f"{topics.dlq_prefix}file"):
        assert await partition_count(kafka_bootstrap, name) == topics.partitions, name

    raw = await read_topic(kafka_bootstrap, topics.raw, len(bodies))
    assert sorted(record.value for record in raw) == sorted(bodies.values())
    for record in raw:
        name, body = by_hash[record.headers["body-sha256"]]
        assert record.key == record_key(orjson.loads(body), record.headers["body-sha256"]), name
        assert record.headers["source"] == "webhook"
        assert record.headers["token-id"] == "acme-prod"
        assert record.headers["source-ip"] == "127.0.0.1"

    events = await read_topic(kafka_bootstrap, topics.events, len(bodies))
    assert len(events) == len(bodies)
    shipped = {}
    for record in events:
        doc = orjson.loads(record.value)
        assert_valid_event(doc)
        name, body = by_hash[doc["event"]["hash"]]
        parsed = orjson.loads(body)
        inner = parsed[parsed["event"]]
        assert record.key == record_key(parsed, doc["event"]["hash"]), name
        assert doc["@timestamp"] == inner["created_at"], name
        assert doc["event"]["id"] == inner["id"], name
        assert doc["organization"] == {"id": "acme-prod", "name": "acme"}, name
        assert doc["aha"]["ingest"]["source"] == "webhook", name
        assert record.headers["received-at"] == doc["aha"]["ingest"]["received_at"], name
        # Consumers tell the event contract's version by a header, and its schema is published.
        version = record.headers["schema-version"]
        assert (SCHEMAS / f"aha-audit-event.v{version}.json").is_file(), name
        shipped[doc["event"]["hash"]] = doc
    assert set(shipped) == set(by_hash)

    lines = wait_for_lines(stack.events_file, len(bodies))
    assert {line["event"]["hash"]: line for line in lines} == shipped

    # A second sink on the same events, in its own format: one CEF line per event.
    cef_file = stack.events_file.with_suffix(".cef")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not cef_file.exists() or len(cef_file.read_bytes().splitlines()) < len(bodies)
    ):
        await asyncio.sleep(0.2)
    cef_lines = cef_file.read_text().splitlines()
    assert len(cef_lines) == len(bodies)
    assert all(line.startswith("CEF:0|Aha!|Aha! Roadmaps|") for line in cef_lines)
    assert {
        f"externalId={doc['event']['id']}" for doc in shipped.values() if "id" in doc["event"]
    } <= {part for line in cef_lines for part in line.split(" ") if part.startswith("externalId=")}

    async with httpx.AsyncClient() as client:
        metrics = (await client.get(stack.metrics_url)).text
    assert f'aha_siem_sink_events_sent_total{{sink="file"}} {float(len(bodies))}' in metrics


async def test_rejected_webhooks_get_json_errors_and_invalid_bodies_are_kept(
    stack: Stack, kafka_bootstrap: str
) -> None:
    async with httpx.AsyncClient() as client:
        unauthorized = await client.post(stack.webhook_url("not-the-token"), content=b"{}")
        invalid = await client.post(stack.webhook_url(), content=b'{"event": "audit"}')
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"] == "unauthorized"
    assert invalid.status_code == 400
    assert "object under `audit`" in invalid.json()["message"]
    [kept] = await read_topic(kafka_bootstrap, stack.config.topics.invalid, 1)
    assert kept.value == b'{"event": "audit"}'
    assert "object under `audit`" in kept.headers["error"]
    # The token reaches no log line.
    for path in stack.logs.values():
        assert stack.token not in path.read_text()


SCHEMAS = Path(__file__).resolve().parents[2] / "forwarder" / "schemas"


def documented_metrics() -> dict[str, str]:
    """Name -> type, from the catalogue in docs/metrics.md."""
    catalogue = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    rows = re.findall(
        r"^\| `(aha_siem_[a-z0-9_]+)` \| (\w+) \|[^|]*\| ([\w, ]+) \|", catalogue.read_text(), re.M
    )
    # The reconcile process is not part of the stack; tests/integration/test_reconcile.py has it.
    # Nor are detections (off by default); tests/integration/test_alerts.py has them.
    return {
        name: kind for name, kind, process in rows if process not in {"reconcile", "detections"}
    }


async def test_the_metrics_catalogue_is_what_the_processes_expose(stack: Stack) -> None:
    async with httpx.AsyncClient() as client:
        ingest = (await client.get(f"{stack.url}/metrics")).text
        worker = (await client.get(stack.metrics_url)).text
    # One HELP and TYPE per family, though the worker serves its sink processes' metrics too.
    types = re.findall(r"^# TYPE (\S+) ", worker, re.M)
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    exposed = dict(re.findall(r"^# TYPE (aha_siem_[a-z0-9_]+) (\w+)$", ingest + worker, re.M))
    assert exposed == documented_metrics()
