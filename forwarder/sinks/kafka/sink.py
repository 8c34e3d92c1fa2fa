"""Kafka sink: each event produced as one message, acks=all, waiting for every acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from forwarder.aiokafka_compat import abandon_producer
from forwarder.failures import Failure
from forwarder.sinks.base import (
    DELIVERED,
    BatchResult,
    Reject,
    Retry,
    SinkError,
    TooLarge,
    Verdict,
    about,
)
from forwarder.sinks.kafka.config import KafkaSinkConfig
from forwarder.sinks.kafka.keys import message_key
from forwarder.sinks.kafka.retry import PRODUCER_STATE, classify

log = logging.getLogger("forwarder.sinks.kafka")

# A prepared event is its key length, the key and the value: `send_batch` only gets bytes.
_KEY_LENGTH = struct.Struct(">I")
_NO_KEY = 0xFFFFFFFF


def pack(key: bytes | None, value: bytes) -> bytes:
    """One prepared event: the message key (or none) and the value, in one byte string."""
    if key is None:
        return _KEY_LENGTH.pack(_NO_KEY) + value
    return _KEY_LENGTH.pack(len(key)) + key + value


def unpack(data: bytes) -> tuple[bytes | None, bytes]:
    """The key and value of a prepared event."""
    (length,) = _KEY_LENGTH.unpack_from(data)
    start = _KEY_LENGTH.size
    if length == _NO_KEY:
        return None, data[start:]
    return data[start : start + length], data[start + length :]


class KafkaSink:
    """Produce each event to the configured topic and return once the brokers have them all."""

    def __init__(self, config: KafkaSinkConfig) -> None:
        if config.bootstrap_servers is None:
            raise ValueError(
                f"sink {config.name}: bootstrap_servers is unset and no main cluster was given"
            )
        self.name = config.name
        self._config = config
        self._bootstrap: str = config.bootstrap_servers
        self._headers = [(name, value.encode()) for name, value in config.headers.items()]
        self._producer: AIOKafkaProducer | None = None
        # Set when the idempotent producer's sequence numbers no longer match the broker's.
        self._stale = False

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The event's message: the configured key and the payload in the sink's format."""
        return pack(message_key(doc, self._config.key), payload)

    def _new_producer(self) -> AIOKafkaProducer:
        config = self._config
        tls = config.security_protocol in ("SSL", "SASL_SSL")
        sasl = config.sasl
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=f"{config.client_id}-{config.name}",
            acks="all",
            enable_idempotence=config.idempotent,
            compression_type=None if config.compression == "none" else config.compression,
            max_request_size=config.max_request_bytes,
            linger_ms=config.linger_ms,
            request_timeout_ms=int(config.request_timeout_seconds * 1000),
            security_protocol=config.security_protocol,
            ssl_context=config.tls.context() if tls else None,
            sasl_mechanism=sasl.mechanism if sasl else "PLAIN",
            sasl_plain_username=sasl.username if sasl else None,
            sasl_plain_password=sasl.password.get_secret_value() if sasl else None,
        )

    async def start(self) -> None:
        """Connect to the cluster; raises SinkError when it cannot be reached."""
        if self._producer is not None:
            return
        producer = self._new_producer()
        try:
            await producer.start()
        except Exception as error:
            await producer.stop()
            raise SinkError(
                f"cannot connect to Kafka at {self._bootstrap}: {type(error).__name__}: {error}"
            ) from None
        self._producer = producer
        log.info(
            "kafka sink connected",
            extra={"sink": self.name, "bootstrap": self._bootstrap, "topic": self._config.topic},
        )

    async def healthcheck(self) -> None:
        """The cluster answers and knows the topic."""
        producer = await self._started()
        try:
            partitions = await asyncio.wait_for(
                producer.partitions_for(self._config.topic), self._config.request_timeout_seconds
            )
        except Exception as error:
            raise SinkError(
                f"topic {self._config.topic} is not available: {type(error).__name__}"
            ) from None
        if not partitions:
            raise SinkError(f"topic {self._config.topic} has no partitions")

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """Produce every event once and wait for each acknowledgement; name the failed ones.

        An event too large is reported `TooLarge`: the broker judges a whole batch of messages,
        so one oversized event fails its neighbours in the same partition too, and the framework
        sends them again apart to see which one is to blame.
        """
        if not events:
            return DELIVERED
        try:
            failures = await self._produce(range(len(events)), events)
            stale = [i for i, error in failures.items() if isinstance(error, PRODUCER_STATE)]
            if stale:
                # These failed only for the old producer's sequence numbers; a new producer is
                # ready.
                failures.update(await self._produce(stale, events))
        except SinkError as error:
            # No producer: the cluster cannot be reached (start() said why).
            return BatchResult.of(Retry(str(error)))
        where = f"produce to {self._config.topic}"
        verdicts: dict[int, Verdict] = {
            index: about(classify(error), where)
            for index, error in failures.items()
            if error is not None
        }
        if not verdicts:
            return DELIVERED
        first = verdicts[min(verdicts)]
        if len(verdicts) == len(events) and all(verdict == first for verdict in verdicts.values()):
            # The cluster is away or refuses the producer: one answer for the whole batch.
            return BatchResult.of(first)
        return BatchResult.each(verdicts)

    async def _produce(
        self, indexes: Sequence[int], events: Sequence[bytes]
    ) -> dict[int, BaseException | None]:
        """Send the events at `indexes`; wait for each acknowledgement (None) or failure."""
        if self._stale:
            await self._restart()
        producer = await self._started()
        failures: dict[int, BaseException | None] = {}
        futures: dict[int, asyncio.Future[Any]] = {}
        for position, index in enumerate(indexes):
            key, value = unpack(events[index])
            try:
                futures[index] = await producer.send(
                    self._config.topic, value=value, key=key, headers=self._headers
                )
            except Exception as error:
                failures[index] = error
                if isinstance(classify(error), Retry):
                    # No metadata or no room in time: the rest of the batch would wait as long.
                    for rest in indexes[position + 1 :]:
                        failures[rest] = error
                    break
        if futures:
            _, pending = await asyncio.wait(
                futures.values(), timeout=self._config.delivery_timeout_seconds
            )
            for index, future in futures.items():
                if future in pending:
                    # Still in the producer: it may land later, so a retry can duplicate it.
                    failures[index] = TimeoutError("no acknowledgement in delivery_timeout_seconds")
                elif future.cancelled():
                    failures[index] = asyncio.CancelledError("cancelled in the producer")
                else:
                    failure = future.exception()
                    failures[index] = failure
                    if failure is not None and self._breaks_sequence(failure):
                        self._stale = True
        return failures

    def _breaks_sequence(self, failure: BaseException) -> bool:
        # The broker refused a batch for good (too large, say): aiokafka does not reset the
        # partition's sequence, so every later batch there would fail as out of order.
        if not self._config.idempotent:
            return False
        verdict = classify(failure)
        unplaced = isinstance(verdict, Retry) and verdict.failure is Failure.UNRECOGNIZED
        refused = isinstance(verdict, Reject | TooLarge)
        return isinstance(failure, PRODUCER_STATE) or refused or unplaced

    async def _restart(self) -> None:
        log.info("restarting kafka producer for fresh sequence numbers", extra={"sink": self.name})
        self._stale = False
        await self.close()
        await self.start()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        return self._producer

    async def close(self) -> None:
        """Flush what is in flight (for at most request_timeout_seconds) and disconnect."""
        if self._producer is None:
            return
        producer, self._producer = self._producer, None
        stopping = asyncio.ensure_future(producer.stop())
        done, _ = await asyncio.wait({stopping}, timeout=self._config.request_timeout_seconds)
        if done:
            stopping.result()
            return
        # An idempotent producer flushes forever while the cluster is away. What it still holds
        # was never reported delivered, so nothing is lost by dropping it: the events stay
        # unacknowledged in the source topic.
        log.warning("kafka sink closed with messages unacknowledged", extra={"sink": self.name})
        stopping.cancel()
        with contextlib.suppress(BaseException):
            await stopping
        with contextlib.suppress(Exception):
            await abandon_producer(producer)
