"""Every use of a private name of aiokafka, each with the upstream behaviour it works around.

tests/unit/test_aiokafka_compat.py fails when aiokafka changes under these names.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import ProducerClosed

log = logging.getLogger("forwarder.kafka")


async def abandon_producer(producer: AIOKafkaProducer) -> None:
    """Close a producer at once, failing what it still holds instead of flushing it.

    `AIOKafkaProducer.stop()` first waits for the accumulator to flush every pending batch. An
    idempotent producer whose sequence numbers fell out of step with the broker's
    (OutOfOrderSequenceNumber after a broker restart with produces in flight) retries those
    batches until they expire, and a `stop()` cut short by a timeout leaves the sender task
    running with `_closed` already set, so no later `stop()` ends it. The records are the
    caller's to send again through a new producer.
    """
    producer._closed = True  # a later stop() is a no-op, as after a normal stop
    producer._message_accumulator.fail_all(ProducerClosed())
    sender = producer._sender
    if sender is not None:
        await sender.close()
    await producer.client.close()
