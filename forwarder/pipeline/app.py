"""The Faust application: thin agents wiring topics to plain functions and sinks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import faust
import orjson
from faust.types import EventT
from prometheus_client import CollectorRegistry

from forwarder import records
from forwarder.config import Config
from forwarder.formats import Encoder, encoder_for
from forwarder.metrics import WorkerMetrics
from forwarder.pipeline.normalize import Provenance, normalize_raw
from forwarder.sinks import SinkError, create_sink
from forwarder.sinks.base import Sink, deliver

log = logging.getLogger("forwarder.worker")

# Headers of the raw record that travel on with the normalized event.
_CARRIED_HEADERS = (
    records.HEADER_RECEIVED_AT,
    records.HEADER_SOURCE,
    records.HEADER_TOKEN_ID,
    records.HEADER_BODY_SHA256,
)


def broker_urls(bootstrap: str) -> list[str]:
    """Faust broker URLs for a Kafka bootstrap list."""
    return [f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip()]


def create_app(config: Config, registry: CollectorRegistry) -> faust.App:
    """The worker's Faust app with the normalize agent and one agent per configured sink."""
    metrics = WorkerMetrics(registry)
    app = faust.App(
        config.worker.app_id,
        broker=broker_urls(config.kafka.bootstrap_servers),
        broker_client_id=f"{config.kafka.client_id}-worker",
        web_enabled=False,
        store="memory://",
        datadir=str(config.worker.data_dir),
        topic_replication_factor=config.topics.replication_factor,
        topic_partitions=config.topics.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=config.kafka.session_timeout_seconds,
        producer_acks=-1,
        autodiscover=False,
    )
    raw_topic = app.topic(config.topics.raw, key_serializer="raw", value_serializer="raw")
    events_topic = app.topic(config.topics.events, key_serializer="raw", value_serializer="raw")
    accounts = config.token_accounts()
    include_original = config.worker.include_original

    async def normalize_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            headers = records.decode_headers(event.headers)
            token_id = headers.get(records.HEADER_TOKEN_ID)
            provenance = Provenance(
                received_at=headers.get(records.HEADER_RECEIVED_AT),
                source=headers.get(records.HEADER_SOURCE),
                source_ip=headers.get(records.HEADER_SOURCE_IP),
                token_id=token_id,
                body_sha256=headers.get(records.HEADER_BODY_SHA256),
                account=accounts.get(token_id) if token_id else None,
            )
            value = event.message.value or b""
            metrics.events_in.inc()
            doc = normalize_raw(
                value, provenance, now=records.utc_now_iso(), include_original=include_original
            )
            carried = [
                (name, headers[name].encode()) for name in _CARRIED_HEADERS if name in headers
            ]
            await events_topic.send(key=event.message.key, value=orjson.dumps(doc), headers=carried)
            metrics.events_out.labels(
                doc["aha"]["event"] if doc["aha"]["event"] == "audit" else "other"
            ).inc()

    app.agent(raw_topic, name="normalize")(normalize_agent)

    for sink_config in config.sinks:
        sink = create_sink(sink_config)
        dlq_topic = app.topic(
            f"{config.topics.dlq_prefix}{sink.name}", key_serializer="raw", value_serializer="raw"
        )
        encode = None
        if sink_config.format != "ecs":
            encode = encoder_for(sink_config.format, config.formats)
        agent = _sink_agent(sink, sink_config, dlq_topic, metrics, encode)
        app.agent(events_topic, name=f"sink-{sink.name}")(agent)
    return app


def _received_at(headers: dict[str, str]) -> float | None:
    raw = headers.get(records.HEADER_RECEIVED_AT)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        return None


def _sink_agent(
    sink: Sink,
    sink_config: Any,
    dlq_topic: faust.TopicT,
    metrics: WorkerMetrics,
    encode: Encoder | None,
) -> Any:
    async def run(stream: faust.StreamT) -> None:
        await sink.start()
        try:
            await sink.healthcheck()
            metrics.sink_up.labels(sink.name).set(1)
            log.info("sink ready", extra={"sink": sink.name})
        except SinkError as error:
            metrics.sink_up.labels(sink.name).set(0)
            log.error("sink healthcheck failed", extra={"sink": sink.name, "error": str(error)})
        try:
            # take_events exists on faust-streaming's Stream but not on its StreamT protocol.
            batches = stream.take_events(  # type: ignore[attr-defined]
                sink_config.batch_max_events, sink_config.batch_max_seconds
            )
            async for batch in batches:
                await _ship(sink, batch, dlq_topic, metrics, encode)
        finally:
            await sink.close()

    return run


async def _dead_letter(
    dlq_topic: faust.TopicT, event: EventT, value: bytes, error: str, attempts: int, first: str
) -> None:
    headers = [
        (records.HEADER_ERROR, error.encode()),
        ("attempts", str(attempts).encode()),
        ("first-failed-at", first.encode()),
    ]
    delivery = await dlq_topic.send(key=event.message.key, value=value, headers=headers)
    await delivery  # durable in the DLQ before Faust may ack the source event


async def _ship(
    sink: Sink,
    batch: Sequence[EventT],
    dlq_topic: faust.TopicT,
    metrics: WorkerMetrics,
    encode: Encoder | None,
) -> None:
    # Never let a failure escape: Faust acks a batch whose agent raised (see DESIGN.md).
    first_try = records.utc_now_iso()
    events: list[EventT] = []
    values: list[bytes] = []
    payloads: list[bytes] = []
    for event in batch:
        value = event.message.value or b""
        try:
            # The sink gets its format; the DLQ keeps the normalized event for a replay.
            payload = value if encode is None else encode(orjson.loads(value))
        except Exception as error:
            metrics.sink_dead_lettered.labels(sink.name, "encode").inc()
            await _dead_letter(dlq_topic, event, value, f"encode failed: {error!r}", 0, first_try)
            continue
        events.append(event)
        values.append(value)
        payloads.append(payload)
    if not payloads:
        return
    try:
        await deliver(sink, payloads, metrics)
    except SinkError as error:
        log.error(
            "sink rejected batch, dead-lettering",
            extra={"sink": sink.name, "events": len(payloads), "error": str(error)},
        )
        metrics.sink_dead_lettered.labels(sink.name, "rejected").inc(len(payloads))
        for event, value in zip(events, values, strict=True):
            await _dead_letter(dlq_topic, event, value, str(error), error.attempts, first_try)
        return
    now = time.time()
    for event in events:
        received = _received_at(records.decode_headers(event.headers))
        if received is not None:
            metrics.end_to_end.labels(sink.name).observe(max(0.0, now - received))
