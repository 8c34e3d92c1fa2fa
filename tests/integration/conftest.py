"""Fixtures for tests against a real broker and the real processes.

The broker is the cluster named by KAFKA_BOOTSTRAP (`make test` starts Apache Kafka and sets it);
without it, the fixture starts Apache Kafka itself into a temporary folder. `opensearch_url` is a
real OpenSearch node (tests/receivers/opensearch.py), started once per session when first used.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from forwarder import devbroker
from forwarder.config import Config, hash_token, parse
from tests.receivers import opensearch

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield devbroker.start(tmp_path_factory.mktemp("unused")).bootstrap
        return
    state = tmp_path_factory.mktemp("kafka")
    info = devbroker.start(
        state, port=devbroker.free_port(pair=True), kind=os.environ.get("KAFKA_KIND", "kafka")
    )
    try:
        yield info.bootstrap
    finally:
        devbroker.stop(state)


@pytest.fixture(scope="session")
def opensearch_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The HTTP address of a single-node OpenSearch, up for the rest of the session.

    Skipped only without a JDK (or without Maven while the jars are not cached yet); with them, a
    failed download, compilation or start fails the tests that use it.
    """
    reason = opensearch.missing()
    if reason is not None:
        pytest.skip(f"no OpenSearch node: {reason} (CI installs openjdk-17-jdk-headless and maven)")
    node = opensearch.OpenSearch(tmp_path_factory.mktemp("opensearch"))
    node.start()
    try:
        yield node.url
    finally:
        node.stop()


@dataclass
class Stack:
    """A running ingest and worker, configured with topics of their own."""

    config: Config
    config_path: Path
    url: str
    token: str
    events_file: Path
    metrics_url: str
    logs: dict[str, Path]

    def webhook_url(self, token: str | None = None) -> str:
        return f"{self.url}/v1/aha/{token or self.token}"


def stack_config(tmp: Path, bootstrap: str, token: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    return {
        "log_level": "info",
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {
            "raw": f"t{run}.aha.audit.raw",
            "invalid": f"t{run}.aha.audit.invalid",
            "events": f"t{run}.aha.audit.events",
            "dlq_prefix": f"t{run}.aha.audit.dlq.",
            "partitions": 4,
        },
        "ingest": {
            "host": "127.0.0.1",
            "port": free_port(),
            "tokens": [{"name": "acme-prod", "sha256": hash_token(token), "account": "acme"}],
            "spool": {"directory": str(tmp / "spool")},
        },
        "worker": {
            "app_id": f"aha-siem-test-{run}",
            "data_dir": str(tmp / "worker"),
            "metrics_host": "127.0.0.1",
            "metrics_port": free_port(),
        },
        "sinks": [
            {
                "type": "file",
                "name": "file",
                "path": str(tmp / "events.ndjson"),
                "batch_max_seconds": 0.2,
            },
            {
                "type": "file",
                "name": "cef-file",
                "format": "cef",
                "path": str(tmp / "events.cef"),
                "batch_max_seconds": 0.2,
            },
        ],
    }


def wait_http_ok(
    url: str, processes: list[subprocess.Popen[bytes]], logs: dict[str, Path], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                dump = "\n".join(
                    f"--- {name}\n{path.read_text()[-4000:]}" for name, path in logs.items()
                )
                raise RuntimeError(f"a process exited with {process.returncode}\n{dump}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready in {timeout}s")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    token = f"test-{uuid.uuid4().hex}"
    tree = stack_config(tmp, kafka_bootstrap, token)
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    config = parse(tree)
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
    logs = {name: tmp / f"{name}.log" for name in ("ingest", "worker")}
    processes = []
    for name, log_path in logs.items():
        with open(log_path, "wb") as log_file:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "forwarder", name, "--config", str(config_path)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
    url = f"http://127.0.0.1:{config.ingest.port}"
    metrics_url = f"http://127.0.0.1:{config.worker.metrics_port}/metrics"
    try:
        wait_http_ok(f"{url}/readyz", processes, logs)
        wait_http_ok(metrics_url, processes, logs)
        wait_worker_settled(metrics_url, config.topics.partitions, sinks=len(config.sinks))
        yield Stack(config, config_path, url, token, tmp / "events.ndjson", metrics_url, logs)
    finally:
        stop_processes(processes)


def stop_processes(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then SIGKILL what does not stop within 30 s."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def wait_worker_settled(
    metrics_url: str, partitions: int | None = None, timeout: float = 90, sinks: int | None = None
) -> None:
    """Until the worker and its sink processes hold their partitions, with no rebalance under way.

    Posting into a group that is still forming lets a rebalance redeliver events: correct
    (at-least-once), but a test counting exact shipments must not see it. `sinks` is how many
    sink processes must report in (default: every sink in the exposition once one reports).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = httpx.get(metrics_url, timeout=2).text
        except httpx.HTTPError:
            text = ""
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(
                (
                    "aha_siem_worker_assigned_partitions ",
                    "aha_siem_worker_rebalancing ",
                    "aha_siem_sink_rebalancing{",
                    "aha_siem_sink_assigned_partitions{",
                )
            )
        }
        assigned = values.get("aha_siem_worker_assigned_partitions", 0)
        sink_rebalancing = {
            k: v for k, v in values.items() if k.startswith("aha_siem_sink_rebalancing")
        }
        sink_assigned = {
            k: v for k, v in values.items() if k.startswith("aha_siem_sink_assigned_partitions")
        }
        sinks_ready = (
            (sinks is None or len(sink_rebalancing) >= sinks)
            and all(v == 0 for v in sink_rebalancing.values())
            and len(sink_assigned) == len(sink_rebalancing)
            and all(partitions is None or v == partitions for v in sink_assigned.values())
        )
        if (
            values.get("aha_siem_worker_rebalancing") == 0
            and assigned
            and (partitions is None or assigned == partitions)
            and sinks_ready
        ):
            return
        time.sleep(0.3)
    raise TimeoutError(f"worker at {metrics_url} did not settle in {timeout}s")
