"""The ingest as a real server: slow clients, TLS with reload, and Kafka outages with the spool."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
import yaml

from forwarder import devbroker
from forwarder.config import hash_token
from tests.integration.conftest import free_port, wait_http_ok
from tests.integration.kafka_io import read_topic

pytestmark = pytest.mark.integration

TOKEN = "ingest-server-test-token"


def ingest_config(tmp: Path, bootstrap: str, **ingest: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap, "request_timeout_seconds": 3},
        "topics": {"partitions": 2},
        "ingest": {
            "host": "127.0.0.1",
            "port": free_port(),
            "tokens": [{"name": "acme-prod", "sha256": hash_token(TOKEN), "account": "acme"}],
            "produce_timeout_seconds": 1.0,
            "spool": {"directory": str(tmp / "spool")},
            **ingest,
        },
    }


@contextmanager
def ingest_process(
    tmp: Path, tree: dict[str, Any], name: str = "ingest"
) -> Iterator[subprocess.Popen[bytes]]:
    config_path = tmp / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    log_path = tmp / f"{name}.log"
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "forwarder", "ingest", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        scheme = "https" if tree["ingest"].get("tls") else "http"
        if scheme == "http":
            wait_http_ok(
                f"http://127.0.0.1:{tree['ingest']['port']}/healthz", [process], {name: log_path}
            )
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_connections_that_trickle_headers_or_send_nothing_are_closed(tmp_path: Path) -> None:
    tree = ingest_config(tmp_path, "127.0.0.1:1", header_timeout_seconds=1.0)
    with ingest_process(tmp_path, tree):
        port = tree["ingest"]["port"]
        silent = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v1/aha/x HTTP/1.1\r\n")
        started = time.monotonic()
        closed_after = None
        for _ in range(30):
            time.sleep(0.2)
            try:
                slow.sendall(b"X-Slow: a\r\n")
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 4.0, (
            "slow header sender kept its connection"
        )
        silent.settimeout(3.0)
        assert silent.recv(1) == b"", "a silent connection was not closed"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'aha_siem_ingest_rejected_total{reason="header_timeout"}' in metrics


def _serial_of(port: int, ca: trustme.CA) -> int:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_https_is_served_and_the_certificate_reloads_on_sighup(tmp_path: Path) -> None:
    ca = trustme.CA()
    first = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    first.cert_chain_pems[0].write_to_path(str(cert_file))
    first.private_key_pem.write_to_path(str(key_file))
    tree = ingest_config(
        tmp_path, "127.0.0.1:1", tls={"cert_file": str(cert_file), "key_file": str(key_file)}
    )
    port = tree["ingest"]["port"]
    with ingest_process(tmp_path, tree) as process:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"https://localhost:{port}/healthz", verify=context)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.3)
        assert answer.json() == {"status": "ok"}
        plain = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        with pytest.raises(httpx.HTTPError):
            plain.get("/healthz")
        first_serial = _serial_of(port, ca)

        second = ca.issue_cert("localhost", "127.0.0.1")
        second.cert_chain_pems[0].write_to_path(str(cert_file))
        second.private_key_pem.write_to_path(str(key_file))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _serial_of(port, ca) == first_serial:
            assert time.monotonic() < deadline, "certificate not reloaded after SIGHUP"
            time.sleep(0.2)
        assert process.poll() is None


def _post(port: int, body: bytes) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx.post(f"http://127.0.0.1:{port}/v1/aha/{TOKEN}", content=body, timeout=10)
    return response.status_code, time.monotonic() - started


def _burst_body(index: int) -> bytes:
    # One record, so all of them share a key and a partition: their order is observable.
    return orjson.dumps(
        {
            "event": "audit",
            "audit": {
                "id": str(7712852070579044363 + index),
                "audit_action": "update",
                "auditable_type": "feature",
                "auditable_id": "7712852070702501001",
                "created_at": "2026-11-27T14:05:12.417Z",
                "changes": [{"field_name": "Name", "value": f"edit {index}"}],
            },
        }
    )


def test_kafka_outages_spool_answer_202_fast_and_drain_in_order_after_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This test stops and starts a broker of its own, never the shared one.
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    state = tmp_path / "kafka"
    kafka_port = devbroker.free_port(pair=True)
    bootstrap = f"127.0.0.1:{kafka_port}"
    tree = ingest_config(tmp_path, bootstrap)
    port = tree["ingest"]["port"]
    raw_topic = tree.get("topics", {}).get("raw", "aha.audit.raw")
    bodies = [_burst_body(index) for index in range(70)]
    try:
        # 1. Kafka has never been up: the ingest starts anyway and spools.
        with ingest_process(tmp_path, tree, "ingest-1") as first:
            for body in bodies[:30]:
                status, took = _post(port, body)
                assert status == 202
                assert took < 4.0
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
            assert ready.status_code == 200, "spool writable means ready"
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert "aha_siem_ingest_spool_records 30.0" in metrics
            # 2. A crash right after answering: SIGKILL, no shutdown at all.
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        # 3. Restarted, still no Kafka: more posts spool behind the first ones.
        with ingest_process(tmp_path, tree, "ingest-2"):
            for body in bodies[30:50]:
                assert _post(port, body)[0] == 202
            # 4. Kafka comes up: the spool drains, in order.
            devbroker.start(state, port=kafka_port, kind=os.environ.get("KAFKA_KIND", "kafka"))
            records = asyncio.run(read_topic(bootstrap, raw_topic, 50, timeout=90))
            assert [record.value for record in records] == bodies[:50]
            assert all(
                r.headers["body-sha256"] == hashlib.sha256(r.value).hexdigest() for r in records
            )
            deadline = time.monotonic() + 30
            while (
                "aha_siem_ingest_spool_records 0.0"
                not in httpx.get(f"http://127.0.0.1:{port}/metrics").text
            ):
                assert time.monotonic() < deadline, "spool did not empty"
                time.sleep(0.3)
            # 5. Kafka goes away while the ingest runs: still 202 within the deadline.
            devbroker.stop(state)
            for body in bodies[50:]:
                status, took = _post(port, body)
                assert status == 202
                assert took < 4.0
            devbroker.start(state, port=kafka_port, kind=os.environ.get("KAFKA_KIND", "kafka"))
            records = asyncio.run(read_topic(bootstrap, raw_topic, 70, timeout=90))
            values = [record.value for record in records]
            assert set(values) == set(bodies)
            # A produce that timed out may still land beside its spooled copy: first sightings
            # keep the order, and the worker's dedupe drops the copy.
            first_seen = list(dict.fromkeys(values))
            assert first_seen == bodies
    finally:
        devbroker.stop(state)


def test_sigterm_finishes_in_flight_requests_and_flushes_to_kafka(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    tree = ingest_config(tmp_path, kafka_bootstrap)
    tree["topics"] = {"raw": f"graceful-{time.monotonic_ns()}.raw", "partitions": 1}
    port = tree["ingest"]["port"]
    body = _burst_body(1)
    with ingest_process(tmp_path, tree) as process:
        wait_http_ok(
            f"http://127.0.0.1:{port}/readyz", [process], {"ingest": tmp_path / "ingest.log"}
        )
        with socket.create_connection(("127.0.0.1", port)) as client:
            head = (
                f"POST /v1/aha/{TOKEN} HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            client.sendall(head + body[:20])
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            client.sendall(body[20:])
            client.settimeout(10)
            answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 202"), answer
        # uvicorn re-raises the signal once shut down, so the exit status says "stopped by SIGTERM".
        assert process.wait(20) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "ingest.log").read_text()
        # The server stopped accepting new connections.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    [record] = asyncio.run(read_topic(kafka_bootstrap, tree["topics"]["raw"], 1, timeout=30))
    assert record.value == body


def test_forwarded_for_is_believed_only_from_trusted_proxies_on_the_real_server(
    tmp_path: Path,
) -> None:
    tree = ingest_config(tmp_path, "127.0.0.1:1", allowed_cidrs=["203.0.113.0/24"])
    port = tree["ingest"]["port"]
    with ingest_process(tmp_path, tree):
        forged = httpx.post(
            f"http://127.0.0.1:{port}/v1/aha/{TOKEN}",
            content=_burst_body(1),
            headers={"x-forwarded-for": "203.0.113.9"},
        )
    # The peer is 127.0.0.1 and no proxy is trusted: the header proves nothing.
    assert forged.status_code == 403
