"""The Kafka sink against a real broker: keys, values, headers, failures named per event."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from forwarder.formats import encoder_for
from forwarder.metrics import SinkMetrics
from forwarder.sinks import create_sink
from forwarder.sinks.base import Outcome, Retry, SinkError, TooLarge, deliver
from forwarder.sinks.config import RetryConfig
from forwarder.sinks.ids import event_key
from forwarder.sinks.kafka.config import KafkaSinkConfig
from forwarder.sinks.kafka.keys import record_key
from forwarder.sinks.kafka.sink import KafkaSink
from tests.helpers import SAMPLES, normalized_sample
from tests.integration.conftest import free_port
from tests.integration.kafka_io import read_topic


async def new_topic(bootstrap: str, partitions: int = 3, **settings: str) -> str:
    name = f"t{uuid.uuid4().hex[:12]}.siem.copy"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, partitions, replication_factor=1, topic_configs=settings)]
        )
    finally:
        await admin.close()
    return name


def docs() -> list[dict[str, Any]]:
    names = [
        "feature_create.json",
        "feature_update_status.json",
        "release_destroy.json",
        "security_event_unknown_type.json",
    ]
    return [normalized_sample(SAMPLES / name) for name in names]


def make_sink(topic: str, bootstrap: str | None, **options: Any) -> KafkaSink:
    config = KafkaSinkConfig(type="kafka", name="copy", topic=topic, **options)
    # As the worker does: a sink without its own cluster gets the main one.
    sink = create_sink(config, bootstrap_servers=bootstrap)
    assert isinstance(sink, KafkaSink)
    return sink


async def test_events_arrive_keyed_by_event_id(kafka_bootstrap: str) -> None:
    topic = await new_topic(kafka_bootstrap)
    sink = make_sink(topic, kafka_bootstrap, headers={"source": "aha-siem"})
    await sink.start()
    await sink.healthcheck()
    events = docs()
    assert (
        await sink.send_batch([sink.prepare(doc, orjson.dumps(doc)) for doc in events])
    ).delivered
    await sink.close()
    records = await read_topic(kafka_bootstrap, topic, expected=len(events))
    assert len(records) == len(events)
    got = {record.key: orjson.loads(record.value) for record in records}
    assert got == {event_key(doc).encode(): doc for doc in events}
    assert all(record.headers == {"source": "aha-siem"} for record in records)


@pytest.mark.parametrize("compression", ["gzip", "lz4", "zstd", "snappy"])
async def test_cef_keyed_by_record_with_compression(kafka_bootstrap: str, compression: str) -> None:
    topic = await new_topic(kafka_bootstrap)
    sink = make_sink(topic, kafka_bootstrap, key="record", format="cef", compression=compression)
    encode = encoder_for("cef")
    events = docs()
    assert (await sink.send_batch([sink.prepare(doc, encode(doc)) for doc in events])).delivered
    await sink.close()
    records = await read_topic(kafka_bootstrap, topic, expected=len(events))
    assert sorted((r.key or b"", r.value) for r in records) == sorted(
        (record_key(doc), encode(doc)) for doc in events
    )
    # One record's events share a key, hence a partition: their order holds.
    by_key: dict[bytes | None, set[int]] = {}
    for record in records:
        by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())


async def test_no_broker_is_a_retriable_error() -> None:
    sink = make_sink("anything", f"127.0.0.1:{free_port()}", request_timeout_seconds=2)
    with pytest.raises(SinkError, match="cannot connect to Kafka"):
        await sink.start()
    doc = docs()[0]
    result = await sink.send_batch([sink.prepare(doc, orjson.dumps(doc))])
    assert isinstance(result.whole, Retry) and not result.items
    await sink.close()


async def test_a_missing_topic_fails_the_healthcheck(kafka_bootstrap: str) -> None:
    sink = make_sink(f"t{uuid.uuid4().hex}.missing", kafka_bootstrap, request_timeout_seconds=2)
    await sink.start()
    with pytest.raises(SinkError, match="not available"):
        await sink.healthcheck()
    await sink.close()


async def delivered(sink: KafkaSink, batch: list[bytes]) -> Outcome:
    """The batch through the framework's delivery, as the sink process sends it."""
    return await deliver(sink, batch, SinkMetrics(CollectorRegistry()), RetryConfig())


def with_padding(doc: dict[str, Any], size: int) -> bytes:
    return orjson.dumps({**doc, "message": "x" * size})


async def test_a_record_over_max_request_bytes_is_rejected_alone(kafka_bootstrap: str) -> None:
    topic = await new_topic(kafka_bootstrap)
    sink = make_sink(topic, kafka_bootstrap, max_request_bytes=8192)
    events = docs()
    batch = [sink.prepare(doc, orjson.dumps(doc)) for doc in events]
    batch[1] = sink.prepare(events[1], with_padding(events[1], 20_000))
    result = await sink.send_batch(batch)
    assert list(result.items) == [1] and isinstance(result.items[1], TooLarge)
    outcome = await delivered(sink, batch[1:2])  # alone, as the framework sends it again
    await sink.close()
    assert list(outcome.rejected) == [0]
    assert "too large" in outcome.rejected[0]
    records = await read_topic(kafka_bootstrap, topic, expected=3)
    assert sorted(record.key or b"" for record in records) == sorted(
        event_key(doc).encode() for index, doc in enumerate(events) if index != 1
    )


async def test_a_record_the_broker_refuses_as_too_large_spares_its_neighbours(
    kafka_bootstrap: str,
) -> None:
    # One partition and a small topic limit: the oversized event shares a request with the others.
    topic = await new_topic(kafka_bootstrap, partitions=1, **{"max.message.bytes": "8192"})
    sink = make_sink(topic, kafka_bootstrap, linger_ms=50)
    events = docs()
    batch = [sink.prepare(doc, orjson.dumps(doc)) for doc in events]
    batch[2] = sink.prepare(events[2], with_padding(events[2], 20_000))
    outcome = await delivered(sink, batch)
    assert list(outcome.rejected) == [2], outcome.rejected
    assert "too large" in outcome.rejected[2]
    assert sorted(outcome.delivered) == [0, 1, 3]
    # The rest counts as delivered, nothing is sent twice.
    await sink.close()
    records = await read_topic(kafka_bootstrap, topic, expected=3, timeout=10)
    assert sorted(record.key or b"" for record in records) == sorted(
        event_key(doc).encode() for index, doc in enumerate(events) if index != 2
    )
