"""A sink that cannot deliver keeps its events through a shutdown: nothing is acked undelivered."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from forwarder.config import parse
from tests.helpers import SAMPLES
from tests.integration.conftest import stack_config, wait_http_ok, wait_worker_settled

pytestmark = pytest.mark.integration


def _start(role: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "forwarder", role, "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_events_a_sink_could_not_deliver_survive_a_worker_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    token = f"sink-{uuid.uuid4().hex}"
    tree = stack_config(tmp_path, kafka_bootstrap, token)
    # The sink's folder is a file: every write fails (retriably) until it is removed.
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    tree["sinks"] = [
        {
            "type": "file",
            "name": "file",
            "path": str(blocker / "events.ndjson"),
            "batch_max_seconds": 0.2,
        }
    ]
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    config = parse(tree)
    metrics = f"http://127.0.0.1:{config.worker.metrics_port}/metrics"
    logs = {name: tmp_path / f"{name}.log" for name in ("ingest", "worker")}
    ingest = _start("ingest", config_path, logs["ingest"])
    worker = _start("worker", config_path, logs["worker"])
    try:
        wait_http_ok(f"http://127.0.0.1:{config.ingest.port}/readyz", [ingest, worker], logs)
        wait_http_ok(metrics, [worker], logs)
        wait_worker_settled(metrics, config.topics.partitions)
        bodies = [p.read_bytes() for p in sorted(SAMPLES.glob("*.json"))]
        for body in bodies:
            response = httpx.post(
                f"http://127.0.0.1:{config.ingest.port}/v1/aha/{token}", content=body
            )
            assert response.status_code == 202
        deadline = time.monotonic() + 60
        while 'aha_siem_sink_retries_total{sink="file"}' not in httpx.get(metrics).text:
            assert time.monotonic() < deadline, "the sink never retried"
            time.sleep(0.3)
        # Stopped while retrying: the batch must not be acked.
        worker.terminate()
        worker.wait(30)
        blocker.unlink()
        worker = _start("worker", config_path, logs["worker"])
        events_file = blocker / "events.ndjson"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if events_file.exists() and len(events_file.read_bytes().splitlines()) >= len(bodies):
                break
            time.sleep(0.3)
        lines = events_file.read_bytes().splitlines() if events_file.exists() else []
        shipped = {orjson.loads(line)["event"]["hash"] for line in lines}
        assert shipped == {hashlib.sha256(body).hexdigest() for body in bodies}
    finally:
        for process in (ingest, worker):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
