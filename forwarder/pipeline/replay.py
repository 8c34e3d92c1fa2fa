"""`aha-siem replay`: send a sink's dead-lettered events back through the sink.

The DLQ is read up to where it ended when the replay started, so events that fail again (and
are dead-lettered again, with their attempt count) are not read twice in one run. Progress is
committed under the replay's own consumer group after each delivered batch: a second replay goes
on where the first stopped, and `--since` chooses the start by time instead.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from forwarder import records
from forwarder.config import Config, ConfigError
from forwarder.kafka_client import admin_client
from forwarder.metrics import SinkMetrics
from forwarder.pipeline.sink_app import dlq_topic_name
from forwarder.sinks import SinkError, create_sink
from forwarder.sinks.loop import Preparer, SinkLoop

log = logging.getLogger("forwarder.replay")


def replay_group(config: Config, sink_name: str) -> str:
    """The consumer group that remembers how far a sink's DLQ was replayed."""
    return f"{config.worker.app_id}-replay-{sink_name}"


@dataclass
class Summary:
    """What a replay did."""

    read: int = 0
    delivered: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def lines(self, dry_run: bool) -> list[str]:
        """A human summary."""
        if dry_run:
            head = f"dry run: {self.read} event(s) would be replayed, {self.filtered} filtered"
        else:
            head = (
                f"replayed {self.read} event(s): {self.delivered} delivered, "
                f"{self.filtered} filtered by the route, {self.dead_lettered} dead-lettered again"
            )
        return [head] + [f"  {count} x {error}" for error, count in self.errors.most_common(10)]


async def replay(
    config: Config,
    sink_name: str,
    *,
    since: datetime | None = None,
    dry_run: bool = False,
    limit: int | None = None,
) -> int:
    """Replay the DLQ of `sink_name`; exit code 0 when everything read was delivered."""
    sink_config = next((sink for sink in config.sinks if sink.name == sink_name), None)
    if sink_config is None:
        known = ", ".join(sink.name for sink in config.sinks) or "none configured"
        raise ConfigError(f"--sink: no sink named {sink_name!r} (known: {known})")
    topic = dlq_topic_name(config, sink_name)
    bootstrap = config.kafka.bootstrap_servers
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=replay_group(config, sink_name),
        client_id=f"{config.kafka.client_id}-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = (
        None
        if dry_run
        else AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            max_request_size=config.kafka.max_request_bytes,
        )
    )
    summary = Summary()
    sink = create_sink(sink_config, bootstrap)
    await consumer.start()
    try:
        partitions = await _partitions(config, topic)
        if not partitions:
            print(f"{topic}: no such topic, nothing to replay")
            return 0
        tps = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await _seek(consumer, tps, since)
        remaining = {tp: ends[tp] for tp in tps if await consumer.position(tp) < ends[tp]}
        if not remaining:
            print(f"{topic}: nothing to replay")
            return 0
        if producer is not None:
            await producer.start()
            await sink.start()
            try:
                await sink.healthcheck()
            except SinkError as error:
                print(f"aha-siem replay: sink {sink_name} is not ready: {error}", file=sys.stderr)
                return 1
        offsets: dict[TopicPartition, int] = {}

        async def send_dlq(**message: Any) -> Any:
            assert producer is not None
            return await producer.send(topic, **message)

        async def handled(position: tuple[TopicPartition, int]) -> None:
            tp, offset = position
            offsets[tp] = offset

        async def commit() -> None:
            # Everything up to each partition's last handled offset is delivered or
            # dead-lettered again: a second replay goes on from there.
            if not dry_run and offsets:
                await consumer.commit({tp: offset + 1 for tp, offset in offsets.items()})

        # The sink app's own loop, with no time limit on a batch: the DLQ is read as fast as it
        # comes, and what is left is sent at the end.
        delivery: SinkLoop[tuple[TopicPartition, int]] = SinkLoop(
            sink,
            sink_config,
            config,
            SinkMetrics(CollectorRegistry()),
            send_dlq,
            handled,
            max_seconds=float("inf"),
            after_batch=commit,
        )
        offer = _dry_run(Preparer(sink, sink_config, config), summary) if dry_run else None
        async for message in _read(consumer, remaining, limit):
            summary.read += 1
            headers = records.decode_headers(message.headers)
            summary.errors[headers.get(records.HEADER_ERROR, "?")[:120]] += 1
            position = (TopicPartition(message.topic, message.partition), message.offset)
            if offer is not None:
                offer(message.value or b"")
            else:
                await delivery.offer(message.key, message.value or b"", headers, position)
        await delivery.drain()
        await commit()
        summary.delivered += delivery.delivered
        summary.dead_lettered += delivery.dead_lettered
        summary.filtered += delivery.filtered
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
            await sink.close()
    for line in summary.lines(dry_run):
        print(line)
    return 0 if summary.dead_lettered == 0 else 1


async def _partitions(config: Config, topic: str) -> list[int]:
    admin = admin_client(config, "replay")
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):
        return []
    return [int(partition["partition"]) for partition in described.get("partitions", [])]


async def _seek(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], since: datetime | None
) -> None:
    if since is None:
        # Where the last replay stopped, else the beginning (auto_offset_reset).
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is not None:
                consumer.seek(tp, committed)
            else:
                await consumer.seek_to_beginning(tp)
        return
    found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
    for tp in tps:
        at = found.get(tp)
        if at is None:
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, at.offset)


def _dry_run(prepare: Preparer, summary: Summary) -> Callable[[bytes], None]:
    """Count what a replay would do with an event, sending nothing."""

    def offer(value: bytes) -> None:
        try:
            if prepare(value) is None:
                summary.filtered += 1
        except ValueError:
            summary.dead_lettered += 1

    return offer


async def _read(
    consumer: AIOKafkaConsumer, remaining: dict[TopicPartition, int], limit: int | None
) -> AsyncIterator[ConsumerRecord[Any, Any]]:
    """The records of `remaining`'s partitions below their end offsets, at most `limit`."""
    read = 0
    while remaining and (limit is None or read < limit):
        fetched = await consumer.getmany(*remaining, timeout_ms=1000, max_records=500)
        for tp, messages in fetched.items():
            for message in messages:
                if tp not in remaining or (limit is not None and read >= limit):
                    break
                if message.offset >= remaining[tp]:
                    del remaining[tp]
                    break
                read += 1
                yield message
                if message.offset + 1 >= remaining.get(tp, 0):
                    remaining.pop(tp, None)
        for tp in list(remaining):
            if await consumer.position(tp) >= remaining[tp]:
                del remaining[tp]
