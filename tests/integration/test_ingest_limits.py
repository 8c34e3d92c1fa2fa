"""The ingest never answers 202 for what Kafka cannot take, and one refused record blocks nothing.

Against the real broker: a topic with a small max.message.bytes stands for any limit below
ingest.max_body_bytes (a cluster's own, a topic created by hand).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from forwarder.ingest.spool import Spool, SpoolRecord
from tests.helpers import SAMPLES
from tests.integration.conftest import wait_http_ok
from tests.integration.kafka_io import read_topic
from tests.integration.test_ingest_server import TOKEN, ingest_config, ingest_process

TOPIC_LIMIT = 200_000


def audit_body(audit_id: int, padding: int = 0) -> bytes:
    body = orjson.loads((SAMPLES / "feature_create.json").read_bytes())
    body["audit"]["id"] = str(audit_id)
    body["audit"]["auditable_id"] = str(audit_id)
    if padding:
        body["audit"]["description"] = "x" * padding
    return orjson.dumps(body)


def wait_for_metric(url: str, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in (text := httpx.get(url).text):
        assert time.monotonic() < deadline, f"{line!r} not in /metrics:\n{text}"
        time.sleep(0.2)


def small_topics(tmp: Path, bootstrap: str) -> dict[str, Any]:
    tree = ingest_config(tmp, bootstrap)
    run = time.monotonic_ns()
    tree["topics"] = {
        "raw": f"limits-{run}.raw",
        "invalid": f"limits-{run}.invalid",
        "partitions": 1,
    }

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(name, 1, 1, topic_configs={"max.message.bytes": str(TOPIC_LIMIT)})
                    for name in (tree["topics"]["raw"], tree["topics"]["invalid"])
                ]
            )
        finally:
            await admin.close()

    asyncio.run(create())
    return tree


def test_a_body_too_large_for_the_raw_topic_is_answered_413_not_202(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    tree = small_topics(tmp_path, kafka_bootstrap)
    port = tree["ingest"]["port"]
    url = f"http://127.0.0.1:{port}/v1/aha/{TOKEN}"
    with ingest_process(tmp_path, tree) as process:
        wait_http_ok(
            f"http://127.0.0.1:{port}/readyz", [process], {"ingest": tmp_path / "ingest.log"}
        )
        # Ready means the spool takes bodies; the topic's limit is known once Kafka answered.
        # (A body accepted before that and refused later is quarantined: the next test.)
        limit = f'aha_siem_ingest_kafka_max_record_bytes{{topic="{tree["topics"]["raw"]}"}}'
        wait_for_metric(f"http://127.0.0.1:{port}/metrics", f"{limit} {float(TOPIC_LIMIT)}")
        large = httpx.post(url, content=audit_body(1, padding=TOPIC_LIMIT), timeout=10)
        assert large.status_code == 413, large.text
        assert large.json()["error"] == "too_large"
        assert str(TOPIC_LIMIT) in large.json()["message"]
        # An invalid body of that size is kept cut to fit, with the size it had.
        invalid = httpx.post(url, content=b"[" + b"1," * TOPIC_LIMIT, timeout=10)
        assert invalid.status_code == 400
        small = [httpx.post(url, content=audit_body(10 + n), timeout=10) for n in range(3)]
        assert [answer.status_code for answer in small] == [202] * 3
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    raw = asyncio.run(read_topic(kafka_bootstrap, tree["topics"]["raw"], 3, timeout=30))
    assert sorted(orjson.loads(r.value)["audit"]["id"] for r in raw) == ["10", "11", "12"]
    [kept] = asyncio.run(read_topic(kafka_bootstrap, tree["topics"]["invalid"], 1, timeout=30))
    assert kept.headers["truncated-from"] == str(2 * TOPIC_LIMIT + 1)
    assert len(kept.value) < TOPIC_LIMIT
    assert 'aha_siem_ingest_rejected_total{reason="too_large"} 1.0' in metrics
    assert "aha_siem_ingest_invalid_truncated_total 1.0" in metrics


def test_a_spooled_record_kafka_refuses_is_quarantined_and_the_rest_are_delivered(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    tree = small_topics(tmp_path, kafka_bootstrap)
    raw_topic = tree["topics"]["raw"]
    # A spool left by a process that accepted a body the topic cannot take (an older version,
    # or a topic whose limit was lowered): it sits at the head of the queue.
    spool = Spool(Path(tree["ingest"]["spool"]["directory"]), max_bytes=1 << 30)
    spool.open()

    def spooled(audit_id: int, padding: int = 0) -> SpoolRecord:
        return SpoolRecord(raw_topic, b"feature:%d" % audit_id, audit_body(audit_id, padding), ())

    async def fill() -> None:
        for record in [spooled(1, padding=TOPIC_LIMIT), *(spooled(n) for n in range(2, 6))]:
            await spool.append(record)
        await spool.close()

    asyncio.run(fill())
    port = tree["ingest"]["port"]
    with ingest_process(tmp_path, tree):
        raw = asyncio.run(read_topic(kafka_bootstrap, raw_topic, 4, timeout=60))
        assert sorted(orjson.loads(r.value)["audit"]["id"] for r in raw) == ["2", "3", "4", "5"]
        # Later webhooks are delivered too.
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/aha/{TOKEN}", content=audit_body(6))
        assert answer.status_code == 202
        raw = asyncio.run(read_topic(kafka_bootstrap, raw_topic, 5, timeout=30))
        assert len(raw) == 5
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "aha_siem_ingest_spool_quarantine_records 1.0" in metrics
    assert (
        'aha_siem_ingest_spool_quarantined_total{reason="MessageSizeTooLargeError",'
        f'topic="{raw_topic}"}} 1.0'
    ) in metrics
    config_path = tmp_path / "ingest.yaml"
    listing = subprocess.run(
        [sys.executable, "-m", "forwarder", "spool", "quarantine", "list", "-c", str(config_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = listing.stdout.splitlines()
    assert raw_topic in line and "MessageSizeTooLargeError" in line
    shown = subprocess.run(
        [sys.executable, "-m", "forwarder", "spool", "quarantine", "show", "-c", str(config_path)],
        capture_output=True,
        check=True,
    )
    assert orjson.loads(shown.stdout)["key"] == "feature:1"


def test_header_limits_are_answered_431(tmp_path: Path) -> None:
    tree = ingest_config(tmp_path, "127.0.0.1:1")
    port = tree["ingest"]["port"]
    with ingest_process(tmp_path, tree):

        def exchange(head: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.settimeout(10)
                client.sendall(head)
                chunks = []
                while chunk := client.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        start = f"POST /v1/aha/{TOKEN} HTTP/1.1\r\nHost: ingest\r\nContent-Length: 2\r\n".encode()
        big = exchange(start + b"X-Big: " + b"a" * 1_000_000 + b"\r\n\r\n{}")
        assert big.startswith(b"HTTP/1.1 431"), big[:100]
        assert orjson.loads(big.split(b"\r\n\r\n", 1)[1])["error"] == "header_too_large"
        many = exchange(start + b"".join(b"X-H%d: v\r\n" % n for n in range(10_000)) + b"\r\n{}")
        assert many.startswith(b"HTTP/1.1 431"), many[:100]
        # A normal request on a new connection is served as before.
        normal = httpx.post(f"http://127.0.0.1:{port}/healthz")
        assert normal.status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'aha_siem_ingest_rejected_total{reason="header_too_large"} 2.0' in metrics


def test_a_topic_limit_changed_on_the_cluster_is_learned_without_a_restart(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: Any
) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from forwarder import kafka_client
    from forwarder.config import Config

    monkeypatch.setattr(kafka_client, "LIMITS_REFRESH_SECONDS", 0.2)
    tree = small_topics(tmp_path, kafka_bootstrap)
    config = Config.model_validate(tree)
    raw = tree["topics"]["raw"]

    async def scenario() -> list[int]:
        producer = kafka_client.KafkaBodyProducer(config, role="ingest")
        await producer.start()
        seen = [producer.max_record_bytes(raw)]
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, raw, {"max.message.bytes": "150000"})]
            )
        finally:
            await admin.close()
        deadline = time.monotonic() + 20
        while producer.max_record_bytes(raw) == seen[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        seen.append(producer.max_record_bytes(raw))
        await producer.stop()
        return seen

    assert asyncio.run(scenario()) == [TOPIC_LIMIT, 150_000]
