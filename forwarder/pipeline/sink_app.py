"""One sink = one Faust app and consumer group on the events topic, in a process of its own.

A slow or dead destination then holds back only its own consumer group: Faust dispatches every
message of a consumer to all the agents subscribed to it and commits an offset only once all of
them acked, so sinks sharing one app would stall (and re-deliver) each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import EventT
from prometheus_client import CollectorRegistry

from forwarder import records
from forwarder.config import Config, SinkConfig
from forwarder.kafka_client import admin_client
from forwarder.metrics import SinkMetrics
from forwarder.pipeline.app import new_faust_app
from forwarder.pipeline.sensors import FaustSensor
from forwarder.sinks import SinkError, create_sink
from forwarder.sinks.loop import SinkLoop

log = logging.getLogger("forwarder.sink")

BACKLOG_INTERVAL_SECONDS = 5.0


def sink_app_id(config: Config, sink_name: str) -> str:
    """The Faust app id, and so the consumer group, of one sink."""
    return f"{config.worker.app_id}-sink-{sink_name}"


def dlq_topic_name(config: Config, sink_name: str) -> str:
    """The dead-letter topic of one sink."""
    return f"{config.topics.dlq_prefix}{sink_name}"


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
    # `input: alerts`: the detections' alerts (forwarder/pipeline/alerts.py) instead of the events.
    source = (
        config.detections.alerts_topic if sink_config.input == "alerts" else config.topics.events
    )
    events_topic = app.topic(source, key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(
        dlq_topic_name(config, name), key_serializer="raw", value_serializer="raw"
    )
    sink = create_sink(sink_config, config.kafka.bootstrap_servers)
    # A sink with counters of its own (the Splunk HEC ack metrics) counts into this process's.
    use_metrics = getattr(sink, "use_metrics", None)
    if callable(use_metrics):
        use_metrics(metrics)
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
        delivery: SinkLoop[EventT] = SinkLoop(
            sink, sink_config, config, metrics, dlq_topic.send, manual.ack
        )
        timer = asyncio.create_task(delivery.flush_when_due(), name=f"sink-{name}-timer")
        offer = delivery.offer
        decode_headers = records.decode_headers
        try:
            async for event in manual.events():
                message = event.message
                await offer(message.key, message.value or b"", decode_headers(event.headers), event)
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            await delivery.abandon()
            await sink.close()

    app.agent(events_topic, name=f"sink-{name}")(ship_agent)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.labels(name).set(1)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    def on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        metrics.assigned_partitions.labels(name).set(
            sum(1 for tp in assigned if tp.topic == source)
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
        assigned = [tp for tp in app.consumer.assignment() if tp.topic == source]
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
