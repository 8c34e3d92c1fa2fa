"""Streaming alerts on the real broker: ingest, a worker with detections enabled and a file sink
reading the alerts topic. A burst of destroys by one user is one alert in the file, also when the
detections process is killed or the worker restarted in the middle of the burst's window."""

from __future__ import annotations

import asyncio
import copy
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from forwarder.config import parse
from tests.integration.conftest import (
    stack_config,
    stop_processes,
    wait_http_ok,
    wait_worker_settled,
)
from tests.integration.kafka_io import read_topic
from tests.integration.test_prometheus_scrape import parse_expression

pytest.importorskip("sigma", reason="pySigma comes with the dev extra")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "detections" / "tests"
BURST = "aha_destroy_burst_by_user"


def _burst_bodies(count: int) -> list[dict[str, Any]]:
    """`count` destroys by one user, 15 s apart (all within the rule's 10 minutes), ids fresh."""
    (template, *_) = orjson.loads(
        (EXAMPLES / BURST / "positive" / "twenty_in_five_minutes.json").read_bytes()
    )
    base = 7713100000000000000 + (uuid.uuid4().int % 10**12) * 1000
    bodies = []
    for i in range(count):
        body = copy.deepcopy(template)
        body["audit"]["id"] = str(base + i)
        body["audit"]["auditable_id"] = str(base + 500 + i)
        body["audit"]["created_at"] = f"2026-11-28T02:{i * 15 // 60:02d}:{i * 15 % 60:02d}.000Z"
        body["audit"]["description"] = f"deleted feature DEMO-{i} Old idea {i}"
        bodies.append(body)
    return bodies


class AlertStack:
    """An ingest and a worker with detections on and a file sink reading the alerts."""

    def __init__(self, tmp: Path, bootstrap: str) -> None:
        self.tmp = tmp
        self.token = f"alerts-{uuid.uuid4().hex}"
        tree = stack_config(tmp, bootstrap, self.token)
        run = tree["worker"]["app_id"].rsplit("-", 1)[1]
        tree["kafka"]["session_timeout_seconds"] = 6
        tree["detections"] = {"enabled": True, "alerts_topic": f"t{run}.aha.audit.alerts"}
        self.alerts_file = tmp / "alerts.ndjson"
        tree["sinks"] = [
            {
                "type": "file",
                "name": "alerts",
                "input": "alerts",
                "path": str(self.alerts_file),
                "batch_max_seconds": 0.2,
            }
        ]
        self.config = parse(tree)
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(tree))
        self.bootstrap = bootstrap
        self.metrics_url = f"http://127.0.0.1:{self.config.worker.metrics_port}/metrics"
        self.env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{role}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "forwarder", role, "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.processes[role] = process
        logs = {role: self.tmp / f"{role}.log"}
        if role == "ingest":
            wait_http_ok(f"http://127.0.0.1:{self.config.ingest.port}/readyz", [process], logs)
        else:
            wait_http_ok(self.metrics_url, [process], logs)
            wait_worker_settled(self.metrics_url, self.config.topics.partitions, sinks=1)
            self.wait_detections_settled()
        return process

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the worker's /metrics (its detections process's merged in); 0 if absent."""
        text = httpx.get(self.metrics_url, timeout=5).text
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if not series.startswith(name):
                continue
            found = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})?", series)
            if found is None:
                continue
            pairs = ",".join(sorted((found.group(1) or "").split(","))) if found.group(1) else ""
            if pairs == wanted:
                return float(value)
        return 0.0

    def wait_detections_settled(self, timeout: float = 90) -> None:
        """Until the detections process reports in, its table recovered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = httpx.get(self.metrics_url, timeout=2).text
            except httpx.HTTPError:
                text = ""
            if "\naha_siem_detections_rebalancing 0.0" in text and (
                'aha_siem_faust_messages_received_total{app="detections"' in text
                or "aha_siem_detections_rules{" in text
            ):
                return
            time.sleep(0.3)
        raise TimeoutError("the detections process did not settle")

    def wait_metric(self, name: str, at_least: float, timeout: float = 90, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.metric(name, **labels) >= at_least:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{name}{labels} did not reach {at_least}")

    def post(self, body: dict[str, Any]) -> None:
        url = f"http://127.0.0.1:{self.config.ingest.port}/v1/aha/{self.token}"
        response = httpx.post(url, content=orjson.dumps(body), timeout=10)
        assert response.status_code == 202, response.text

    def file_alerts(self, rule: str) -> list[dict[str, Any]]:
        if not self.alerts_file.exists():
            return []
        docs = [orjson.loads(line) for line in self.alerts_file.read_bytes().splitlines() if line]
        return [doc for doc in docs if doc["rule"]["name"] == rule]

    def wait_file_alerts(self, rule: str, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.file_alerts(rule)) < count:
            time.sleep(0.3)

    def topic_alerts(self, rule: str) -> list[dict[str, Any]]:
        records = asyncio.run(
            read_topic(self.bootstrap, self.config.detections.alerts_topic, 10_000, timeout=4)
        )
        docs = [orjson.loads(record.value) for record in records]
        return [doc for doc in docs if doc["rule"]["name"] == rule]

    def detections_pid(self) -> int:
        """The pid of the worker's detections process (`aha-siem detections run`)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"detections" in argv and b"run" in argv and str(self.config_path).encode() in argv:
                return int(entry.name)
        raise LookupError("no detections process")

    def stop(self) -> None:
        stop_processes(self.processes.values())


@pytest.fixture
def alert_stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[AlertStack]:
    running = AlertStack(tmp_path, kafka_bootstrap)
    try:
        running.start("ingest")
        running.start("worker")
        yield running
    finally:
        running.stop()


def _assert_one_burst_alert(stack: AlertStack, bodies: list[dict[str, Any]]) -> None:
    (alert,) = stack.file_alerts(BURST)
    assert alert["event"]["kind"] == "alert"
    assert alert["user"] == {"email": "priya.menon@example.com"}
    assert alert["threat"]["technique"]["id"] == ["T1485"]
    ids = alert["aha"]["alert"]["event_ids"]
    assert len(ids) == 20 and set(ids) <= {body["audit"]["id"] for body in bodies}
    # The alerts topic itself holds it once: no duplicate for a SIEM reading it either.
    assert [doc["event"]["id"] for doc in stack.topic_alerts(BURST)] == [alert["event"]["id"]]


def test_a_burst_of_destroys_is_one_alert_in_the_file_sink(alert_stack: AlertStack) -> None:
    bodies = _burst_bodies(25)
    granted = orjson.loads(
        (
            EXAMPLES / "aha_privilege_granted/positive/project_user_role_raised_to_owner.json"
        ).read_bytes()
    )
    alert_stack.post(granted)
    for body in bodies:
        alert_stack.post(body)
    alert_stack.wait_file_alerts(BURST, 1)
    alert_stack.wait_file_alerts("aha_privilege_granted", 1)
    # Every destroy counted or covered by the alert before looking for a second one.
    alert_stack.wait_metric(
        "aha_siem_detections_correlation_events_total", 5, rule=BURST, outcome="covered"
    )
    time.sleep(2)
    _assert_one_burst_alert(alert_stack, bodies)
    (granted_alert,) = alert_stack.file_alerts("aha_privilege_granted")
    assert granted_alert["aha"]["alert"]["event_ids"] == [granted["audit"]["id"]]
    assert granted_alert["threat"]["technique"]["id"] == ["T1098"]
    assert (
        alert_stack.metric(
            "aha_siem_detections_alerts_total",
            rule_id="3e0af8ae-03d8-45ed-a8ea-8925b867697b",
            rule=BURST,
        )
        == 1
    )
    assert (
        alert_stack.metric(
            "aha_siem_detections_alerts_total",
            rule_id=granted_alert["rule"]["id"],
            rule="aha_privilege_granted",
        )
        == 1
    )


def test_the_detections_rows_of_the_metrics_catalogue_are_exposed(alert_stack: AlertStack) -> None:
    catalogue = (ROOT / "docs" / "metrics.md").read_text()
    rows = re.findall(
        r"^\| `(aha_siem_[a-z0-9_]+)` \| (\w+) \|[^|]*\| ([\w, ]+) \|", catalogue, re.M
    )
    documented = {name: kind for name, kind, process in rows if process == "detections"}
    assert documented
    text = httpx.get(alert_stack.metrics_url, timeout=5).text
    exposed = dict(re.findall(r"^# TYPE (aha_siem_detections_[a-z0-9_]+) (\w+)$", text, re.M))
    assert exposed == documented


def test_the_alerts_panel_reads_what_the_detections_process_exposes(
    alert_stack: AlertStack,
) -> None:
    """The dashboard's "Alerts by rule" queries (their metrics and `by` labels), which the
    Prometheus scrape test cannot check on its stack without detections."""
    dashboard = orjson.loads((ROOT / "grafana/dashboards/aha-siem-overview.json").read_bytes())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Alerts by rule"]
    text = httpx.get(alert_stack.metrics_url, timeout=5).text
    declared = dict(re.findall(r"^# TYPE (aha_siem_[a-z0-9_]+) (\w+)$", text, re.M))
    for target in panel["targets"]:
        selectors, grouping = parse_expression(target["expr"])
        for selector in selectors:
            assert selector.metric in declared, selector.metric
            if selector.metric == "aha_siem_detections_alerts_total":
                # Exposed at 0 from the start for every alerting rule, with its labels.
                series = re.findall(rf"^{selector.metric}\{{(.*)\}} ", text, re.M)
                assert any(f'rule="{BURST}"' in labels for labels in series)
                assert all(f'{label}="' in series[0] for label in grouping)


@pytest.mark.parametrize("restart", ["detections-sigkill", "worker-sigterm"])
def test_a_restart_in_the_middle_of_the_window_neither_loses_nor_repeats_the_alert(
    alert_stack: AlertStack, restart: str
) -> None:
    bodies = _burst_bodies(25)
    for body in bodies[:12]:
        alert_stack.post(body)
    # The first twelve are in the window's table (and its changelog) before the restart.
    alert_stack.wait_metric(
        "aha_siem_detections_correlation_events_total", 12, rule=BURST, outcome="counted"
    )
    if restart == "detections-sigkill":
        # Past Faust's commit interval (2.8 s), so that the first twelve matches are not read
        # again after the kill: only the table can still count them.
        time.sleep(5)
        # No chance to flush or stop cleanly: the worker restarts its detections process.
        old = alert_stack.detections_pid()
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if alert_stack.detections_pid() != old:
                    break
            except LookupError:
                pass
            time.sleep(0.3)
        alert_stack.wait_metric("aha_siem_sink_process_restarts_total", 1, sink="detections")
        alert_stack.wait_detections_settled()
    else:
        worker = alert_stack.processes["worker"]
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        alert_stack.start("worker")
    for body in bodies[12:]:
        alert_stack.post(body)
    alert_stack.wait_file_alerts(BURST, 1)
    alert_stack.wait_metric(
        "aha_siem_detections_correlation_events_total", 5, rule=BURST, outcome="covered"
    )
    time.sleep(2)
    _assert_one_burst_alert(alert_stack, bodies)
