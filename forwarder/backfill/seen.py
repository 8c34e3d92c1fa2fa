"""What the raw topic already holds: audit ids and content hashes from a point in time on.

Reading the topic itself (rather than keeping our own record of what arrived) is stateless and
sees every path into it: webhooks, the spool's drain, earlier backfills and replays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from forwarder.aiokafka_compat import refresh_metadata
from forwarder.config import Config
from forwarder.core.dedupe import content_hash
from forwarder.core.users import canonical_audit

log = logging.getLogger("forwarder.backfill.seen")


@dataclass
class SeenIndex:
    """Audit id -> the content hashes seen under it."""

    audits: dict[str, set[str]] = field(default_factory=dict)
    records: int = 0

    def add(self, audit_id: str, digest: str) -> None:
        """Remember one audit."""
        self.audits.setdefault(audit_id, set()).add(digest)

    def has_id(self, audit_id: str) -> bool:
        """Whether any audit with this id was seen."""
        return audit_id in self.audits

    def has(self, audit_id: str, digest: str) -> bool:
        """Whether this exact audit (id and content) was seen."""
        return digest in self.audits.get(audit_id, ())


def index_body(index: SeenIndex, value: bytes | None) -> None:
    """Add one raw-topic body to the index (anything that is not an audit is ignored)."""
    if not value:
        return
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict) or body.get("event") != "audit":
        return
    audit: Any = body.get("audit")
    if isinstance(audit, Mapping) and audit.get("id") is not None:
        # The topic holds bodies as received: either shape of contributors.
        index.add(str(audit["id"]), content_hash(canonical_audit(audit)))


async def scan_raw(config: Config, since: float, *, timeout: float = 300.0) -> SeenIndex:
    """Index the raw topic from Unix time `since` (by record timestamp) up to its current end."""
    topic = config.topics.raw
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers,
        client_id=f"{config.kafka.client_id}-reconcile",
        enable_auto_commit=False,
        request_timeout_ms=int(config.kafka.request_timeout_seconds * 1000),
    )
    index = SeenIndex()
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic, config.kafka.request_timeout_seconds)
        if not partitions:
            # A topic nobody created yet holds nothing; everything will count as missing.
            log.warning("raw topic does not exist", extra={"topic": topic})
            return index
        assignment = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assignment)
        ends = await consumer.end_offsets(assignment)
        starts = await consumer.offsets_for_times(dict.fromkeys(assignment, int(since * 1000)))
        pending: dict[TopicPartition, int] = {}
        for tp in assignment:
            found = starts.get(tp)
            start = found.offset if found is not None else ends[tp]
            if start < ends[tp]:
                consumer.seek(tp, start)
                pending[tp] = ends[tp]
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout:.0f} s")
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset < pending.get(tp, 0):
                        index.records += 1
                        index_body(index, message.value)
            for tp in list(pending):
                if await consumer.position(tp) >= pending[tp]:
                    del pending[tp]
    finally:
        await consumer.stop()
    log.info(
        "raw topic read",
        extra={"topic": topic, "records": index.records, "audits": len(index.audits)},
    )
    return index


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if time.monotonic() > deadline:
            return set()
        await refresh_metadata(consumer)
        await asyncio.sleep(0.2)
