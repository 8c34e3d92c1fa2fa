"""The Faust sensor, driven the way Faust's consumer, streams and app call it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message
from prometheus_client import CollectorRegistry

from forwarder.pipeline.sensors import FaustSensor

RAW = TP("aha.audit.raw", 0)
RAW_1 = TP("aha.audit.raw", 1)
EVENTS = TP("aha.audit.events", 3)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeApp:
    monitor: Any = None
    rebalancing_count: int = 0
    consumer: Any = None


@dataclass
class FakeConsumer:
    """Just what the sensor reads from Faust's consumer: end offsets and the assignment."""

    app: FakeApp
    highwaters: dict[TP, int] = field(default_factory=dict)

    def highwater(self, tp: TP) -> int:
        if tp not in self.highwaters:
            raise AssertionError("Partition is not assigned")  # what aiokafka does
        return self.highwaters[tp]

    def assignment(self) -> set[TP]:
        return set(self.highwaters)


def message(tp: TP, offset: int) -> Message:
    return Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def setup() -> tuple[CollectorRegistry, FaustSensor, Clock, FakeConsumer]:
    registry = CollectorRegistry()
    clock = Clock()
    sensor = FaustSensor(registry, app="worker", time=clock)
    app = FakeApp(monitor=sensor)
    consumer = FakeConsumer(app)
    app.consumer = consumer
    return registry, sensor, clock, consumer


def test_messages_are_counted_per_topic_and_their_processing_time_observed(setup: Any) -> None:
    registry, sensor, clock, _ = setup
    first, second = message(RAW, 0), message(EVENTS, 7)
    sensor.on_message_in(RAW, 0, first)
    sensor.on_message_in(EVENTS, 7, second)
    sensor.on_message_in(EVENTS, 8, message(EVENTS, 8))
    clock.now += 0.3
    sensor.on_message_out(RAW, 0, first)
    clock.now += 4.0
    sensor.on_message_out(EVENTS, 7, second)

    received = "aha_siem_faust_messages_received_total"
    assert value(registry, received, app="worker", topic="aha.audit.raw") == 1
    assert value(registry, received, app="worker", topic="aha.audit.events") == 2
    processing = "aha_siem_faust_message_processing_seconds"
    raw = {"app": "worker", "topic": "aha.audit.raw"}
    assert value(registry, f"{processing}_sum", **raw) == pytest.approx(0.3)
    assert value(registry, f"{processing}_bucket", **raw, le="0.25") == 0
    assert value(registry, f"{processing}_bucket", **raw, le="0.5") == 1
    events = {"app": "worker", "topic": "aha.audit.events"}
    assert value(registry, f"{processing}_sum", **events) == pytest.approx(4.3)


def test_lag_is_the_end_offset_minus_the_committed_offset(setup: Any) -> None:
    registry, sensor, _, consumer = setup
    lag = "aha_siem_faust_consumer_lag_messages"
    consumer.highwaters = {RAW: 10, RAW_1: 4}
    # Reading started at offset 2 (the group's committed offset): nothing committed yet.
    for offset in range(2, 6):
        sensor.on_message_in(RAW, offset, message(RAW, offset))
    state = sensor.on_commit_initiated(consumer)
    sensor.on_commit_completed(consumer, state)
    assert value(registry, lag, app="worker", topic="aha.audit.raw", partition="0") == 8
    # A partition nothing was read from has no known position: no series rather than a guess.
    assert value(registry, lag, app="worker", topic="aha.audit.raw", partition="1") is None

    sensor.on_tp_commit({RAW: 6})
    consumer.highwaters[RAW] = 12  # new records arrived meanwhile
    sensor.on_commit_completed(consumer, sensor.on_commit_initiated(consumer))
    assert value(registry, lag, app="worker", topic="aha.audit.raw", partition="0") == 6

    sensor.on_tp_commit({RAW: 12})
    sensor.on_commit_completed(consumer, sensor.on_commit_initiated(consumer))
    assert value(registry, lag, app="worker", topic="aha.audit.raw", partition="0") == 0


def test_commit_rounds_are_timed(setup: Any) -> None:
    registry, sensor, clock, consumer = setup
    state = sensor.on_commit_initiated(consumer)
    clock.now += 0.02
    sensor.on_commit_completed(consumer, state)
    name = "aha_siem_faust_commit_duration_seconds"
    assert value(registry, f"{name}_count", app="worker") == 1
    assert value(registry, f"{name}_sum", app="worker") == pytest.approx(0.02)


def test_a_rebalance_is_counted_timed_and_drops_partitions_no_longer_held(setup: Any) -> None:
    registry, sensor, clock, consumer = setup
    lag = "aha_siem_faust_consumer_lag_messages"
    consumer.highwaters = {RAW: 5, RAW_1: 9}
    sensor.on_message_in(RAW, 1, message(RAW, 1))
    sensor.on_message_in(RAW_1, 3, message(RAW_1, 3))
    sensor.on_commit_completed(consumer, sensor.on_commit_initiated(consumer))
    assert value(registry, lag, app="worker", topic="aha.audit.raw", partition="1") == 6

    app = consumer.app
    app.rebalancing_count = 1
    state = sensor.on_rebalance_start(app)
    clock.now += 1.5
    sensor.on_rebalance_return(app, state)
    clock.now += 2.0
    del consumer.highwaters[RAW_1]  # the partition moved to another worker
    sensor.on_rebalance_end(app, state)

    assert value(registry, "aha_siem_faust_rebalances_total", app="worker") == 1
    duration = "aha_siem_faust_rebalance_duration_seconds"
    assert value(registry, f"{duration}_sum", app="worker") == pytest.approx(3.5)
    assert value(registry, lag, app="worker", topic="aha.audit.raw", partition="1") is None
    assert value(registry, lag, app="worker", topic="aha.audit.raw", partition="0") == 4


def test_an_unknown_end_offset_falls_back_to_the_last_fetched_one(setup: Any) -> None:
    registry, sensor, _, consumer = setup
    sensor.on_message_in(EVENTS, 3, message(EVENTS, 3))
    sensor.track_tp_end_offset(EVENTS, 20)  # what Faust's consumer reports per fetched record
    sensor.on_commit_completed(consumer, sensor.on_commit_initiated(consumer))
    lag = "aha_siem_faust_consumer_lag_messages"
    assert value(registry, lag, app="worker", topic="aha.audit.events", partition="3") == 17


def test_sends_and_send_errors_are_counted(setup: Any) -> None:
    registry, sensor, _, _ = setup
    state = sensor.on_send_initiated(None, "aha.audit.events", None, 1, 10)
    sensor.on_send_completed(None, state, None)
    state = sensor.on_send_initiated(None, "aha.audit.events", None, 1, 10)
    sensor.on_send_error(None, RuntimeError("broker gone"), state)
    sent = "aha_siem_faust_messages_sent_total"
    assert value(registry, sent, app="worker", topic="aha.audit.events") == 2
    assert value(registry, "aha_siem_faust_send_errors_total", app="worker") == 1


def test_a_batch_produced_past_faust_s_topics_is_counted_as_sent(setup: Any) -> None:
    registry, sensor, _, _ = setup
    sensor.on_send_initiated(None, "aha.audit.events", None, 1, 10)
    sensor.count_sent("aha.audit.events", 500, errors=2)
    sent = "aha_siem_faust_messages_sent_total"
    assert value(registry, sent, app="worker", topic="aha.audit.events") == 501
    assert value(registry, "aha_siem_faust_send_errors_total", app="worker") == 2


def test_two_apps_share_one_registry_under_their_own_label() -> None:
    registry = CollectorRegistry()
    worker = FaustSensor(registry, app="worker")
    other = FaustSensor(registry, app="replay")
    worker.on_message_in(RAW, 0, message(RAW, 0))
    other.on_message_in(RAW, 0, message(RAW, 0))
    other.on_message_in(RAW, 1, message(RAW, 1))
    received = "aha_siem_faust_messages_received_total"
    assert value(registry, received, app="worker", topic="aha.audit.raw") == 1
    assert value(registry, received, app="replay", topic="aha.audit.raw") == 2


def test_it_installs_as_the_apps_monitor_and_warns_when_it_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    app = faust.App("sensor-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    sensor = FaustSensor(registry, app="worker")
    app.monitor = sensor
    assert app.monitor is sensor

    # Added only as a plain sensor, it misses the committed offsets: say so once.
    stray = FaustSensor(CollectorRegistry(), app="worker")
    consumer: Any = FakeConsumer(FakeApp(monitor=sensor))
    with caplog.at_level(logging.WARNING, logger="forwarder.sensors"):
        stray.on_commit_completed(consumer, stray.on_commit_initiated(consumer))
        stray.on_commit_completed(consumer, stray.on_commit_initiated(consumer))
    assert [record.message for record in caplog.records].count(
        "Faust sensor is not the app's monitor: lag is measured from read offsets"
    ) == 1


async def test_an_agent_crash_is_counted_and_logged_with_its_traceback(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry, sensor, _, _ = setup
    assert value(registry, "aha_siem_faust_agent_crashes_total", app="worker") == 0
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        with caplog.at_level(logging.ERROR, logger="forwarder.sensors"):
            await sensor.on_agent_error(FakeAgent("normalize"), error)
    assert value(registry, "aha_siem_faust_agent_crashes_total", app="worker") == 1
    (record,) = caplog.records
    assert record.agent == "normalize"
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])


async def test_the_worker_and_sink_apps_report_their_agents_crashes(tmp_path: Any) -> None:
    from forwarder.config import parse
    from forwarder.pipeline.app import create_app
    from forwarder.pipeline.sink_app import create_sink_app

    config = parse(
        {
            "worker": {"data_dir": str(tmp_path)},
            "sinks": [{"type": "file", "name": "file", "path": str(tmp_path / "out.ndjson")}],
        }
    )
    worker_registry, sink_registry = CollectorRegistry(), CollectorRegistry()
    for role, app, registry in (
        ("normalize", create_app(config, worker_registry), worker_registry),
        ("sink-file", create_sink_app(config, config.sinks[0], sink_registry), sink_registry),
    ):
        (agent,) = app.agents.values()
        # The callback Faust gives each agent; the consumer is not started here.
        await agent._on_error(agent, RuntimeError("boom"))
        assert value(registry, "aha_siem_faust_agent_crashes_total", app=role) == 1, role


@dataclass
class FakeAgent:
    name: str
