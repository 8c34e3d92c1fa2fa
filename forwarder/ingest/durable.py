"""Make each accepted body durable: the Kafka ack when Kafka answers in time, else the local spool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from forwarder import records
from forwarder.failures import TOO_LARGE, Failure, classify_kafka
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

    async def recreate(self) -> None: ...

    def max_record_bytes(self, topic: str) -> int: ...


class RecordTooLarge(Exception):
    """Kafka cannot take this record: with its key and headers it exceeds the topic's limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"record of {size} bytes exceeds the {limit} bytes Kafka takes")
        self.size = size
        self.limit = limit


def _refused(error: BaseException) -> str | None:
    """The reason Kafka refuses a record for good (it goes to the quarantine), or None."""
    return type(error).__name__ if classify_kafka(error) is Failure.RECORD else None


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
        self._produce_timers: dict[str, Any] = {}  # produce_duration children, by topic

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
        """Make one record durable; returns where ("kafka" or "spool").

        Raises RecordTooLarge for a record Kafka cannot take (before anything is stored) and
        SpoolFull when Kafka is behind and the spool cannot take it.
        """
        size = records.record_bytes(key, value, headers)
        limit = self._producer.max_record_bytes(topic)
        if size > limit:
            raise RecordTooLarge(size, limit)
        if self._direct:
            started = time.perf_counter()
            try:
                # asyncio.timeout, not wait_for: no extra task per request on the hot path.
                async with asyncio.timeout(self._timeout):
                    await self._producer.send(topic, value, key, headers)
            except Exception as error:
                failure = classify_kafka(error)
                self._metrics.produce_failures.labels(topic, failure.value).inc()
                if isinstance(error, TOO_LARGE):
                    # The topic's limit is lower than we knew: refuse it, as any other too big.
                    raise RecordTooLarge(size, limit) from error
                # Everything after this goes through the spool until it is drained, to keep order.
                self._direct = False
                self._metrics.produce_errors.labels(topic).inc()
                log.warning(
                    "kafka produce failed or slow, spooling",
                    extra={
                        "topic": topic,
                        "failure": failure.value,
                        "error.type": type(error).__name__,
                        "error.message": str(error),
                    },
                )
            else:
                self._observe(topic, time.perf_counter() - started)
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
        self._observe(record.topic, time.perf_counter() - started)

    def _observe(self, topic: str, seconds: float) -> None:
        timer = self._produce_timers.get(topic)
        if timer is None:
            timer = self._produce_timers[topic] = self._metrics.produce_duration.labels(topic)
        timer.observe(seconds)

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
        attempt = 0
        while True:
            if not self._connected:
                await self._connect()
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
                drained = await self._spool.drain(self._send_spooled, refused=_refused)
            except Exception as error:
                attempt += 1
                await self._after_drain_failure(error, attempt)
                continue
            attempt = 0
            if drained:
                log.info("spool drained", extra={"records": drained})

    async def _after_drain_failure(self, error: Exception, attempt: int) -> None:
        """Act on the class of the failure that stopped the drain (docs/decisions/0008)."""
        failure = classify_kafka(error)
        delay = _backoff(attempt - 1)
        fields = {
            "failure": failure.value,
            "error.type": type(error).__name__,
            "error.message": str(error),
            "retry_in": delay,
        }
        self._metrics.produce_failures.labels("spool", failure.value).inc()
        if failure is Failure.CLIENT_BROKEN:
            # Retrying the same idempotent producer repeats the same error for ever.
            log.warning("spool drain: producer state broken, replacing the producer", extra=fields)
            self._metrics.producer_recreated.inc()
            try:
                await self._producer.recreate()
            except Exception as reconnect:
                # Connect again from scratch, with the start-up's back-off.
                self._connected = False
                log.warning(
                    "new producer could not connect",
                    extra={"error.type": type(reconnect).__name__, "retry_in": delay},
                )
                await asyncio.sleep(delay)
            return
        if failure is Failure.DESTINATION:
            log.error("spool drain: Kafka refuses this client; records wait", extra=fields)
        else:
            log.warning("spool drain interrupted", extra=fields)
        await asyncio.sleep(delay)
