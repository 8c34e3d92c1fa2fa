from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber
from prometheus_client import CollectorRegistry

from forwarder.ingest.durable import DurableWriter, RecordTooLarge
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

    async def recreate(self) -> None:
        await self.stop()
        await self.start()

    def max_record_bytes(self, topic: str) -> int:
        return 1 << 20


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
        # The spool counts a record gone once the drain has its ack, a moment after the send.
        await wait_until(lambda: registry.get_sample_value("aha_siem_ingest_spool_records") == 0)
    finally:
        await writer.stop()


class OutOfStepProducer(FlakyProducer):
    """An idempotent producer whose sequence fell out of step: every send fails until replaced."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.broken = True
        self.recreated = 0

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        if self.broken:
            raise OutOfOrderSequenceNumber()
        await super().send(topic, value, key, headers)

    async def recreate(self) -> None:
        self.recreated += 1
        self.broken = False


async def test_a_producer_out_of_sequence_is_replaced_and_the_spool_drains(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    producer = OutOfStepProducer()
    writer = DurableWriter(
        producer,
        Spool(tmp_path / "spool", max_bytes=1 << 20, metrics=SpoolMetrics(registry)),
        produce_timeout=0.5,
        metrics=IngestMetrics(registry),
    )
    await writer.start()
    try:
        # The first write meets the broken producer and is spooled; the drain must not retry
        # the same producer for ever (the wedge seen after a broker restart under load).
        assert await writer.write("raw", b"0", b"k", []) == "spool"
        assert await writer.write("raw", b"1", b"k", []) == "spool"
        await wait_until(lambda: producer.sent == [b"0", b"1"], timeout=5.0)
        assert producer.recreated == 1
        assert registry.get_sample_value("aha_siem_ingest_kafka_producer_recreated_total") == 1
        labels = {"topic": "spool", "failure": "client_broken"}
        assert registry.get_sample_value("aha_siem_ingest_kafka_produce_failures_total", labels)
    finally:
        await writer.stop()


async def test_a_record_too_large_for_kafka_is_refused_before_it_is_stored(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    producer = FlakyProducer()
    spool = Spool(tmp_path / "spool", max_bytes=8 << 20, metrics=SpoolMetrics(registry))
    writer = DurableWriter(producer, spool, produce_timeout=0.1, metrics=IngestMetrics(registry))
    await writer.start()
    try:
        with pytest.raises(RecordTooLarge) as refused:
            await writer.write("raw", b"x" * (1 << 20), b"feature:1", [("source", b"webhook")])
        assert refused.value.limit == 1 << 20
        assert spool.is_empty()
        # What follows is unaffected.
        assert await writer.write("raw", b"small", b"k", []) == "spool"
    finally:
        await writer.stop()


class FailingRecreate(OutOfStepProducer):
    """Broken, and the cluster is away again when the producer is replaced."""

    def __init__(self) -> None:
        super().__init__()
        self.failing_starts = 0

    async def recreate(self) -> None:
        self.recreated += 1
        self.failing_starts = 2
        raise ConnectionError("no brokers")

    async def start(self) -> None:
        if self.failing_starts:
            self.failing_starts -= 1
            raise ConnectionError("no brokers")
        if self.recreated:
            self.broken = False


async def test_a_replacement_that_cannot_connect_is_retried_until_kafka_is_back(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    producer = FailingRecreate()
    writer = DurableWriter(
        producer,
        Spool(tmp_path / "spool", max_bytes=1 << 20, metrics=SpoolMetrics(registry)),
        produce_timeout=0.5,
        metrics=IngestMetrics(registry),
    )
    await writer.start()
    try:
        assert await writer.write("raw", b"0", b"k", []) == "spool"
        await wait_until(lambda: producer.sent == [b"0"], timeout=15.0)
        assert producer.recreated == 1
    finally:
        await writer.stop()
