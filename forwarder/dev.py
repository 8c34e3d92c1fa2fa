"""`aha-siem dev`: broker, ingest and worker with a file sink, supervised as one process tree."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from forwarder import devbroker
from forwarder.config import hash_token, load

log = logging.getLogger("forwarder.dev")

SAMPLES = Path(__file__).parent / "samples"
_RESTARTS_PER_MINUTE = 5


class _Child:
    """One supervised process and its restart history."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts: list[float] = []

    def start(self) -> None:
        with open(self.log_file, "ab") as output:
            self.process = subprocess.Popen(self.argv, stdout=output, stderr=subprocess.STDOUT)
        log.info(
            "started",
            extra={"child": self.name, "pid": self.process.pid, "log": str(self.log_file)},
        )

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time, killing", extra={"child": self.name})
            self.process.kill()
            self.process.wait()


def dev_token(state_dir: Path) -> str:
    """The dev ingest token, made once and kept in the state folder."""
    path = state_dir / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def dev_config(
    state_dir: Path,
    base_config: Path | None,
    broker: devbroker.BrokerInfo,
    port: int,
    metrics_port: int,
    token: str,
) -> dict[str, Any]:
    """The config tree dev runs with: the base config plus the dev broker, token and file sink."""
    base = load(base_config)  # the file if given, and AHA_SIEM_* overrides either way
    tree = base.model_dump(mode="json")
    tree["kafka"]["bootstrap_servers"] = broker.bootstrap
    if broker.kind == "tansu":
        # Tansu answers InitProducerId with an error, and delays a group's first join by half
        # the session timeout (docs/decisions/0001-kafka-harness.md).
        tree["kafka"].update(idempotent_producer=False, session_timeout_seconds=6)
    tree["ingest"].update(
        host="127.0.0.1",
        port=port,
        tokens=[{"name": "dev", "sha256": hash_token(token), "account": "dev"}],
    )
    tree["ingest"]["spool"] = {**tree["ingest"]["spool"], "directory": str(state_dir / "spool")}
    tree["worker"].update(data_dir=str(state_dir / "worker"), metrics_port=metrics_port)
    tree["sinks"] = [{"type": "file", "name": "file", "path": str(state_dir / "events.ndjson")}]
    return tree


def _wait_ready(url: str, children: list[_Child], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            child.process is not None and child.process.poll() is not None for child in children
        ):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _banner(port: int, metrics_port: int, token: str, events_file: Path) -> str:
    sample = SAMPLES / "feature_update_status.json"
    return (
        "\naha-siem dev is up: broker, ingest and worker are running.\n"
        "Send Aha!'s sample webhook:\n\n"
        f"  curl -sS -X POST -H 'Content-Type: application/json' \\\n"
        f"    --data-binary @{sample} \\\n"
        f"    http://127.0.0.1:{port}/v1/aha/{token}\n\n"
        f"and watch the ECS event arrive in the file sink:\n\n  tail -f {events_file}\n\n"
        "Post it a second time: the worker drops the exact copy "
        '(aha_siem_dedupe_dropped_total{reason="exact"}).\n'
        f"Metrics: http://127.0.0.1:{port}/metrics (ingest), http://127.0.0.1:{metrics_port}/metrics (worker).\n"
        "Press Ctrl-C to stop everything.\n"
    )


def run_dev(
    *,
    state_dir: Path,
    base_config: Path | None,
    port: int,
    metrics_port: int,
    broker_port: int,
    broker_kind: str,
) -> int:
    """Start everything, print how to send an event, supervise until Ctrl-C."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if not os.environ.get("KAFKA_BOOTSTRAP"):
        # A fresh cluster and worker state for every run: the sample the banner posts is then
        # new to the dedupe, and posting it twice shows the copy being dropped.
        devbroker.stop(state_dir / "kafka")
        shutil.rmtree(state_dir / "kafka", ignore_errors=True)
        shutil.rmtree(state_dir / "worker", ignore_errors=True)
    broker = devbroker.start(state_dir / "kafka", port=broker_port, kind=broker_kind)
    started_broker = broker.kind != "external"
    log.info("broker ready", extra={"kind": broker.kind, "bootstrap": broker.bootstrap})
    token = dev_token(state_dir)
    config_path = state_dir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(
            dev_config(state_dir, base_config, broker, port, metrics_port, token),
            sort_keys=False,
        )
    )
    command = [sys.executable, "-m", "forwarder"]
    children = [
        _Child(name, [*command, name, "--config", str(config_path)], state_dir / f"{name}.log")
        for name in ("ingest", "worker")
    ]
    exit_code = 0
    try:
        for child in children:
            child.start()
        if _wait_ready(f"http://127.0.0.1:{port}/readyz", children, timeout=60):
            print(_banner(port, metrics_port, token, state_dir / "events.ndjson"), flush=True)
        elif not stopping:
            log.error(
                "ingest did not become ready; see its log", extra={"log": str(children[0].log_file)}
            )
            exit_code = 1
            stopping = True
        while not stopping:
            time.sleep(0.5)
            for child in children:
                assert child.process is not None
                code = child.process.poll()
                if code is None or stopping:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > _RESTARTS_PER_MINUTE:
                    log.error(
                        "restarting too often, giving up",
                        extra={"child": child.name, "exit_code": code},
                    )
                    exit_code, stopping = 1, True
                    break
                log.warning("exited, restarting", extra={"child": child.name, "exit_code": code})
                child.start()
    finally:
        for child in children:
            child.stop()
        if started_broker:
            devbroker.stop(state_dir / "kafka")
        log.info("stopped")
    return exit_code
