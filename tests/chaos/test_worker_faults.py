"""Faults behind the raw topic: sink and worker processes killed, a rebalance under load, and a
SIEM that is down, slow, or answers garbage, beside a file sink that must keep going.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from tests.chaos.harness import (
    Broker,
    Delivered,
    Load,
    Pipeline,
    check_no_loss,
    file_sink,
    http_sink,
    log,
    running,
)
from tests.chaos.proxy import ChaosProxy
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.server import AsgiServer
from tests.integration.kafka_io import read_topic

pytestmark = pytest.mark.chaos


def test_a_sigkilled_sink_process_is_restarted_and_its_file_loses_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    """SIGKILL of the file sink's process mid-load (20 webhooks/s): the worker starts it again
    by itself and every accepted id is in the file within 30 s of the kill."""
    with running(Pipeline(tmp_path, broker)) as pipeline, Load(pipeline.webhook_url, 20) as load:
        delivered = Delivered(pipeline.events_file).start()
        began = time.monotonic()
        load.start()
        load.wait_accepted(60)
        victim = pipeline.sink_pid("file")
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        log(f"file sink process {victim} SIGKILLed")
        deadline = killed + 30
        while (pipeline.metric("aha_siem_sink_process_restarts_total", sink="file") or 0) < 1:
            assert time.monotonic() < deadline, "the worker did not restart the sink process"
            time.sleep(0.3)
        time.sleep(8)
        load.stop()
        check_no_loss(
            "file sink process SIGKILL",
            load,
            delivered,
            within=max(1.0, 30 - (time.monotonic() - killed)),
            began=began,
            pipeline=pipeline,
            notes=[f"restarted as pid {pipeline.sink_pid('file')}"],
        )
        delivered.close()


@pytest.mark.chaos_slow
def test_a_sigkilled_worker_loses_nothing_once_started_again(
    broker: Broker, tmp_path: Path
) -> None:
    """SIGKILL of the worker (its sink processes follow it) mid-load; started again, as its
    supervisor would, on the same state folder: every accepted id in the file within 60 s."""
    with running(Pipeline(tmp_path, broker)) as pipeline, Load(pipeline.webhook_url, 20) as load:
        delivered = Delivered(pipeline.events_file).start()
        began = time.monotonic()
        load.start()
        load.wait_accepted(60)
        pipeline.kill("worker", signal.SIGKILL)
        killed = time.monotonic()
        log("worker SIGKILLed")
        time.sleep(2)
        pipeline.start_worker(settle=False)
        log(f"worker started again {time.monotonic() - killed:.1f} s after the kill")
        time.sleep(10)
        load.stop()
        check_no_loss(
            "worker SIGKILL",
            load,
            delivered,
            within=max(1.0, 60 - (time.monotonic() - killed)),
            began=began,
            pipeline=pipeline,
        )
        delivered.close()


@pytest.mark.chaos_slow
def test_a_second_worker_joining_under_load_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    """A second worker joins the group mid-load (20 webhooks/s): the normalize agent's and the
    file sink's partitions are split between the two (each worker's file sink writes a file of
    its own); every accepted id is in one of the files within 60 s of the join."""
    with running(Pipeline(tmp_path, broker)) as pipeline, Load(pipeline.webhook_url, 20) as load:
        delivered = Delivered(pipeline.events_file).start()
        began = time.monotonic()
        load.start()
        load.wait_accepted(100)
        pipeline.start_worker("worker-2", settle=False)
        delivered.add(pipeline.file_of("worker-2"))
        joined = time.monotonic()
        log("second worker up")
        time.sleep(20)
        load.stop()
        report = check_no_loss(
            "rebalance: a second worker joins",
            load,
            delivered,
            within=max(1.0, 60 - (time.monotonic() - joined)),
            began=began,
            pipeline=pipeline,
        )
        delivered.close()
        second = Delivered(pipeline.file_of("worker-2"))
        second.poll()
        shared = pipeline.metric("aha_siem_worker_assigned_partitions", "worker-2")
        report.notes.append(
            f"second worker: {shared} raw partition(s), {len(second.seen())} id(s) in its file"
        )
        log(report.notes[-1])
    assert shared, "the second worker took no partition: no rebalance happened"


# Answers a broken SIEM (or what sits in front of it) gives: not HTTP at all, and a 200 whose
# body stops short of its Content-Length before the connection closes.
GARBAGE = b"\x00\x16\x03garbage, not HTTP\r\n\r\n"
ABBREVIATED = (
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{"accep'
)


def test_a_siem_down_slow_or_answering_garbage_never_stalls_the_file_sink(
    broker: Broker, tmp_path: Path
) -> None:
    """An HTTP sink beside the file sink; its receiver is refused (down), slow (answers after
    the sink's 5 s time-out), answers bytes that are not HTTP, then a 200 cut short, 8 s each
    under 10 webhooks/s. Meanwhile the file sink ships every accepted id within 15 s; once the
    receiver is healthy again every id reaches it or the sink's DLQ within 60 s (no wedge)."""
    receiver = HttpReceiver()
    phases = {"down", "slow", "garbage", "abbreviated"}
    with AsgiServer(receiver) as server, ChaosProxy(("127.0.0.1", server.port)) as front:
        sinks = [
            file_sink(tmp_path / "events.ndjson"),
            http_sink("siem", f"http://{front.address}"),
        ]
        with (
            running(Pipeline(tmp_path, broker, sinks=sinks)) as pipeline,
            Load(pipeline.webhook_url, 10) as load,
        ):
            delivered = Delivered(pipeline.events_file).start()
            began = time.monotonic()
            load.start()
            load.wait_accepted(20)
            lagging: dict[str, int] = {}
            for phase in ("down", "slow", "garbage", "abbreviated"):
                if phase == "down":
                    front.refuse()
                elif phase == "slow":
                    front.forward()
                    receiver.delay_seconds = 8
                elif phase == "garbage":
                    receiver.delay_seconds = 0
                    front.reply(GARBAGE)
                else:
                    front.reply(ABBREVIATED)
                log(f"SIEM {phase}")
                phase_began = time.monotonic()
                time.sleep(8)
                # Accepted at least 5 s ago: the file sink (batching 0.2 s) has had its chance.
                due = [i for i, a in load.accepted().items() if a.answered_at < phase_began + 3]
                lagging[phase] = len(delivered.wait_for(due, 15))
            front.forward()
            healed = time.monotonic()
            log(f"SIEM healthy again; file sink lagging by phase: {lagging}")
            time.sleep(5)
            load.stop()
            report = check_no_loss(
                "SIEM down/slow/garbage beside a file sink",
                load,
                delivered,
                within=15,
                began=began,
                pipeline=pipeline,
                notes=[f"proxy {front.stats}", f"file sink ids late per phase: {lagging}"],
            )
            delivered.close()
            accepted = set(load.accepted())
            dlq_topic = f"{pipeline.config.topics.dlq_prefix}siem"
            deadline = healed + 60
            while True:
                received = {str(event["event"]["id"]) for event in receiver.accepted_events()}
                missing = accepted - received
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(1)
            dead = asyncio.run(read_topic(broker.bootstrap, dlq_topic, len(missing) or 1, 10))
            dead_ids = {str(orjson.loads(record.value)["event"]["id"]) for record in dead}
            backlog = pipeline.metric("aha_siem_sink_backlog_messages", sink="siem")
            lost = missing - dead_ids
            counts = [str(event["event"]["id"]) for event in receiver.accepted_events()]
            dup = len(counts) - len(set(counts))
            report.notes.append(
                f"SIEM received {len(received & accepted)}/{len(accepted)} "
                f"({dup} duplicate deliveries), dead-lettered {len(dead_ids)}, "
                f"neither {len(lost)}, backlog {backlog}"
            )
            log(report.notes[-1])
            tails = pipeline.log_tails() if lost else ""
    assert phases == set(lagging)
    assert all(count == 0 for count in lagging.values()), (
        f"the file sink fell behind while the SIEM failed: {lagging}"
    )
    assert not lost, (
        f"{len(lost)} accepted id(s) neither reached the SIEM nor its DLQ 60 s after it healed "
        f"(the sink is wedged?): {sorted(lost)[:10]}\n{tails}"
    )
