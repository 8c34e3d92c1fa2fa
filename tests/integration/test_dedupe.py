"""Dedupe on the real broker with real worker processes: orders, resends, SIGKILL, a second worker."""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from forwarder.config import parse
from forwarder.core.dedupe import change_key, user_key
from tests.helpers import SAMPLES
from tests.integration.conftest import (
    free_port,
    stack_config,
    stop_processes,
    wait_http_ok,
    wait_worker_settled,
)
from tests.integration.kafka_io import read_topic

pytestmark = pytest.mark.integration


def collation(name: str) -> dict[str, Any]:
    return orjson.loads((SAMPLES / "collation" / f"{name}.json").read_bytes())


class Cluster:
    """An ingest and any number of workers sharing one config (topics and consumer group)."""

    def __init__(self, tmp: Path, bootstrap: str, dedupe: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.token = f"dedupe-{uuid.uuid4().hex}"
        self.tree = stack_config(tmp, bootstrap, self.token)
        self.tree["dedupe"] = dedupe or {}
        self.tree["topics"]["partitions"] = 4
        self.tree["kafka"]["session_timeout_seconds"] = 6
        self.tree["worker"]["batch_max_seconds"] = 0.05
        self.config = parse(self.tree)
        self.bootstrap = bootstrap
        self.env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str, name: str) -> subprocess.Popen[bytes]:
        tree = copy.deepcopy(self.tree)
        if role == "worker":
            # One state folder and one metrics port per worker process.
            tree["worker"]["data_dir"] = str(self.tmp / f"{name}-data")
            tree["worker"]["metrics_port"] = free_port()
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tree))
        with open(self.tmp / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "forwarder", role, "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.processes[name] = process
        ready = (
            f"http://127.0.0.1:{tree['ingest']['port']}/readyz"
            if role == "ingest"
            else f"http://127.0.0.1:{tree['worker']['metrics_port']}/metrics"
        )
        wait_http_ok(ready, [process], {name: self.tmp / f"{name}.log"})
        if role == "worker":
            wait_worker_settled(ready)
        return process

    def post(self, body: dict[str, Any]) -> None:
        url = f"http://127.0.0.1:{self.config.ingest.port}/v1/aha/{self.token}"
        response = httpx.post(url, content=orjson.dumps(body), timeout=10)
        assert response.status_code == 202, response.text

    def events(self, expected: int, timeout: float = 90) -> list[dict[str, Any]]:
        records = asyncio.run(
            read_topic(self.bootstrap, self.config.topics.events, expected, timeout)
        )
        return [orjson.loads(record.value) for record in records]

    def stop(self) -> None:
        stop_processes(self.processes.values())


WINDOW = {"mode": "window", "window_seconds": 4, "window_check_interval_seconds": 0.5}


@pytest.fixture(params=["realtime", "window"])
def cluster(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    running = Cluster(
        tmp_path, kafka_bootstrap, WINDOW if request.param == "window" else {"mode": "realtime"}
    )
    try:
        yield running
    finally:
        running.stop()


def on_record(body: dict[str, Any], record_id: str) -> dict[str, Any]:
    """The same audit, moved to a record of its own so scenarios do not meet."""
    moved = copy.deepcopy(body)
    moved["audit"]["auditable_id"] = record_id
    return moved


def summary(events: list[dict[str, Any]]) -> dict[str, tuple[Counter[str], set[str]]]:
    """Per record: new (non-repeated) changes shipped, counted, and every user shipped."""
    out: dict[str, tuple[Counter[str], set[str]]] = {}
    for event in events:
        audit = event["aha"]["audit"]
        changes, users = out.setdefault(audit["auditable"]["id"], (Counter(), set()))
        for change in audit["changes"]:
            if not change.get("repeat"):
                changes[change_key(change)] += 1
        for user in [event.get("user"), *audit["contributors"]]:
            if user and (key := user_key(user)):
                users.add(key)
    return out


PARTS = ["pre_collation_1", "pre_collation_2", "pre_collation_3"]
EXPECTED_CHANGES = Counter(
    {change_key(change): 1 for name in PARTS for change in collation(name)["audit"]["changes"]}
)
EXPECTED_USERS = {user_key(collation(name)["audit"]["user"]) for name in PARTS}

# Window mode keeps the last value per field: the intermediate description is collapsed.
WINDOW_CHANGES = Counter(
    {
        change_key(change): 1
        for name in ("pre_collation_1", "pre_collation_3")
        for change in collation(name)["audit"]["changes"]
    }
)

# Every arrival order of the burst (three parts and the collated audit), plus resends.
ORDERS = {
    " ".join(order): list(order)
    for order in itertools.permutations(
        ["pre_collation_1", "pre_collation_2", "pre_collation_3", "C"]
    )
}
ORDERS["interleaved with resends"] = [
    "pre_collation_2",
    "C",
    "pre_collation_2",
    "pre_collation_1",
    "C",
    "pre_collation_3",
    "pre_collation_1",
]


def test_every_order_and_variant_ships_each_change_and_user_once(cluster: Cluster) -> None:
    cluster.start("ingest", "ingest")
    cluster.start("worker", "worker-1")
    scenarios = {}
    for variant in ("collated_new_id", "collated_reuses_first_id"):
        for order_name, order in ORDERS.items():
            record = str(7700000000000000000 + len(scenarios))
            scenarios[record] = (variant, order_name)
            for name in order:
                cluster.post(on_record(collation(variant if name == "C" else name), record))
    if cluster.config.dedupe.mode == "window":
        # One merged event per record: the last value per field, every user and source id.
        cluster.events(expected=len(scenarios))
        time.sleep(cluster.config.dedupe.window_seconds + 2)
        # Then read again, giving anything shipped twice the time to show.
        events = cluster.events(expected=len(scenarios) + 1, timeout=10)
        assert len(events) == len(scenarios)
        shipped = summary(events)
        for event in events:
            record = event["aha"]["audit"]["auditable"]["id"]
            variant, _ = scenarios[record]
            assert shipped[record] == (WINDOW_CHANGES, EXPECTED_USERS), scenarios[record]
            sources = {name for name in PARTS} | {variant}
            assert set(event["aha"]["collation"]["sources"]) == {
                collation(name)["audit"]["id"] for name in sources
            }
            assert event["aha"]["collation"]["held_seconds"] >= WINDOW["window_seconds"]
        return
    # Every scenario ships at least two events; then anything shipped twice has time to arrive.
    cluster.events(expected=len(scenarios) * 2)
    time.sleep(3)
    events = cluster.events(expected=10_000, timeout=10)
    shipped = summary(events)
    for record, scenario in scenarios.items():
        assert shipped[record] == (EXPECTED_CHANGES, EXPECTED_USERS), scenario
    collated_events = [event for event in events if event["aha"].get("collation")]
    assert collated_events, "a collated audit that ships says so"
    for event in collated_events:
        assert set(event["related"]["user"]) >= {"Priya Menon", "Jonas Düring"}


def _numbered(count: int, first_record: int) -> list[dict[str, Any]]:
    feature = collation("pre_collation_1")
    bodies = []
    for index in range(count):
        body = on_record(feature, str(first_record + index))
        body["audit"]["id"] = str(7712852371226755093 + index)
        bodies.append(body)
    return bodies


def _wait_for_ids(cluster: Cluster, wanted: set[str], timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        # Redelivered copies count towards a plain record count: wait for every distinct id.
        events = cluster.events(expected=10_000, timeout=3)
        if {event["event"]["id"] for event in events} >= wanted or time.monotonic() > deadline:
            return events


def test_a_worker_killed_with_sigkill_loses_nothing(cluster: Cluster) -> None:
    cluster.start("ingest", "ingest")
    first = cluster.start("worker", "worker-1")
    bodies = _numbered(60, 7710000000000000000)
    for body in bodies[:30]:
        cluster.post(body)
    # Killed with no chance to commit or flush: whatever it had not finished comes again.
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    for body in bodies[30:45]:
        cluster.post(body)
    cluster.start("worker", "worker-2")
    for body in bodies[45:]:
        cluster.post(body)
    wanted = {body["audit"]["id"] for body in bodies}
    events = _wait_for_ids(cluster, wanted)
    assert {event["event"]["id"] for event in events} == wanted
    # At least once: a redelivery after the kill may ship an audit again, never drop one.
    assert len(events) >= len(bodies)


def test_a_rebalance_to_a_second_worker_and_back_loses_nothing(cluster: Cluster) -> None:
    cluster.start("ingest", "ingest")
    first = cluster.start("worker", "worker-1")
    bodies = _numbered(60, 7720000000000000000)
    for body in bodies[:20]:
        cluster.post(body)
    cluster.start("worker", "worker-2")  # the group now shares the partitions between two
    for body in bodies[20:40]:
        cluster.post(body)
    first.terminate()  # a graceful leave: worker-2 takes every partition over
    first.wait(30)
    for body in bodies[40:]:
        cluster.post(body)
    wanted = {body["audit"]["id"] for body in bodies}
    events = _wait_for_ids(cluster, wanted)
    assert {event["event"]["id"] for event in events} == wanted


def test_a_stopping_worker_ships_its_held_windows_before_it_leaves(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # A window far longer than the test: only the stop can ship these groups.
    cluster = Cluster(tmp_path, kafka_bootstrap, {**WINDOW, "window_seconds": 3600})
    try:
        cluster.start("ingest", "ingest")
        worker = cluster.start("worker", "worker-1")
        records = [str(7720000000000000000 + index) for index in range(8)]
        for record in records:
            for name in PARTS:
                cluster.post(on_record(collation(name), record))
        # Every audit is held: nothing has shipped.
        time.sleep(3)
        assert cluster.events(expected=1, timeout=3) == []
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        events = cluster.events(expected=len(records) + 1, timeout=10)
        assert sorted(event["aha"]["audit"]["auditable"]["id"] for event in events) == records
        for event in events:
            assert len(event["aha"]["collation"]["sources"]) == len(PARTS)
            assert event["aha"]["collation"]["held_seconds"] < 3600
        # The next worker finds no held window left to ship again.
        cluster.start("worker", "worker-2")
        time.sleep(5)
        assert len(cluster.events(expected=len(records) + 1, timeout=5)) == len(records)
    finally:
        cluster.stop()
