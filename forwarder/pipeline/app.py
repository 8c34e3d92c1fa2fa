"""The Faust application: thin agents wiring topics to plain functions and sinks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from faust.types import EventT
from prometheus_client import CollectorRegistry

from forwarder import records
from forwarder.config import Config
from forwarder.formats import Encoder, encoder_for
from forwarder.metrics import WorkerMetrics
from forwarder.pipeline import dedupe
from forwarder.pipeline.normalize import Provenance, event_epoch, normalize, parse_body
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
        # Dedupe state must survive restarts: RocksDB on local disk, its changelog in Kafka.
        store="rocksdb://" if config.dedupe.mode != "off" else "memory://",
        datadir=str(config.worker.data_dir),
        topic_replication_factor=config.topics.replication_factor,
        topic_partitions=config.topics.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=config.kafka.session_timeout_seconds,
        producer_acks=-1,
        # Do not wait at a rebalance or shutdown for in-flight events to be acked: a sink that
        # cannot deliver would hold the whole group. Un-acked events are consumed again by the
        # partition's next owner (at-least-once).
        stream_wait_empty=False,
        autodiscover=False,
    )
    raw_topic = app.topic(config.topics.raw, key_serializer="raw", value_serializer="raw")
    events_topic = app.topic(config.topics.events, key_serializer="raw", value_serializer="raw")
    accounts = config.token_accounts()
    include_original = config.worker.include_original

    dedupe_config = config.dedupe
    table = None
    if dedupe_config.mode != "off":
        table = app.Table(
            "dedupe",
            default=None,
            partitions=config.topics.partitions,
            # bytes both ways: Faust then uses the raw codec for the store and the changelog
            # alike (a schema's serializers are not used when the changelog is recovered).
            key_type=bytes,
            value_type=bytes,
            help="Per record: audit ids and hashes seen, changes and users shipped.",
        )

    def provenance_of(headers: dict[str, str]) -> Provenance:
        token_id = headers.get(records.HEADER_TOKEN_ID)
        return Provenance(
            received_at=headers.get(records.HEADER_RECEIVED_AT),
            source=headers.get(records.HEADER_SOURCE),
            source_ip=headers.get(records.HEADER_SOURCE_IP),
            token_id=token_id,
            body_sha256=headers.get(records.HEADER_BODY_SHA256),
            account=accounts.get(token_id) if token_id else None,
        )

    def decide(
        key: bytes, value: bytes, body: Any, headers: dict[str, str], pending: dict[bytes, Any]
    ) -> dedupe.Decision | None:
        if table is None or not key:
            return None
        body_sha256 = headers.get(records.HEADER_BODY_SHA256) or hashlib.sha256(value).hexdigest()
        state = pending.get(key)
        if state is None:
            state = dedupe.decode_state(table.get(key))
        decision = dedupe.decide(
            state,
            dedupe.subject(body, body_sha256),
            event_time=event_epoch(body) or _received_at(headers) or time.time(),
            now=time.time(),
            horizon=dedupe_config.collation_horizon_seconds,
            max_audits=dedupe_config.max_audits_per_record,
        )
        pending[key] = decision.state
        if decision.revision:
            metrics.dedupe_revisions.inc()
        if not decision.ship:
            metrics.dedupe_dropped.labels(decision.reason or "unknown").inc()
        return decision

    async def normalize_agent(stream: faust.StreamT) -> None:
        # Batches: each event's dedupe state is written only after the events it let through
        # are acknowledged by Kafka, so a crash in between ships again rather than never.
        batches = stream.take_events(  # type: ignore[attr-defined]
            config.worker.batch_max_events, config.worker.batch_max_seconds
        )
        async for batch in batches:
            pending: dict[bytes, Any] = {}
            source_event: dict[bytes, EventT] = {}
            outgoing: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
            for event in batch:
                metrics.events_in.inc()
                headers = records.decode_headers(event.headers)
                value = event.message.value or b""
                key = event.message.key
                body = parse_body(value)
                _use_partition_of(event)
                decision = decide(key, value, body, headers, pending)
                if key:
                    source_event[key] = event
                if decision is not None and not decision.ship:
                    continue
                doc = normalize(
                    body,
                    provenance_of(headers),
                    now=records.utc_now_iso(),
                    original=value if include_original else None,
                )
                if decision is not None:
                    dedupe.annotate(doc, decision)
                carried = [
                    (name, headers[name].encode()) for name in _CARRIED_HEADERS if name in headers
                ]
                outgoing.append((key, orjson.dumps(doc), carried))
                kind = "audit" if doc["aha"]["event"] == "audit" else "other"
                metrics.events_out.labels(kind).inc()
            await _send_all(events_topic, outgoing)
            if table is not None:
                for key, state in pending.items():
                    _use_partition_of(source_event[key])
                    table[key] = dedupe.encode_state(state)

    if table is not None:

        @app.timer(interval=dedupe_config.sweep_interval_seconds)
        async def sweep_dedupe_state() -> None:
            now = time.time()
            expired = [
                key
                for key, raw in list(table.items())
                if dedupe.expired(
                    dedupe.decode_state(raw) or {}, now, dedupe_config.retention_seconds
                )
            ]
            for key in expired:
                del table[key]
            metrics.dedupe_expired.inc(len(expired))
            metrics.dedupe_records.set(len(table))

    app.agent(raw_topic, name="normalize")(normalize_agent)

    # Rebalance state for operators (and for tests that must not post into a moving group).
    # (mode's signal stubs require a positional-only sender that a def cannot express in 3.11
    # without `/`, which mypy then still rejects for *args: hence the ignores.)
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.set(1)
        metrics.rebalances.inc()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    def on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        metrics.assigned_partitions.set(sum(1 for tp in assigned if tp.topic == config.topics.raw))

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    def on_rebalanced(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.set(0)

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


def _use_partition_of(event: EventT) -> None:
    """Make `event` the one Faust's table reads and writes use to pick their partition.

    Tables find a key's partition (RocksDB instance and changelog partition) through the
    current-event context variable; inside a `take_events` batch it names the batch's last
    event. Only the context variable is set, in this task's own context: the stream's
    `current_event` attribute belongs to the task that fills the batch, and changing it would
    put the wrong event into the batch.
    """
    _current_event.set(weakref.ref(event))


async def _send_all(
    topic: faust.TopicT, messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Produce every message and return once Kafka acknowledged all of them.

    A failure is retried until it succeeds: raising here would let Faust ack the batch.
    """
    attempt = 0
    while messages:
        futures = [
            await topic.send(key=key, value=value, headers=headers)
            for key, value, headers in messages
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [
            message
            for message, result in zip(messages, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failed:
            attempt += 1
            delay = min(30.0, 0.5 * 2**attempt)
            log.warning(
                "produce failed, retrying",
                extra={"topic": topic.get_topic_name(), "failed": len(failed), "retry_in": delay},
            )
            await asyncio.sleep(delay)
        messages = failed


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
        # A sink that cannot start or answer is reported down, not crashed: its deliveries retry
        # until the destination is back, and its events wait in Kafka meanwhile.
        try:
            await sink.start()
            await sink.healthcheck()
            metrics.sink_up.labels(sink.name).set(1)
            log.info("sink ready", extra={"sink": sink.name})
        except (SinkError, OSError) as error:
            metrics.sink_up.labels(sink.name).set(0)
            log.error("sink not ready", extra={"sink": sink.name, "error": str(error)})
        # Batches by hand, acking only what the destination (or the DLQ) took: Faust's
        # take_events acks its batch in a `finally`, so a shutdown during a retry would ack
        # events that were never delivered.
        manual = stream.noack()  # type: ignore[attr-defined]  # on Stream, not on StreamT
        batch: list[EventT] = []
        opened = 0.0
        shipping = asyncio.Lock()

        async def ship_batch() -> None:
            nonlocal batch
            async with shipping:
                if not batch:
                    return
                taken, batch = batch, []
                await _ship(sink, taken, dlq_topic, metrics, encode)
                for event in taken:
                    await manual.ack(event)

        async def ship_when_due() -> None:
            while True:
                await asyncio.sleep(sink_config.batch_max_seconds / 2)
                if batch and time.monotonic() - opened >= sink_config.batch_max_seconds:
                    await ship_batch()

        timer = asyncio.create_task(ship_when_due(), name=f"sink-{sink.name}-timer")
        try:
            async for event in manual.events():
                if not batch:
                    opened = time.monotonic()
                batch.append(event)
                if len(batch) >= sink_config.batch_max_events:
                    await ship_batch()
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
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
