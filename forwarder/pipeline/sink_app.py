"""One sink = one Faust app and consumer group on the events topic, in a process of its own.

A slow or dead destination then holds back only its own consumer group: Faust dispatches every
message of a consumer to all the agents subscribed to it and commits an offset only once all of
them acked, so sinks sharing one app would stall (and re-deliver) each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import EventT
from prometheus_client import CollectorRegistry

from forwarder import records
from forwarder.config import Config, SinkConfig
from forwarder.formats import Encoder, encoder_for
from forwarder.kafka_client import admin_client
from forwarder.metrics import SinkMetrics
from forwarder.pipeline.app import new_faust_app
from forwarder.pipeline.sensors import FaustSensor
from forwarder.sinks import SinkError, create_sink
from forwarder.sinks.base import Sink, deliver

log = logging.getLogger("forwarder.sink")

BACKLOG_INTERVAL_SECONDS = 5.0

# Headers of the event that travel on into the DLQ, so a replay keeps its provenance.
_KEPT_HEADERS = (
    records.HEADER_RECEIVED_AT,
    records.HEADER_SOURCE,
    records.HEADER_TOKEN_ID,
    records.HEADER_REQUEST_ID,
)

HEADER_DESTINATION_REQUEST_ID = "destination-request-id"
"""DLQ header: the destination's id of the last request that carried the event (Sentinel's
x-ms-client-request-id), to look up in the destination's own logs."""


def sink_app_id(config: Config, sink_name: str) -> str:
    """The Faust app id, and so the consumer group, of one sink."""
    return f"{config.worker.app_id}-sink-{sink_name}"


def dlq_topic_name(config: Config, sink_name: str) -> str:
    """The dead-letter topic of one sink."""
    return f"{config.topics.dlq_prefix}{sink_name}"


@dataclass
class Prepared:
    """One event on its way to a destination."""

    key: bytes | None
    value: bytes  # the normalized event, as it goes to the DLQ
    payload: bytes  # what send_batch gets
    headers: dict[str, str] = field(default_factory=dict)


class Preparer:
    """Route, encode and prepare normalized events for one sink (pure; no Kafka)."""

    def __init__(self, sink: Sink, sink_config: SinkConfig, config: Config) -> None:
        self.sink = sink
        self.route = sink_config.route
        self.encode: Encoder | None = (
            None if sink_config.format == "ecs" else encoder_for(sink_config.format, config.formats)
        )

    def __call__(self, value: bytes) -> bytes | None:
        """The payload for `value`, or None when the route does not select it.

        Raises ValueError when the event cannot be decoded or encoded (it goes to the DLQ).
        """
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"not a JSON event: {error}") from None
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if not self.route.matches(doc):
            return None
        try:
            payload = value if self.encode is None else self.encode(doc)
            return self.sink.prepare(doc, payload)
        except Exception as error:  # an encoder bug must not stop the sink
            raise ValueError(f"encode failed: {error!r}") from None


async def dead_letter(
    producer_send: Callable[..., Any],
    item: Prepared,
    error: str,
    attempts: int,
    first_failed_at: str,
    destination_request_id: str | None = None,
) -> None:
    """Produce one event to the DLQ and wait for Kafka's ack (before its source may be acked)."""
    headers = [
        (name, item.headers[name].encode()) for name in _KEPT_HEADERS if name in item.headers
    ]
    headers += [
        (records.HEADER_ERROR, error.encode()[:2000]),
        ("attempts", str(attempts).encode()),
        ("first-failed-at", first_failed_at.encode()),
    ]
    if destination_request_id:
        headers.append((HEADER_DESTINATION_REQUEST_ID, destination_request_id.encode()[:200]))
    delivery = await producer_send(key=item.key, value=item.value, headers=headers)
    await delivery


async def ship(
    sink: Sink,
    sink_config: SinkConfig,
    items: Sequence[Prepared],
    metrics: SinkMetrics,
    send_dlq: Callable[..., Any],
) -> tuple[int, int]:
    """Deliver a batch; dead-letter what the destination rejected. Returns (sent, dead-lettered).

    Never raises a delivery failure: Faust acks the events of an agent that raised.
    """
    if not items:
        return 0, 0
    first_try = records.utc_now_iso()
    payloads = [item.payload for item in items]
    metrics.batch_events.labels(sink.name).observe(len(payloads))
    metrics.batch_bytes.labels(sink.name).observe(sum(len(p) for p in payloads))
    outcome = await deliver(sink, payloads, metrics, sink_config.retry)
    if outcome.rejected:
        log.error(
            "sink rejected events, dead-lettering",
            extra={
                "sink": sink.name,
                "events": len(outcome.rejected),
                "error": next(iter(outcome.rejected.values())),
            },
        )
    for index, reason in sorted(outcome.rejected.items()):
        metrics.sink_dead_lettered.labels(sink.name, outcome.dead_letter_reason(index)).inc()
        await dead_letter(
            send_dlq,
            items[index],
            reason,
            outcome.attempts,
            first_try,
            outcome.request_ids.get(index),
        )
    now = time.time()
    for index in outcome.delivered:
        received = records.received_epoch(items[index].headers)
        if received is not None:
            metrics.end_to_end.labels(sink.name).observe(max(0.0, now - received))
    return len(outcome.delivered), len(outcome.rejected)


class Batcher:
    """Collects events until count, bytes or age says the batch is due."""

    def __init__(self, max_events: int, max_bytes: int, max_seconds: float) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.items: list[Prepared] = []
        self.events: list[EventT] = []
        self.size = 0
        self.opened = 0.0

    def fits(self, item: Prepared) -> bool:
        """Whether `item` can join without passing the byte limit (a lone item always fits)."""
        return not self.items or self.size + len(item.payload) <= self.max_bytes

    def carry(self, event: EventT) -> None:
        """An event with nothing to send (filtered, or already in the DLQ) acked with the batch.

        Acks stay in offset order, so that a partition's commits never pass an event that is
        still on its way (docs/decisions/0007-stale-generation-acks.md).
        """
        if not self.items and not self.events:
            self.opened = time.monotonic()
        self.events.append(event)

    def waiting(self) -> bool:
        """Whether anything waits for the batch: items to send or events to ack."""
        return bool(self.items or self.events)

    def add(self, item: Prepared, event: EventT) -> None:
        """Append an item with the Kafka event to ack once it is delivered."""
        if not self.items and not self.events:
            self.opened = time.monotonic()
        self.items.append(item)
        self.events.append(event)
        self.size += len(item.payload)

    def full(self) -> bool:
        """The count or byte limit is reached."""
        return len(self.items) >= self.max_events or self.size >= self.max_bytes

    def due(self) -> bool:
        """The oldest item waited `max_seconds`."""
        return self.waiting() and time.monotonic() - self.opened >= self.max_seconds

    def take(self) -> tuple[list[Prepared], list[EventT]]:
        """Empty the batch, returning its items and the events to ack, in offset order."""
        items, events = self.items, self.events
        self.items, self.events, self.size = [], [], 0
        return items, events


def create_sink_app(
    config: Config, sink_config: SinkConfig, registry: CollectorRegistry
) -> faust.App:
    """The Faust app of one sink: its own consumer group on the events topic."""
    metrics = SinkMetrics(registry)
    name = sink_config.name
    datadir = config.worker.data_dir / "sinks" / name
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = new_faust_app(
        config, sink_app_id(config, name), role=f"sink-{name}", store="memory://", datadir=datadir
    )
    app.monitor = FaustSensor(registry, app=f"sink-{name}")
    events_topic = app.topic(config.topics.events, key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(
        dlq_topic_name(config, name), key_serializer="raw", value_serializer="raw"
    )
    sink = create_sink(sink_config, config.kafka.bootstrap_servers)
    # A sink with counters of its own (the Splunk HEC ack metrics) counts into this process's.
    use_metrics = getattr(sink, "use_metrics", None)
    if callable(use_metrics):
        use_metrics(metrics)
    prepare = Preparer(sink, sink_config, config)
    metrics.rebalancing.labels(name).set(1)
    metrics.sink_up.labels(name).set(0)
    # At zero from the start, so that the first answer not understood is an increase().
    metrics.sink_unrecognized.labels(name)

    async def ship_agent(stream: faust.StreamT) -> None:
        # A sink that cannot start or answer is reported down, not crashed: its deliveries retry
        # until the destination is back, and its events wait in Kafka meanwhile.
        try:
            await sink.start()
            await sink.healthcheck()
            metrics.sink_up.labels(name).set(1)
            log.info("sink ready", extra={"sink": name})
        except (SinkError, OSError) as error:
            log.error("sink not ready", extra={"sink": name, "error": str(error)})
        # Batches by hand, acking only what the destination (or the DLQ) took: Faust's
        # take_events acks its batch in a `finally`, so a shutdown during a retry would ack
        # events that were never delivered.
        manual = stream.noack()  # type: ignore[attr-defined]  # on Stream, not on StreamT
        batch = Batcher(
            sink_config.batch_max_events, sink_config.batch_max_bytes, sink_config.batch_max_seconds
        )
        shipping = asyncio.Lock()

        async def ship_batch() -> None:
            async with shipping:
                items, events = batch.take()
                if items:
                    await ship(sink, sink_config, items, metrics, dlq_topic.send)
                for event in events:
                    await manual.ack(event)

        async def settled(event: EventT) -> None:
            # Nothing to send for this event: ack it now, or after the events before it (in
            # the batch, or in the one being shipped).
            if batch.waiting() or shipping.locked():
                batch.carry(event)
            else:
                await manual.ack(event)

        async def ship_when_due() -> None:
            while True:
                await asyncio.sleep(min(0.1, sink_config.batch_max_seconds / 2))
                if batch.due():
                    await ship_batch()

        timer = asyncio.create_task(ship_when_due(), name=f"sink-{name}-timer")
        try:
            async for event in manual.events():
                value = event.message.value or b""
                headers = records.decode_headers(event.headers)
                item = Prepared(event.message.key, value, b"", headers)
                try:
                    payload = prepare(value)
                except ValueError as error:
                    metrics.sink_dead_lettered.labels(name, "encode").inc()
                    await dead_letter(dlq_topic.send, item, str(error), 0, records.utc_now_iso())
                    await settled(event)
                    continue
                if payload is None:
                    metrics.filtered.labels(name).inc()
                    await settled(event)
                    continue
                item.payload = payload
                if not batch.fits(item):
                    await ship_batch()
                batch.add(item, event)
                if batch.full():
                    await ship_batch()
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            await sink.close()

    app.agent(events_topic, name=f"sink-{name}")(ship_agent)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.labels(name).set(1)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    def on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        metrics.assigned_partitions.labels(name).set(
            sum(1 for tp in assigned if tp.topic == config.topics.events)
        )

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    def on_rebalanced(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.labels(name).set(0)

    probe = LagProbe(config, sink_app_id(config, name))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_probe(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        await probe.close()

    @app.timer(interval=BACKLOG_INTERVAL_SECONDS)
    async def measure_backlog() -> None:
        assigned = [tp for tp in app.consumer.assignment() if tp.topic == config.topics.events]
        try:
            backlog = await probe.lag(assigned)
        except Exception as error:  # a metric must never stop the sink
            log.debug("backlog not measured", extra={"sink": name, "error": str(error)})
            return
        metrics.backlog.labels(name).set(backlog)

    return app


class LagProbe:
    """Consumer lag of a group over some partitions: end offset minus committed offset.

    Asks Kafka (admin API and end offsets) rather than Faust's internals, so it measures what
    a restart would really re-read. The clients are opened on first use and kept.
    """

    def __init__(self, config: Config, group: str) -> None:
        self._config = config
        self._group = group
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            kafka = self._config.kafka
            admin = admin_client(self._config, "lag")
            consumer = AIOKafkaConsumer(
                bootstrap_servers=kafka.bootstrap_servers,
                client_id=f"{kafka.client_id}-lag",
                enable_auto_commit=False,
            )
            await admin.start()
            await consumer.start()
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def lag(self, partitions: Sequence[Any]) -> int:
        """Messages in `partitions` not yet committed by the group."""
        if not partitions:
            return 0
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        try:
            admin, consumer = await self._clients()
            committed = await admin.list_consumer_group_offsets(self._group, partitions=tps)
            ends = await consumer.end_offsets(tps)
            starts = await consumer.beginning_offsets(tps)
        except Exception:
            await self.close()  # reconnect next time
            raise
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else starts.get(tp, 0)
            lag += max(0, ends.get(tp, 0) - done)
        return lag

    async def close(self) -> None:
        """Close the clients."""
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
