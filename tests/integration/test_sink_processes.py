"""The worker's supervisor of sink processes, against the real broker."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import yaml
from prometheus_client import CollectorRegistry

from forwarder.config import hash_token
from forwarder.pipeline.children import SinkProcesses
from tests.integration.conftest import stack_config


def test_a_sink_whose_metrics_port_was_taken_comes_back_on_another(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    tree = stack_config(tmp_path, kafka_bootstrap, hash_token("unused"))
    tree["sinks"] = [tree["sinks"][0]]
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    processes = SinkProcesses([tree["sinks"][0]["name"]], config_path, CollectorRegistry())
    [child] = processes._children
    taken = child.metrics_port
    # Another process took the port between the choice and the sink's start.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        processes.start()
        try:
            deadline = time.monotonic() + 90
            served = False
            while time.monotonic() < deadline and not served:
                time.sleep(0.5)
                if child.metrics_port == taken:
                    continue
                try:
                    served = httpx.get(f"http://127.0.0.1:{child.metrics_port}/metrics").is_success
                except httpx.HTTPError:
                    continue
            assert served, "the sink process never came back with its metrics"
        finally:
            processes.stop()
