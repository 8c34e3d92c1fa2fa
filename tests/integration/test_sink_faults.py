"""Sink faults on the real broker with the real ingest and worker processes.

A destination down for a while, one that rejects some events (DLQ, then `aha-siem replay`), a
sink process killed mid-batch, and a dead sink beside a healthy one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from forwarder.config import Config, parse
from tests.fakes.elasticsearch import FakeElasticsearch
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.server import AsgiServer
from tests.integration.conftest import (
    stack_config,
    stop_processes,
    wait_http_ok,
    wait_worker_settled,
)
from tests.integration.kafka_io import read_topic

pytestmark = pytest.mark.integration

FEATURE = {
    "event": "audit",
    "audit": {
        "id": "0",
        "audit_action": "update",
        "created_at": "2026-11-27T14:05:12.417Z",
        "interesting": True,
        "user": {"id": "6514078897796815681", "name": "Priya Menon", "email": "p@example.com"},
        "auditable_type": "feature",
        "auditable_id": "0",
        "description": "updated feature",
        "changes": [{"field_name": "Name", "value": "v"}],
    },
}


def bodies(count: int) -> list[bytes]:
    """Distinct audits, each of a record of its own."""
    out = []
    run = uuid.uuid4().int % 10**12
    for index in range(count):
        body = orjson.loads(orjson.dumps(FEATURE))
        body["audit"]["id"] = str(7_800_000_000_000_000_000 + run * 1000 + index)
        body["audit"]["auditable_id"] = str(7_900_000_000_000_000_000 + run * 1000 + index)
        body["audit"]["changes"][0]["value"] = f"value {index}"
        out.append(orjson.dumps(body))
    return out


def audit_id(body: bytes) -> str:
    return str(orjson.loads(body)["audit"]["id"])


class Pipeline:
    """An ingest and a worker (which runs one process per sink) with the given sinks."""

    def __init__(self, tmp: Path, bootstrap: str, sinks: list[dict[str, Any]]) -> None:
        self.token = f"faults-{uuid.uuid4().hex}"
        tree = stack_config(tmp, bootstrap, self.token)
        tree["sinks"] = sinks
        tree["kafka"]["session_timeout_seconds"] = 6
        self.tree = tree
        self.config: Config = parse(tree)
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(tree))
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_url = f"http://127.0.0.1:{self.config.worker.metrics_port}/metrics"

    def start(self) -> None:
        logs = {name: self.tmp / f"{name}.log" for name in ("ingest", "worker")}
        for name, path in logs.items():
            with open(path, "ab") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "forwarder", name, "--config", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
        processes = list(self.processes.values())
        wait_http_ok(f"http://127.0.0.1:{self.config.ingest.port}/readyz", processes, logs)
        wait_http_ok(self.metrics_url, processes, logs)
        wait_worker_settled(
            self.metrics_url, self.config.topics.partitions, sinks=len(self.config.sinks)
        )

    def post(self, body: bytes) -> None:
        url = f"http://127.0.0.1:{self.config.ingest.port}/v1/aha/{self.token}"
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 202, answer.text

    def metric(self, name: str, **labels: str) -> float | None:
        wanted = name + (
            "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"
            if labels
            else ""
        )
        for line in httpx.get(self.metrics_url, timeout=5).text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forwarder", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )

    def stop(self) -> None:
        stop_processes(self.processes.values())


@contextmanager
def pipeline(tmp: Path, bootstrap: str, sinks: list[dict[str, Any]]) -> Iterator[Pipeline]:
    running = Pipeline(tmp, bootstrap, sinks)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def wait_until(check: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout}s: {what}")
        time.sleep(0.2)


def received_ids(receiver: HttpReceiver) -> list[str]:
    return [str(event["event"]["id"]) for event in receiver.accepted_events()]


def http_sink(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "name": name,
        "url": f"{url}/events",
        "batch_max_seconds": 0.2,
        "retry": {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 1},
        **extra,
    }


def test_a_dead_destination_holds_back_only_its_own_sink_and_drains_when_back(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    receiver = HttpReceiver(default_status=503, retry_after="1")
    events = bodies(20)
    with (
        AsgiServer(receiver) as server,
        pipeline(
            tmp_path,
            kafka_bootstrap,
            [
                http_sink("siem", server.url),
                {
                    "type": "file",
                    "name": "file",
                    "path": str(tmp_path / "events.ndjson"),
                    "batch_max_seconds": 0.2,
                },
            ],
        ) as running,
    ):
        started = time.monotonic()
        for body in events:
            running.post(body)
        # The file sink, in a consumer group of its own, ships everything while the SIEM is down.
        lines = tmp_path / "events.ndjson"
        wait_until(
            lambda: lines.exists() and len(lines.read_bytes().splitlines()) >= len(events),
            30,
            "file sink shipped while the other sink's destination is down",
        )
        file_seconds = time.monotonic() - started
        assert received_ids(receiver) == []
        wait_until(lambda: running.metric("aha_siem_sink_up", sink="siem") == 0, 30, "siem down")
        wait_until(
            lambda: (running.metric("aha_siem_sink_backlog_messages", sink="siem") or 0) > 0,
            30,
            "backlog reported",
        )
        assert (running.metric("aha_siem_sink_retries_total", sink="siem") or 0) >= 1
        # Back up: the backlog drains, nothing lost and nothing dead-lettered.
        receiver.default_status = 200
        wait_until(
            lambda: set(received_ids(receiver)) == {audit_id(body) for body in events},
            60,
            "backlog drained",
        )
        wait_until(lambda: running.metric("aha_siem_sink_up", sink="siem") == 1, 30, "siem up")
        wait_until(
            lambda: running.metric("aha_siem_sink_backlog_messages", sink="siem") == 0,
            30,
            "backlog back to 0",
        )
        assert running.metric("aha_siem_sink_events_sent_total", sink="file") == len(events)
        dlq = asyncio.run(
            read_topic(kafka_bootstrap, f"{running.config.topics.dlq_prefix}siem", 1, 3)
        )
        assert dlq == []
    assert file_seconds < 30


def test_rejected_events_land_in_the_dlq_and_replay_delivers_them(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    fake = FakeElasticsearch()
    events = bodies(10)
    rejected = events[2:5]
    for body in rejected:
        doc_id = f"{audit_id(body)}-{hashlib.sha256(body).hexdigest()[:16]}"
        fake.fail_item(doc_id, 400, "mapper_parsing_exception", "failed to parse [user.name]")
    with (
        AsgiServer(fake) as server,
        pipeline(
            tmp_path,
            kafka_bootstrap,
            [
                {
                    "type": "elasticsearch",
                    "name": "es",
                    "url": server.url,
                    "batch_max_seconds": 0.3,
                    "batch_max_events": 100,
                }
            ],
        ) as running,
    ):
        for body in events:
            running.post(body)
        dlq_topic = f"{running.config.topics.dlq_prefix}es"
        dlq = asyncio.run(read_topic(kafka_bootstrap, dlq_topic, len(rejected), 60))
        assert sorted(orjson.loads(r.value)["event"]["id"] for r in dlq) == sorted(
            audit_id(body) for body in rejected
        )
        for record in dlq:
            assert "mapper_parsing_exception" in record.headers["error"]
            assert int(record.headers["attempts"]) >= 1
            assert record.headers["first-failed-at"].endswith("Z")
            assert record.headers["received-at"]
        index = "logs-aha.audit-default"
        wait_until(lambda: len(fake.ids(index)) == len(events) - len(rejected), 30, "7 indexed")
        assert running.metric(
            "aha_siem_sink_dead_lettered_total", sink="es", reason="rejected"
        ) == len(rejected)
        dry = running.cli("replay", "--sink", "es", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "3 event(s) would be replayed" in dry.stdout
        assert len(fake.ids(index)) == len(events) - len(rejected)
        # The mapping is fixed (each failure was set for one attempt): the replay delivers them.
        done = running.cli("replay", "--sink", "es")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "3 delivered" in done.stdout
        assert len(fake.ids(index)) == len(events)
        again = running.cli("replay", "--sink", "es")
        assert again.returncode == 0
        assert "nothing to replay" in again.stdout


def _sink_pid(config_path: Path, sink: str) -> int:
    found = subprocess.run(
        ["pgrep", "-f", f"forwarder sink {sink} .*{config_path}"], capture_output=True, text=True
    ).stdout.split()
    assert found, f"no process for sink {sink}"
    return int(found[0])


def test_a_sink_process_killed_mid_batch_is_restarted_and_redelivers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    receiver = HttpReceiver(delay_seconds=3.0)
    events = bodies(15)
    with (
        AsgiServer(receiver) as server,
        pipeline(
            tmp_path,
            kafka_bootstrap,
            [http_sink("slow", server.url, batch_max_events=5, http={"timeout_seconds": 10})],
        ) as running,
    ):
        for body in events:
            running.post(body)
        time.sleep(1.5)  # the first batch is in flight: the destination answers after 3 s
        os.kill(_sink_pid(running.config_path, "slow"), signal.SIGKILL)
        wait_until(
            lambda: (running.metric("aha_siem_sink_process_restarts_total", sink="slow") or 0) >= 1,
            30,
            "sink process restarted",
        )
        receiver.delay_seconds = 0.0
        wait_until(
            lambda: set(received_ids(receiver)) == {audit_id(body) for body in events},
            90,
            "every event delivered after the restart",
        )
        # At least once: what was in flight may arrive twice, nothing is missing.
        assert len(received_ids(receiver)) >= len(events)
