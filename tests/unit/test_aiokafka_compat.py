"""Fails when aiokafka changes the private names forwarder/aiokafka_compat.py relies on."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import ProducerClosed

from forwarder.aiokafka_compat import abandon_producer


async def test_the_private_names_used_to_abandon_a_producer_exist() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    assert producer._closed is False
    assert callable(producer._message_accumulator.fail_all)
    assert callable(producer._sender.close)


async def test_an_abandoned_producer_fails_what_it_holds_and_stop_returns_at_once() -> None:
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    # A record waiting in the accumulator, as after a broker restart with produces in flight.
    future = await producer._message_accumulator.add_message(_partition(), b"k", b"v", timeout=1.0)
    await abandon_producer(producer)
    with pytest.raises(ProducerClosed):
        await asyncio.wait_for(future, 1.0)
    await asyncio.wait_for(producer.stop(), 1.0)


def _partition():  # type: ignore[no-untyped-def]
    from aiokafka.structs import TopicPartition

    return TopicPartition("t", 0)


async def test_the_private_names_used_to_refresh_a_consumers_metadata_exist() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert isinstance(consumer._client, AIOKafkaClient)
    assert list(inspect.signature(AIOKafkaClient.force_metadata_update).parameters) == ["self"]
    # The public reader refresh_metadata feeds: it answers from the client's cached cluster.
    assert "self._client.cluster" in inspect.getsource(AIOKafkaConsumer.partitions_for_topic)
    await consumer.stop()
