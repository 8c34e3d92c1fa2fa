"""Faults between the ingest and Kafka, in the ingest's spool, and of the ingest process.

The ingest reaches the broker through a `ChaosProxy` (bootstrap and every later connection:
the broker advertises the proxy's port on the ingest's listener); the worker and its file sink
talk to the broker directly, so what is cut is the ingest's path alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from forwarder.devbroker.probe import metadata
from tests.chaos.harness import (
    Answer,
    Bodies,
    Broker,
    Delivered,
    Load,
    Pipeline,
    check_no_loss,
    log,
    running,
    scrape,
)

pytestmark = pytest.mark.chaos

# The largest body the ingest accepts by default is 1 MiB; Kafka's default record limit
# (max.request.size on the producer, message.max.bytes on the broker) is about the same, so a
# body just under the ingest's limit plus the record's key, headers and framing is too large.
TOO_LARGE_FOR_KAFKA = 1_048_492


@pytest.fixture
def proxy(proxied_broker: Broker) -> Iterator[Broker]:
    """The module's broker with its proxy forwarding again after each test."""
    assert proxied_broker.proxy is not None
    proxied_broker.proxy.forward()
    try:
        yield proxied_broker
    finally:
        proxied_broker.proxy.forward()


def test_the_proxied_listener_keeps_the_ingest_on_the_proxy(proxy: Broker) -> None:
    assert proxy.proxy is not None
    through = metadata("127.0.0.1", proxy.proxy.port)
    direct = metadata("127.0.0.1", proxy.port)
    assert [(host, port) for _, host, port in through.brokers] == [("127.0.0.1", proxy.proxy.port)]
    assert [(host, port) for _, host, port in direct.brokers] == [("127.0.0.1", proxy.port)]


def test_connections_cut_delayed_and_blackholed_between_ingest_and_broker(
    proxy: Broker, tmp_path: Path
) -> None:
    """Resets, a slow path and a 10 s partition: every webhook is answered 202 within Aha!'s
    5 s (from the spool while Kafka is away) and is in the file sink within 45 s of healing."""
    assert proxy.proxy is not None
    chaos = proxy.proxy
    with (
        running(Pipeline(tmp_path, proxy, through_proxy=True)) as pipeline,
        Load(pipeline.webhook_url, rate=20) as load,
    ):
        delivered = Delivered(pipeline.events_file).start()
        began = time.monotonic()
        load.start()
        load.wait_accepted(20)
        for _ in range(3):
            chaos.cut()
            time.sleep(2)
        log("path slowed by 2 s each way (over the ingest's 1 s produce time-out)")
        chaos.delay(2.0)
        time.sleep(5)
        log("path blackholed for 10 s")
        chaos.blackhole()
        time.sleep(10)
        chaos.resume()
        log("path healed")
        time.sleep(5)
        load.stop()
        spooled = scrape(f"{pipeline.url}/metrics", "aha_siem_ingest_spool_appended_total")
        report = check_no_loss(
            "ingest-broker path cut, slowed, blackholed",
            load,
            delivered,
            within=45,
            began=began,
            pipeline=pipeline,
            notes=[f"proxy {chaos.stats}", f"spooled {spooled}"],
        )
        delivered.close()
    assert chaos.stats.connections > 0
    assert spooled, "the ingest never spooled: the faults did not reach its Kafka path"
    assert set(report.outcomes) == {"202"}, f"every webhook accepted: {report.outcomes}"
    assert load.slow_answers() == 0, "every answer within Aha!'s 5 s"


def test_a_record_too_large_for_kafka_is_refused_or_set_aside_and_never_holds_back_others(
    proxy: Broker, tmp_path: Path
) -> None:
    """Bodies at the edge of what Kafka takes, under a steady load:

    - a valid body of 1,048,492 bytes, just under the default max_body_bytes (1 MiB), which
      with its key, headers and framing is over Kafka's default record limit (1 MiB);
    - a 600 kB body taken into the spool while the path to Kafka is blackholed, after which an
      operator lowers the raw topic's max.message.bytes to 512 KiB: Kafka refuses it when the
      spool drains, with the webhooks spooled behind it waiting;
    - another 600 kB body once the path is back, sent straight to Kafka.

    Each must be answered 413, or accepted and then delivered or quarantined (never a 202 that
    vanishes); the webhooks after them are delivered all the same (no wedge, no restart)."""
    assert proxy.proxy is not None
    with (
        running(Pipeline(tmp_path, proxy, through_proxy=True)) as pipeline,
        Load(pipeline.webhook_url, rate=10) as load,
    ):
        delivered = Delivered(pipeline.events_file).start()
        began = time.monotonic()
        load.start()
        load.wait_accepted(10)
        bodies = Bodies()
        large: dict[str, Answer] = {}
        edge_id, edge_body = bodies.sized(TOO_LARGE_FOR_KAFKA)
        large_bodies = {edge_id: edge_body}
        large[edge_id] = load.post(edge_id, edge_body)
        log(f"the {len(edge_body)}-byte body: {large[edge_id].outcome}")
        time.sleep(3)
        proxy.proxy.blackhole()
        time.sleep(2)
        spooled_id, spooled_body = bodies.sized(600_000)
        large_bodies[spooled_id] = spooled_body
        large[spooled_id] = load.post(spooled_id, spooled_body)
        log(f"a {len(spooled_body)}-byte body with Kafka away: {large[spooled_id].outcome}")
        time.sleep(3)
        set_topic_config(
            proxy.bootstrap, pipeline.config.topics.raw, "max.message.bytes", 512 * 1024
        )
        proxy.proxy.resume()
        log("raw topic's max.message.bytes lowered to 512 KiB, path healed: the spool drains")
        time.sleep(5)
        direct_id, direct_body = bodies.sized(600_000)
        large_bodies[direct_id] = direct_body
        large[direct_id] = load.post(direct_id, direct_body)
        log(f"a {len(direct_body)}-byte body with Kafka back: {large[direct_id].outcome}")
        time.sleep(8)
        load.stop()
        last = max(answer.answered_at for answer in large.values())
        after = [i for i, a in load.accepted().items() if a.sent_at > last]
        for audit_id in large:
            _forget(load, audit_id)
        report = check_no_loss(
            "records too large for Kafka",
            load,
            delivered,
            within=30,
            began=began,
            pipeline=pipeline,
            notes=[f"accepted after the large bodies: {len(after)}"],
        )
        delivered.poll()
        delivered.close()
    in_quarantine = quarantined_sha256(pipeline)
    fates = []
    for audit_id, answer in large.items():
        if answer.status != 202:
            fates.append((answer.size, answer.outcome))
        elif audit_id in delivered.seen():
            fates.append((answer.size, "202, delivered"))
        elif hashlib.sha256(large_bodies[audit_id]).hexdigest() in in_quarantine:
            fates.append((answer.size, "202, quarantined"))
        else:
            fates.append((answer.size, "202, lost"))
    report.notes.append(f"large bodies (bytes, fate): {fates}")
    log(report.notes[-1])
    assert after, "webhooks after the large ones were accepted"
    assert report.delivered == report.accepted
    for size, fate in fates:
        assert fate != "202, lost", (
            f"the {size}-byte body was accepted, then neither delivered nor quarantined"
        )
        assert fate.startswith(("413", "202")), f"the {size}-byte body: {fate}"


def quarantined_sha256(pipeline: Pipeline) -> set[str]:
    """The body-sha256 of every record in the ingest's quarantine (`aha-siem spool quarantine`)."""
    config = str(pipeline.ingest_config)
    done = subprocess.run(
        [sys.executable, "-m", "forwarder", "spool", "quarantine", "show", "--config", config],
        capture_output=True,
        text=True,
        env=pipeline.env,
        timeout=60,
    )
    if done.returncode != 0:
        log(f"spool quarantine show failed: {done.stderr.strip()}")
        return set()
    return {
        orjson.loads(line)["headers"].get("body-sha256", "")
        for line in done.stdout.splitlines()
        if line.strip()
    }


def set_topic_config(bootstrap: str, topic: str, name: str, value: int) -> None:
    """Change one topic setting, as an operator would with kafka-configs."""

    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {name: str(value)})]
            )
        finally:
            await admin.close()

    asyncio.run(alter())


def _forget(load: Load, audit_id: str) -> None:
    """Leave one answer out of the load's record (it is checked apart from the rest)."""
    with load._lock:
        load.answers.pop(audit_id, None)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of `size` at `path` when running as root (True), else nothing (False)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    try:
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                capture_output=True,
                text=True,
            )
            mounted = done.returncode == 0
            if not mounted:
                log(f"tmpfs mount failed ({done.stderr.strip()}): using spool.max_bytes instead")
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_spool_disk_refuses_with_503_and_never_loses_a_202(
    proxy: Broker, tmp_path: Path
) -> None:
    """Kafka unreachable and the spool's disk (a 2 MiB tmpfs; without root, a 1 MiB
    spool.max_bytes) full: webhooks are answered 503 spool_full, and every one answered 202 is
    delivered once the path heals."""
    assert proxy.proxy is not None
    spool = tmp_path / "spool"
    with small_disk(spool, "2m") as mounted:
        ingest = {"spool": {"directory": str(spool), "segment_bytes": 256 * 1024}}
        if not mounted:
            ingest["spool"]["max_bytes"] = 1024 * 1024
        with (
            running(Pipeline(tmp_path, proxy, through_proxy=True, ingest=ingest)) as pipeline,
            Load(pipeline.webhook_url, rate=20, pad=40_000) as load,
        ):
            delivered = Delivered(pipeline.events_file).start()
            began = time.monotonic()
            load.start()
            load.wait_accepted(10)
            proxy.proxy.blackhole()
            log("ingest-broker path blackholed: 40 kB bodies go to the spool until it is full")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "503 spool_full" not in load.outcomes():
                time.sleep(0.5)
            time.sleep(5)
            proxy.proxy.resume()
            log("path healed: the spool drains")
            time.sleep(5)
            load.stop()
            report = check_no_loss(
                f"spool full ({'2 MiB tmpfs' if mounted else 'spool.max_bytes 1 MiB'})",
                load,
                delivered,
                within=45,
                began=began,
                pipeline=pipeline,
            )
            delivered.close()
    assert report.outcomes.get("503 spool_full", 0) > 0, f"never refused: {report.outcomes}"
    unexpected = {k: v for k, v in report.outcomes.items() if k not in ("202", "503 spool_full")}
    assert not unexpected, f"answers other than 202 and 503 spool_full: {unexpected}"


def test_a_sigkilled_ingest_loses_nothing_it_accepted(proxy: Broker, tmp_path: Path) -> None:
    """SIGKILL of the ingest under load, twice: once with Kafka answering, once while it holds
    records in its spool (path blackholed). Restarted (as its supervisor would), it drains the
    spool; every webhook answered 202 is delivered within 45 s of the restart."""
    assert proxy.proxy is not None
    with (
        running(Pipeline(tmp_path, proxy, through_proxy=True)) as pipeline,
        Load(pipeline.webhook_url, rate=20) as load,
    ):
        delivered = Delivered(pipeline.events_file).start()
        began = time.monotonic()
        load.start()
        load.wait_accepted(40)
        pipeline.kill("ingest", signal.SIGKILL)
        log("ingest SIGKILLed with Kafka answering")
        time.sleep(1)
        pipeline.start_ingest()
        load.wait_accepted(len(load.accepted()) + 20)
        proxy.proxy.blackhole()
        time.sleep(4)
        spooled = scrape(f"{pipeline.url}/metrics", "aha_siem_ingest_spool_records")
        pipeline.kill("ingest", signal.SIGKILL)
        log(f"ingest SIGKILLed holding {spooled} spooled record(s)")
        proxy.proxy.resume()
        pipeline.start_ingest()
        time.sleep(5)
        load.stop()
        report = check_no_loss(
            "ingest SIGKILL (direct, then spooling)",
            load,
            delivered,
            within=45,
            began=began,
            pipeline=pipeline,
            notes=[f"spool held {spooled} record(s) at the second kill"],
        )
        delivered.close()
    assert spooled, "the second kill was meant to find records in the spool"
    assert report.accepted > 60
