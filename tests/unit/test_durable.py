from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from forwarder.ingest.durable import DurableWriter
from forwarder.ingest.spool import Spool
from forwarder.metrics import IngestMetrics, SpoolMetrics


class FlakyProducer:
    """A producer whose cluster can be switched off (sends hang) and on."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[bytes] = []

    async def start(self) -> None:
        if not self.up:
            raise ConnectionError("no brokers")

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        while not self.up:
            await asyncio.sleep(0.01)
        self.sent.append(value)

    async def ready(self) -> bool:
        return self.up


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        # Polling is the point: the writer's state has no event to wait on from outside.
        while not predicate():
            await asyncio.sleep(0.02)


async def test_outage_goes_to_the_spool_and_drains_in_order_then_writes_go_direct(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    producer = FlakyProducer()
    writer = DurableWriter(
        producer,
        Spool(tmp_path / "spool", max_bytes=1 << 20, metrics=SpoolMetrics(registry)),
        produce_timeout=0.1,
        metrics=IngestMetrics(registry),
    )
    await writer.start()
    try:
        # Down from the start: everything is spooled, quickly.
        where = [await writer.write("raw", f"{i}".encode(), b"k", []) for i in range(5)]
        assert where == ["spool"] * 5
        assert await writer.ready()  # the spool can take records
        producer.up = True
        await wait_until(lambda: len(producer.sent) == 5)
        assert producer.sent == [b"0", b"1", b"2", b"3", b"4"]
        await wait_until(lambda: writer._direct)
        assert await writer.write("raw", b"5", b"k", []) == "kafka"
        # Kafka stalls: the write waits at most the timeout, then spools; later ones follow it.
        producer.up = False
        assert await asyncio.wait_for(writer.write("raw", b"6", b"k", []), 2.0) == "spool"
        assert await writer.write("raw", b"7", b"k", []) == "spool"
        producer.up = True
        await wait_until(lambda: b"7" in producer.sent)
        first_seen = list(dict.fromkeys(producer.sent))
        assert first_seen == [str(i).encode() for i in range(8)]
        assert registry.get_sample_value("aha_siem_ingest_spool_records") == 0
    finally:
        await writer.stop()
