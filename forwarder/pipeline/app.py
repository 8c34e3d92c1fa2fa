"""The Faust application: thin agents wiring topics to plain functions and sinks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.types import EventT
from mode.utils.times import want_seconds
from prometheus_client import CollectorRegistry

from forwarder import records
from forwarder.config import Config
from forwarder.core import dedupe, window
from forwarder.core.normalize import Provenance, event_epoch, normalize, parse_body
from forwarder.core.oversize import fit_event
from forwarder.failures import Failure, classify_kafka
from forwarder.faust_compat import AgentErrorApp, HoleWatch, refuse_stale_acks, use_partition_of
from forwarder.kafka_client import broker_urls, ticks_topic_name
from forwarder.metrics import WorkerMetrics
from forwarder.pipeline.sensors import FaustSensor

log = logging.getLogger("forwarder.worker")

# What an app must do on SIGTERM/SIGINT before Faust stops its consumer: it is given the time
# it may take (window mode ships its held groups here).
before_stop: weakref.WeakKeyDictionary[faust.App, Callable[[float], Awaitable[int]]] = (
    weakref.WeakKeyDictionary()
)

# Headers of the raw record that travel on with the normalized event.
_CARRIED_HEADERS = (
    records.HEADER_RECEIVED_AT,
    records.HEADER_SOURCE,
    records.HEADER_TOKEN_ID,
    records.HEADER_BODY_SHA256,
    records.HEADER_REQUEST_ID,
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
    app = new_faust_app(
        config,
        config.worker.app_id,
        role="worker",
        # Dedupe state must survive restarts: RocksDB on local disk, its changelog in Kafka.
        store="rocksdb://" if config.dedupe.mode != "off" else "memory://",
        datadir=config.worker.data_dir,
    )
    app.monitor = FaustSensor(registry, app="normalize")
    events_topic = app.topic(config.topics.events, key_serializer="raw", value_serializer="raw")
    accounts = config.token_accounts()
    include_original = config.worker.include_original

    dedupe_config = config.dedupe
    windowed = dedupe_config.mode == "window"
    table = held = ticks_topic = None
    source_topic = app.topic(config.topics.raw, key_serializer="raw", value_serializer="raw")
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
        # Timers cannot write tables (Faust needs an event to pick the changelog partition),
        # so they send a tick keyed by the record to a topic co-partitioned with the raw topic,
        # and the agent acts on it in order with the record's audits.
        ticks_name = ticks_topic_name(config)
        ticks_topic = app.topic(ticks_name, key_serializer="raw", value_serializer="raw")
        source_topic = app.topic(
            config.topics.raw, ticks_name, key_serializer="raw", value_serializer="raw"
        )
    if windowed:
        # The held audits live in the record's dedupe state (one changelog record per key, so
        # "seen" and "held" persist together); this table only indexes the open windows for
        # the timer: {"opened": time, "p": partition, "n": audits}.
        held = app.Table(
            "held",
            default=None,
            partitions=config.topics.partitions,
            key_type=bytes,
            value_type=bytes,
            help="Per record with an open window: when it opened, its partition, its size.",
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

    def state_of(key: bytes, pending: dict[bytes, Any]) -> Any:
        if key in pending:
            return pending[key]
        assert table is not None
        return dedupe.decode_state(table.get(key))

    def group_of(key: bytes, pending: dict[bytes, Any]) -> Any:
        state = state_of(key, pending)
        return state.get(HELD) if state else None

    def index(group: Any, partition: int) -> dict[str, Any]:
        return {"opened": group["opened"], "p": partition, "n": len(group["audits"])}

    def decide(
        key: bytes, value: bytes, body: Any, headers: dict[str, str], pending: dict[bytes, Any]
    ) -> dedupe.Decision | None:
        if table is None or not key:
            return None
        body_sha256 = headers.get(records.HEADER_BODY_SHA256) or hashlib.sha256(value).hexdigest()
        decision = dedupe.decide(
            state_of(key, pending),
            dedupe.subject(body, body_sha256),
            event_time=event_epoch(body) or records.received_epoch(headers) or time.time(),
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

    def outgoing_event(doc: dict[str, Any], key: bytes | None, headers: dict[str, str]) -> Any:
        carried = [(name, headers[name].encode()) for name in _CARRIED_HEADERS if name in headers]
        carried.append((records.HEADER_SCHEMA_VERSION, EVENT_SCHEMA_VERSION))
        metrics.events_out.labels("audit" if doc["aha"]["event"] == "audit" else "other").inc()
        return (key, orjson.dumps(doc), carried)

    def flush_group(
        key: bytes, pending: dict[bytes, Any], pending_held: dict[bytes, Any]
    ) -> Any | None:
        """Ship a held group as one merged event (or suppress it when all of it was shipped)."""
        group = group_of(key, pending)
        pending_held[key] = None
        if not group or not group["audits"]:
            return None
        now = time.time()
        audits = [(entry["audit"], float(entry["time"])) for entry in group["audits"]]
        ship, state = dedupe.decide_group(
            state_of(key, pending), audits, now=now, horizon=dedupe_config.collation_horizon_seconds
        )
        state.pop(HELD, None)
        pending[key] = state
        held_seconds = max(0.0, now - float(group["opened"]))
        metrics.dedupe_held_seconds.observe(held_seconds)
        if not ship:
            metrics.dedupe_dropped.labels("collated").inc(len(audits))
            return None
        metrics.dedupe_merged.inc(len(audits))
        body, info = window.merge(group)
        headers = window.first_headers(group)
        doc = normalize(body, provenance_of(headers), now=records.utc_now_iso())
        window.annotate(doc, info, held_seconds=held_seconds)
        return outgoing_event(doc, key, headers)

    def on_tick(
        key: bytes, kind: bytes, pending: dict[bytes, Any], pending_held: dict[bytes, Any]
    ) -> Any | None:
        now = time.time()
        if kind in (TICK_FLUSH, TICK_FLUSH_NOW) and held is not None:
            group = group_of(key, pending)
            if group is None:
                pending_held[key] = None  # an index entry whose group is gone (flushed)
            elif kind == TICK_FLUSH_NOW or window.due(
                group, now=now, window=dedupe_config.window_seconds
            ):
                return flush_group(key, pending, pending_held)
        elif kind == TICK_EXPIRE:
            state = state_of(key, pending)
            idle = state is not None and dedupe.expired(state, now, dedupe_config.retention_seconds)
            if idle and not group_of(key, pending):
                pending[key] = None
                metrics.dedupe_expired.inc()
        return None

    def hold(
        key: bytes,
        partition: int,
        body: Any,
        headers: dict[str, str],
        pending: dict[bytes, Any],
        pending_held: dict[bytes, Any],
    ) -> Any | None:
        """Window mode: hold an audit (or drop a copy); ship the group when it is full."""
        audit = body["audit"]
        now = time.time()
        event_time = event_epoch(body) or records.received_epoch(headers) or now
        copy, revision, state = dedupe.observe(
            state_of(key, pending),
            audit,
            event_time=event_time,
            now=now,
            max_audits=dedupe_config.max_audits_per_record,
        )
        pending[key] = state
        if copy:
            metrics.dedupe_dropped.labels("exact").inc()
            if state.get(HELD):
                # A copy of a held audit: make sure the timer knows the window (its index
                # entry may not have survived a crash that the state did).
                pending_held[key] = index(state[HELD], partition)
            return None
        if revision:
            metrics.dedupe_revisions.inc()
        group = window.hold(state.get(HELD), audit, headers, now=now, event_time=event_time)
        state[HELD] = group
        # The timer sends one tick per partition for its due groups.
        pending_held[key] = index(group, partition)
        if len(group["audits"]) >= dedupe_config.window_max_audits:
            return flush_group(key, pending, pending_held)
        return None

    async def normalize_agent(stream: faust.StreamT) -> None:
        # Batches: each event's dedupe state is written only after the events it let through
        # are acknowledged by Kafka, so a crash in between ships again rather than never.
        batches = stream.take_events(  # type: ignore[attr-defined]
            config.worker.batch_max_events, config.worker.batch_max_seconds
        )
        async for batch in batches:
            pending: dict[bytes, Any] = {}
            pending_held: dict[bytes, Any] = {}
            source_event: dict[bytes, EventT] = {}
            outgoing: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
            for event in batch:
                key = event.message.key
                value = event.message.value or b""
                use_partition_of(event)
                if key:
                    source_event[key] = event
                if ticks_topic is not None and event.message.topic != config.topics.raw:
                    # A tick names one key, or (value {"flush": [...]}) the due keys of its
                    # partition, which are this event's partition: table writes land right.
                    named, kind = ([key], value) if key else _partition_tick(value)
                    for each in named:
                        source_event[each] = event
                        merged = on_tick(each, kind, pending, pending_held)
                        if merged is not None:
                            outgoing.append(merged)
                    continue
                metrics.events_in.inc()
                headers = records.decode_headers(event.headers)
                body = parse_body(value)
                if (
                    windowed
                    and key
                    and body.get("event") == "audit"
                    and isinstance(body.get("audit"), dict)
                ):
                    merged = hold(
                        key, event.message.partition, body, headers, pending, pending_held
                    )
                    if merged is not None:
                        outgoing.append(merged)
                    continue
                decision = decide(key, value, body, headers, pending)
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
                outgoing.append(outgoing_event(doc, key, headers))
            await _send_all(events_topic, outgoing, config.kafka.max_request_bytes, metrics)
            for key, state in pending.items():
                use_partition_of(source_event[key])
                assert table is not None
                if state is not None:
                    table[key] = dedupe.encode_state(state)
                elif key in table:
                    del table[key]
            for key, group in pending_held.items():
                use_partition_of(source_event[key])
                assert held is not None
                if group is not None:
                    held[key] = orjson.dumps(group)
                elif key in held:
                    del held[key]

    if table is not None and ticks_topic is not None:
        tick_sent: dict[bytes, float] = {}

        async def tick(key: bytes, kind: bytes, now: float, every: float) -> None:
            # One tick per key and purpose until the agent had time to act on it.
            if tick_sent.get(key + kind, 0.0) < now - max(5 * every, 5.0):
                tick_sent[key + kind] = now
                await ticks_topic.send(key=key, value=kind)

        @app.timer(interval=dedupe_config.sweep_interval_seconds)
        async def sweep_dedupe_state() -> None:
            now = time.time()
            records_held = 0
            for key, raw in list(table.items()):
                records_held += 1
                state = dedupe.decode_state(raw) or {}
                if dedupe.expired(state, now, dedupe_config.retention_seconds):
                    await tick(key, TICK_EXPIRE, now, dedupe_config.sweep_interval_seconds)
            metrics.dedupe_records.set(records_held)
            for sent in [k for k, at in tick_sent.items() if at < now - 3600]:
                del tick_sent[sent]

        if held is not None:

            @app.timer(interval=dedupe_config.window_check_interval_seconds)
            async def flush_due_windows() -> None:
                now = time.time()
                every = dedupe_config.window_check_interval_seconds
                groups = audits = 0
                due: dict[int, list[bytes]] = {}
                for key, raw in list(held.items()):
                    group = orjson.loads(raw)
                    groups += 1
                    audits += int(group.get("n", 0))
                    if not window.due(group, now=now, window=dedupe_config.window_seconds):
                        continue
                    if tick_sent.get(key + TICK_FLUSH, 0.0) >= now - max(5 * every, 5.0):
                        continue  # ticked a moment ago; the agent has not got to it yet
                    tick_sent[key + TICK_FLUSH] = now
                    due.setdefault(int(group.get("p", -1)), []).append(key)
                await send_flush_ticks(due, TICK_FLUSH)
                metrics.dedupe_held_groups.set(groups)
                metrics.dedupe_held_audits.set(audits)

            async def send_flush_ticks(due: dict[int, list[bytes]], kind: bytes) -> None:
                for partition, keys in due.items():
                    if partition < 0:  # held before groups knew their partition
                        for key in keys:
                            await ticks_topic.send(key=key, value=kind)
                        continue
                    for start in range(0, len(keys), _TICK_KEYS):
                        chunk = [k.decode("latin-1") for k in keys[start : start + _TICK_KEYS]]
                        tick = {"flush": chunk, "now": kind == TICK_FLUSH_NOW}
                        await ticks_topic.send(
                            key=None, value=orjson.dumps(tick), partition=partition
                        )

            async def flush_held_now(timeout: float) -> int:
                """Ship every held group of this worker now (a graceful stop); how many are left.

                The groups go through the agent as ticks, so shipping and clearing the table
                happen together as for a passed window. Whatever is not shipped before
                `timeout` stays in the changelog table for the partitions' next owner.
                """
                deadline = time.monotonic() + timeout
                due: dict[int, list[bytes]] = {}
                for key, raw in list(held.items()):
                    due.setdefault(int(orjson.loads(raw).get("p", -1)), []).append(key)
                waiting = {key for keys in due.values() for key in keys}
                if not waiting:
                    return 0
                log.info("shipping held windows before stopping", extra={"groups": len(waiting)})
                await send_flush_ticks(due, TICK_FLUSH_NOW)
                while waiting and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    waiting = {key for key in waiting if key in held}
                if waiting:
                    log.warning(
                        "held windows left for the next owner",
                        extra={"groups": len(waiting), "timeout_seconds": timeout},
                    )
                return len(waiting)

            before_stop[app] = flush_held_now

    app.agent(source_topic, name="normalize")(normalize_agent)

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

    return app


HELD = "h"  # in a record's dedupe state: its open window's group (see window.py)
TICK_FLUSH = b"flush"  # ship the group if its window has passed
TICK_FLUSH_NOW = b"flush-now"  # ship the group now: the worker is stopping
TICK_EXPIRE = b"expire"
# Major version of forwarder/schemas/aha-audit-event.v<N>.json that the events follow.
EVENT_SCHEMA_VERSION = b"2"
_TICK_KEYS = 1000  # keys named by one partition tick


def _partition_tick(value: bytes) -> tuple[list[bytes], bytes]:
    """The keys a partition tick names, and what to do with them.

    Record keys are bytes; latin-1 carries them through JSON unchanged.
    """
    try:
        tick = orjson.loads(value)
        named, now = tick.get("flush", []), tick.get("now", False)
    except (orjson.JSONDecodeError, AttributeError):
        return [], TICK_FLUSH
    return [str(key).encode("latin-1") for key in named], TICK_FLUSH_NOW if now else TICK_FLUSH


async def _send_all(
    topic: faust.TopicT,
    messages: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
    limit: int,
    metrics: WorkerMetrics,
) -> None:
    """Produce every message and return once Kafka acknowledged all of them.

    An event too large for the topic is cut to fit first (oversize.fit_event); one Kafka
    refuses for good all the same is dropped, logged and counted, never retried for ever. Any
    other failure is retried until it succeeds: raising here would let Faust ack the batch.
    """
    fitted = []
    for key, value, headers in messages:
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
    messages = fitted
    attempt = 0
    while messages:
        futures = [
            await topic.send(key=key, value=value, headers=headers)
            for key, value, headers in messages
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = []
        for message, result in zip(messages, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            failure = classify_kafka(result)
            if failure is Failure.RECORD:
                metrics.events_dropped.labels(type(result).__name__).inc()
                log.error(
                    "kafka refused an event for good, dropped",
                    extra={"error.type": type(result).__name__, "error.message": str(result)},
                )
                continue
            failed.append(message)
        if failed:
            attempt += 1
            delay = min(30.0, 0.5 * 2**attempt)
            log.warning(
                "produce failed, retrying",
                extra={"topic": topic.get_topic_name(), "failed": len(failed), "retry_in": delay},
            )
            await asyncio.sleep(delay)
        messages = failed
