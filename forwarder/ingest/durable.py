"""Make each accepted body durable: the Kafka ack when Kafka answers in time, else the local spool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from forwarder.ingest.spool import Spool, SpoolRecord
from forwarder.metrics import IngestMetrics

log = logging.getLogger("forwarder.ingest")

_RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)


def _backoff(attempt: int) -> float:
    """Seconds to wait before reconnect or drain attempt number `attempt` (from 0)."""
    return _RECONNECT_SECONDS[min(attempt, len(_RECONNECT_SECONDS) - 1)]


class Producer(Protocol):
    """What the durable writer needs of a Kafka producer (see kafka_client.KafkaBodyProducer)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> None: ...

    async def ready(self) -> bool: ...


class DurableWriter:
    """Writes records to Kafka directly while it keeps up, through the spool while it does not.

    Order is kept: once one record went to the spool, every later record does too, until the
    drain has emptied the spool.
    """

    def __init__(
        self,
        producer: Producer,
        spool: Spool,
        *,
        produce_timeout: float,
        metrics: IngestMetrics,
    ) -> None:
        self._producer = producer
        self._spool = spool
        self._timeout = produce_timeout
        self._metrics = metrics
        self._connected = False
        self._direct = False
        self._spooling = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Recover the spool and start connecting and draining in the background."""
        report = self._spool.open()
        if report.records or report.corrupt_bytes:
            log.warning(
                "spool recovered",
                extra={
                    "records": report.records,
                    "bytes": report.bytes,
                    "corrupt_bytes": report.corrupt_bytes,
                },
            )
        self._task = asyncio.create_task(self._run(), name="spool-drain")

    async def stop(self) -> None:
        """Stop draining, flush the producer and close the spool (what it holds stays on disk)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._producer.stop()
        await self._spool.close()

    @property
    def kafka_connected(self) -> bool:
        """Whether the producer is connected (it may still be slow)."""
        return self._connected

    async def ready(self) -> bool:
        """Ready to accept: Kafka answers, or the spool can take records."""
        if self._connected and await self._producer.ready():
            return True
        return not self._spool.full

    async def write(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> str:
        """Make one record durable; returns where ("kafka" or "spool"). Raises SpoolFull."""
        if self._direct:
            started = time.perf_counter()
            try:
                # asyncio.timeout, not wait_for: no extra task per request on the hot path.
                async with asyncio.timeout(self._timeout):
                    await self._producer.send(topic, value, key, headers)
            except Exception as error:
                # Everything after this goes through the spool until it is drained, to keep order.
                self._direct = False
                self._metrics.produce_errors.labels(topic).inc()
                log.warning(
                    "kafka produce failed or slow, spooling",
                    extra={"topic": topic, "error": type(error).__name__, "detail": str(error)},
                )
            else:
                self._metrics.produce_duration.labels(topic).observe(time.perf_counter() - started)
                return "kafka"
        self._spooling += 1
        try:
            await self._spool.append(SpoolRecord(topic, key, value, tuple(headers)))
        finally:
            self._spooling -= 1
        self._wake.set()
        return "spool"

    async def _send_spooled(self, record: SpoolRecord) -> None:
        started = time.perf_counter()
        await self._producer.send(record.topic, record.value, record.key, list(record.headers))
        self._metrics.produce_duration.labels(record.topic).observe(time.perf_counter() - started)

    async def _connect(self) -> None:
        attempt = 0
        while not self._connected:
            try:
                await self._producer.start()
            except Exception as error:
                delay = _backoff(attempt)
                attempt += 1
                log.warning(
                    "kafka not reachable, spooling meanwhile",
                    extra={"error": type(error).__name__, "detail": str(error), "retry_in": delay},
                )
                with contextlib.suppress(Exception):
                    await self._producer.stop()
                await asyncio.sleep(delay)
            else:
                self._connected = True
                log.info("kafka connected")

    async def _run(self) -> None:
        await self._connect()
        attempt = 0
        while True:
            if self._spool.is_empty() and self._spooling == 0:
                self._direct = True
                self._wake.clear()
                await self._wake.wait()
                continue
            # Probe first: a send to a dead cluster would sit in the producer and arrive later as
            # a duplicate of the record the next drain sends again.
            if not await self._producer.ready():
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
                continue
            try:
                drained = await self._spool.drain(self._send_spooled)
            except Exception as error:
                delay = _backoff(attempt)
                attempt += 1
                log.warning(
                    "spool drain interrupted",
                    extra={"error": type(error).__name__, "detail": str(error), "retry_in": delay},
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            if drained:
                log.info("spool drained", extra={"records": drained})
