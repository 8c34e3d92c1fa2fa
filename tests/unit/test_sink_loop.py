"""The sink's delivery loop: one batch in flight while the next fills, acks in offset order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from forwarder.config import Config
from forwarder.metrics import SinkMetrics
from forwarder.sinks.base import DELIVERED, BatchResult
from forwarder.sinks.loop import SinkLoop


class GatedSink:
    """Takes every batch, each only once the test opens the gate."""

    name = "gated"

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.gate = asyncio.Event()

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        return payload

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        self.batches.append(list(events))
        await self.gate.wait()
        return DELIVERED


def loop(tmp_path: Path, sink: GatedSink, acked: list[int], **route: Any) -> SinkLoop[int]:
    entry = {"name": "gated", "type": "file", "path": str(tmp_path / "out"), "batch_max_events": 2}
    config = Config.model_validate({"sinks": [entry | route]})

    async def ack(offset: int) -> None:
        acked.append(offset)

    async def no_dlq(**record: Any) -> Any:
        raise AssertionError(f"nothing goes to the DLQ here: {record}")

    metrics = SinkMetrics(CollectorRegistry())
    return SinkLoop(sink, config.sinks[0], config, metrics, no_dlq, ack)  # type: ignore[arg-type]


def event(number: int, action: str = "update") -> bytes:
    return orjson.dumps({"aha": {"audit": {"action": action}}, "n": number})


async def test_the_next_batch_fills_while_one_is_in_flight_and_acks_keep_their_order(
    tmp_path: Path,
) -> None:
    sink, acked = GatedSink(), list[int]()
    delivery = loop(tmp_path, sink, acked)
    await delivery.offer(None, event(0), {}, 0)
    await delivery.offer(None, event(1), {}, 1)  # full: on its way, not answered yet
    await asyncio.sleep(0)
    await delivery.offer(None, event(2), {}, 2)  # read and batched meanwhile
    assert len(sink.batches) == 1 and acked == []
    sink.gate.set()
    await delivery.drain()
    assert [len(batch) for batch in sink.batches] == [2, 1]
    assert acked == [0, 1, 2]
    assert delivery.delivered == 3


async def test_an_event_left_out_waits_for_the_batch_in_flight_before_it(tmp_path: Path) -> None:
    sink, acked = GatedSink(), list[int]()
    delivery = loop(tmp_path, sink, acked, route={"actions": ["update"]})
    await delivery.offer(None, event(0), {}, 0)
    await delivery.offer(None, event(1), {}, 1)
    await asyncio.sleep(0)
    await delivery.offer(None, event(2, "create"), {}, 2)  # filtered: nothing to send
    assert acked == []  # offset 2 must not be committed before 0 and 1 are delivered
    sink.gate.set()
    await delivery.drain()
    assert acked == [0, 1, 2] and delivery.filtered == 1


async def test_abandoning_a_batch_in_flight_acks_nothing(tmp_path: Path) -> None:
    sink, acked = GatedSink(), list[int]()
    delivery = loop(tmp_path, sink, acked)
    await delivery.offer(None, event(0), {}, 0)
    await delivery.offer(None, event(1), {}, 1)
    await asyncio.sleep(0)
    await delivery.abandon()
    assert len(sink.batches) == 1 and acked == []
