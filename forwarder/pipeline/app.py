"""The worker's Faust runtime: topics, tables, timers and sensors wired to the core's processor.

Everything the normalize agent decides is in forwarder/core/processor.py; here are only what
Faust needs: reading and writing the tables in the right partition, producing the events until
Kafka acknowledged them, metrics per batch, and the timers' ticks (ticks.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import faust
from faust.types import EventT
from mode.utils.times import want_seconds
from prometheus_client import CollectorRegistry

from forwarder import records
from forwarder.config import Config
from forwarder.core.dedupe import decode_state, encode_state
from forwarder.core.oversize import fit_event
from forwarder.core.processor import (
    Counts,
    IndexEntry,
    Outgoing,
    Processor,
    Raw,
    Settings,
    Tick,
    keys_of,
    parse_tick,
)
from forwarder.failures import Failure, classify_kafka
from forwarder.faust_compat import AgentErrorApp, HoleWatch, refuse_stale_acks, use_partition_of
from forwarder.kafka_client import broker_urls, ticks_topic_name
from forwarder.metrics import WorkerMetrics
from forwarder.pipeline.sensors import FaustSensor
from forwarder.pipeline.ticks import Ticker

log = logging.getLogger("forwarder.worker")

# What an app must do on SIGTERM/SIGINT before Faust stops its consumer: it is given the time
# it may take (window mode ships its held groups here).
before_stop: weakref.WeakKeyDictionary[faust.App, Callable[[float], Awaitable[int]]] = (
    weakref.WeakKeyDictionary()
)


def new_faust_app(
    config: Config, app_id: str, *, role: str, store: str, datadir: Path
) -> faust.App:
    """A Faust app (and consumer group `app_id`) with the settings every app here shares."""
    refuse_stale_acks()
    app = AgentErrorApp(
        app_id,
        broker=broker_urls(config.kafka.bootstrap_servers),
        broker_client_id=f"{config.kafka.client_id}-{role}",
        web_enabled=False,
        store=store,
        datadir=str(datadir),
        topic_replication_factor=config.topics.replication_factor,
        topic_partitions=config.topics.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=config.kafka.session_timeout_seconds,
        # A topic missing from the metadata at a rebalance is left unassigned until the next
        # refresh (Faust's assignor skips it): refresh often enough for that to heal quickly.
        consumer_metadata_max_age_ms=int(config.kafka.metadata_max_age_seconds * 1000),
        # No leader election (nothing here runs `on_leader`): no `__assignor-__leader` topic,
        # which Faust would create at start-up, a moment before the group's first rebalance.
        topic_disable_leader=True,
        producer_acks=-1,
        producer_max_request_size=config.kafka.max_request_bytes,
        # Do not wait at a rebalance or shutdown for in-flight events to be acked: a sink that
        # cannot deliver would hold the whole group. Un-acked events are consumed again by the
        # partition's next owner (at-least-once).
        stream_wait_empty=False,
        autodiscover=False,
    )
    watch = HoleWatch()

    @app.timer(interval=5.0)
    async def reread_holes() -> None:
        await watch.check(app.consumer)

    return app


def changelog_topics(app: faust.App) -> dict[str, dict[str, str]]:
    """The app's table changelog topics with the topic configs Faust would create them with.

    The worker creates them before Faust starts and waits for their leaders: a changelog topic
    that Faust creates itself can be missing from the consumer's metadata for a few seconds on a
    busy broker, and the first table write then fails with PartitionsMismatch ("0 partitions").
    """
    topics: dict[str, dict[str, str]] = {}
    for table in app.tables.values():
        topic = table.changelog_topic
        policies = [
            name for name, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on
        ]
        topic_config = {"cleanup.policy": ",".join(policies)} if policies else {}
        if topic.retention:
            topic_config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
        topics[topic.get_topic_name()] = topic_config
    return topics


def create_app(config: Config, registry: CollectorRegistry) -> faust.App:
    """The worker's Faust app: the normalize agent (sinks run in apps of their own)."""
    metrics = WorkerMetrics(registry)
    processor = Processor(settings_of(config))
    app = new_faust_app(
        config,
        config.worker.app_id,
        role="worker",
        # Dedupe state must survive restarts: RocksDB on local disk, its changelog in Kafka.
        store="rocksdb://" if processor.stateful else "memory://",
        datadir=config.worker.data_dir,
    )
    app.monitor = FaustSensor(registry, app="normalize")
    raw_name = config.topics.raw
    events_name = config.topics.events
    source_names = [raw_name]
    table = held = None
    if processor.stateful:
        # bytes both ways: Faust then uses the raw codec for the store and the changelog alike
        # (a schema's serializers are not used when the changelog is recovered).
        table = app.Table(
            "dedupe",
            default=None,
            partitions=config.topics.partitions,
            key_type=bytes,
            value_type=bytes,
            options=config.worker.rocksdb.table_options(),
            help="Per record: audits seen, changes and users shipped, its open window.",
        )
        # Timers cannot write tables (Faust needs an event to pick the changelog partition),
        # so they send ticks keyed by record to a topic co-partitioned with the raw topic.
        source_names.append(ticks_topic_name(config))
    if config.dedupe.mode == "window":
        # Only indexes the open windows for the timer (the groups live in the records' state).
        held = app.Table(
            "held",
            default=None,
            partitions=config.topics.partitions,
            key_type=bytes,
            value_type=bytes,
            options=config.worker.rocksdb.table_options(),
            help="Per record with an open window: when it opened, its partition, its size.",
        )
    source_topic = app.topic(*source_names, key_serializer="raw", value_serializer="raw")

    async def normalize_agent(stream: faust.StreamT) -> None:
        # Per batch: one state read and one write per record key, written only after Kafka
        # acknowledged the events it let through, so a crash in between ships again.
        batches = stream.take_events(  # type: ignore[attr-defined]
            config.worker.batch_max_events, config.worker.batch_max_seconds
        )
        async for batch in batches:
            items: list[Raw | Tick] = []
            owners: dict[bytes, EventT] = {}  # an event of each key's partition
            for event in batch:
                item = _item(event, raw_name)
                items.append(item)
                owners.update((key, event) for key in keys_of(item))
            states = _read(table, owners, decode_state)
            result = processor.process(items, states, now=time.time())
            _count(metrics, result.counts)
            await _send_all(
                app, events_name, result.events, config.kafka.max_request_bytes, metrics
            )
            _write(table, result.states, owners, encode_state)
            _write(held, result.index, owners, IndexEntry.encode)

    app.agent(source_topic, name="normalize")(normalize_agent)
    if table is not None:
        ticks = Ticker(
            processor,
            table,
            held,
            app.topic(source_names[1], key_serializer="raw", value_serializer="raw"),
            metrics,
            sweep_every=config.dedupe.sweep_interval_seconds,
            check_every=config.dedupe.window_check_interval_seconds,
        )
        app.timer(interval=config.dedupe.sweep_interval_seconds)(ticks.sweep)
        if held is not None:
            app.timer(interval=config.dedupe.window_check_interval_seconds)(ticks.flush_due)
            before_stop[app] = ticks.flush_all
    watch_rebalances(app, metrics, raw_name)
    return app


def settings_of(config: Config) -> Settings:
    """The processor's settings from the configuration."""
    dedupe = config.dedupe
    return Settings(
        mode=dedupe.mode,
        horizon=dedupe.collation_horizon_seconds,
        retention=dedupe.retention_seconds,
        max_audits=dedupe.max_audits_per_record,
        window_seconds=dedupe.window_seconds,
        window_max_audits=dedupe.window_max_audits,
        include_original=config.worker.include_original,
        accounts=config.token_accounts(),
    )


def _item(event: EventT, raw_topic: str) -> Raw | Tick:
    message = event.message
    value = message.value or b""
    if message.topic != raw_topic:
        return parse_tick(message.key, value)
    return Raw(message.key, value, records.decode_headers(event.headers), message.partition)


_V = TypeVar("_V")


def _read(
    table: Any, owners: Mapping[bytes, EventT], decode: Callable[[bytes | None], _V]
) -> dict[bytes, _V]:
    """The stored values of a batch's keys, each read in its own partition's store."""
    if table is None:
        return {}
    values = {}
    for key, event in owners.items():
        use_partition_of(event)
        values[key] = decode(table.get(key))
    return values


def _write(
    table: Any,
    values: Mapping[bytes, _V | None],
    owners: Mapping[bytes, EventT],
    encode: Callable[[_V], bytes],
) -> None:
    """Write (or, for None, delete) each key once, in its own partition's changelog."""
    for key, value in values.items():
        use_partition_of(owners[key])
        if value is not None:
            table[key] = encode(value)
        elif key in table:
            del table[key]


def _count(metrics: WorkerMetrics, counts: Counts) -> None:
    if counts.events_in:
        metrics.events_in.inc(counts.events_in)
    for kind, n in counts.events_out.items():
        metrics.events_out.labels(kind).inc(n)
    for reason, n in counts.dropped.items():
        metrics.dedupe_dropped.labels(reason).inc(n)
    if counts.revisions:
        metrics.dedupe_revisions.inc(counts.revisions)
    if counts.merged:
        metrics.dedupe_merged.inc(counts.merged)
    if counts.expired:
        metrics.dedupe_expired.inc(counts.expired)
    for seconds in counts.held_seconds:
        metrics.dedupe_held_seconds.observe(seconds)


def watch_rebalances(app: faust.App, metrics: WorkerMetrics, raw_topic: str) -> None:
    """Rebalance state for operators (and for tests that must not post into a moving group)."""
    # (mode's signal stubs require a positional-only sender that a def cannot express in 3.11
    # without `/`, which mypy then still rejects for *args: hence the ignores.)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.set(1)
        metrics.rebalances.inc()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    def on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        metrics.assigned_partitions.set(sum(1 for tp in assigned if tp.topic == raw_topic))

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    def on_rebalanced(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalancing.set(0)


async def _send_all(
    app: faust.App,
    topic: str,
    events: list[Outgoing],
    limit: int,
    metrics: WorkerMetrics,
) -> None:
    """Produce every message and return once Kafka acknowledged all of them.

    Straight to Faust's producer, not through `Topic.send`: the topic's per-message futures,
    callbacks and sensor calls cost more than producing (the sends are counted per batch).

    An event too large for the topic is cut to fit first (oversize.fit_event); one Kafka
    refuses for good all the same is dropped, logged and counted, never retried for ever. Any
    other failure is retried until it succeeds: raising here would let Faust ack the batch.
    """
    fitted = []
    for event in events:
        key, value, headers = event.key, event.value, event.headers
        fit = fit_event(key, value, headers, limit)
        if fit is None:
            metrics.events_dropped.labels("too_large").inc()
            log.error("event too large for the events topic, dropped", extra={"bytes": len(value)})
            continue
        if fit is not value:
            metrics.events_truncated.inc()
            log.warning(
                "event too large for the events topic, long texts cut",
                extra={"bytes": len(value), "kept_bytes": len(fit)},
            )
        fitted.append((key, fit, headers))

    def refused(message: Record, error: BaseException) -> None:
        metrics.events_dropped.labels(type(error).__name__).inc()
        log.error(
            "kafka refused an event for good, dropped",
            extra={"error.type": type(error).__name__, "error.message": str(error)},
        )

    await produce_acked(app, topic, fitted, _as_record, refused)


Record = tuple[bytes | None, bytes, Any]
"""Key, value and headers of a record produced straight to Faust's producer."""
_M = TypeVar("_M")


def _as_record(message: Record) -> Record:
    return message


async def produce_acked(
    app: faust.App,
    topic: str,
    messages: Sequence[_M],
    record: Callable[[_M], Record],
    refused: Callable[[_M, BaseException], None],
) -> list[_M]:
    """Produce every message (as `record` makes it a Kafka record) and return those Kafka
    acknowledged, once every one is settled.

    A message Kafka refuses for good (failure class RECORD) is handed to `refused` and left out;
    any other failure is retried, with back-off, until it succeeds. Sends are counted per round
    into the app's sensor (they bypass `Topic.send`, which would count them one by one).
    """
    pending = list(messages)
    done: list[_M] = []
    attempt = 0
    producer = app.producer
    while pending:
        futures = []
        for message in pending:
            key, value, headers = record(message)
            futures.append(await producer.send(topic, key, value, None, None, headers))
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = []
        for message, result in zip(pending, results, strict=True):
            if not isinstance(result, BaseException):
                done.append(message)
            elif classify_kafka(result) is Failure.RECORD:
                refused(message, result)
            else:
                failed.append(message)
        if isinstance(app.monitor, FaustSensor):
            app.monitor.count_sent(topic, len(pending), len(failed))
        if failed:
            attempt += 1
            delay = min(30.0, 0.5 * 2**attempt)
            log.warning(
                "produce failed, retrying",
                extra={"topic": topic, "failed": len(failed), "retry_in": delay},
            )
            await asyncio.sleep(delay)
        pending = failed
    return done
