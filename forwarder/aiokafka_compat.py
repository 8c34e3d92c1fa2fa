"""Every use of a private name of aiokafka, each with the upstream behaviour it works around.

tests/unit/test_aiokafka_compat.py fails when aiokafka changes under these names.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
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


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch the cluster's metadata into the consumer's own view of it, now.

    `AIOKafkaConsumer.partitions_for_topic` answers from the client's cached metadata, which
    `topics()` does not update (it returns a fresh copy and drops it) and which aiokafka
    refreshes only every `metadata_max_age_ms` (5 minutes): a topic created a moment ago stays
    unknown that long.
    """
    await consumer._client.force_metadata_update()
