"""Worker benchmark: the Faust normalize agent beside raw aiokafka loops over the same records.

Every variant gets its own fresh raw and events topics (8 partitions) and its own consumer group,
pre-filled with the same N raw records, and runs until the events topic holds N records.
Rates come from the events' CreateTime: first to last event (start-up excluded), and from the
variant's start to the last event (start-up included).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import sample_bodies
from forwarder import records
from forwarder.core.normalize import Provenance, normalize_raw

PARTITIONS = 8
# The headers the normalize agent carries over to the event (forwarder.pipeline.app).
_CARRIED = (
    records.HEADER_RECEIVED_AT,
    records.HEADER_SOURCE,
    records.HEADER_TOKEN_ID,
    records.HEADER_BODY_SHA256,
)
Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


def raw_records(n: int) -> list[Record]:
    """N distinct raw records cycling through the samples: unique audit and record ids."""
    bodies = [orjson.loads(body) for body in sample_bodies()]
    return list(iter_raw_records(0, n, int(time.time()) << 32, bodies))


def iter_raw_records(
    start: int, n: int, base: int, bodies: list[dict[str, Any]]
) -> Iterator[Record]:
    """Records `start`..`start + n` of a run numbered from `base`: distinct audit and record
    ids (over runs of up to 2**30 records), keyed and with the headers the ingest writes."""
    for i in range(start, start + n):
        body = bodies[i % len(bodies)]
        inner = dict(body[body["event"]])
        inner["id"] = str(base + i)
        if "auditable_id" in inner:
            inner["auditable_id"] = str(base + (1 << 30) + i)
        value = orjson.dumps({**body, body["event"]: inner})
        sha = hashlib.sha256(value).hexdigest()
        headers = {
            records.HEADER_RECEIVED_AT: records.utc_now_iso(),
            records.HEADER_SOURCE: "webhook",
            records.HEADER_SOURCE_IP: "203.0.113.7",
            records.HEADER_TOKEN_ID: "bench",
            records.HEADER_BODY_SHA256: sha,
        }
        key = records.record_key(orjson.loads(value), sha)
        yield key, value, records.encode_headers(headers)


async def prepare_topics(bootstrap: str, raw: str, events: str, rows: list[Record]) -> None:
    """Create the variant's topics and fill the raw one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (raw, events)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(raw, value, key, headers=h) for key, value, h in rows]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _partitions(topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(PARTITIONS)]


async def count(bootstrap: str, topic: str) -> int:
    """Records in `topic` (sum of end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(_partitions(topic))).values())
    finally:
        await consumer.stop()


async def event_span(bootstrap: str, topic: str) -> tuple[int, float, float]:
    """(records, first CreateTime, last CreateTime) of `topic`, times in seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = _partitions(topic)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        stamps: list[int] = []
        for tp in tps:
            for offset in {0, ends[tp] - 1} if ends[tp] else ():
                consumer.seek(tp, offset)
                stamps.append((await consumer.getone(tp)).timestamp)
        return sum(ends.values()), min(stamps) / 1e3, max(stamps) / 1e3
    finally:
        await consumer.stop()


def normalized(value: bytes, headers: list[tuple[str, bytes]]) -> tuple[bytes, list[Any]]:
    """What the Faust normalize agent does to one record, minus its metrics."""
    decoded = records.decode_headers(headers)
    token_id = decoded.get(records.HEADER_TOKEN_ID)
    provenance = Provenance(
        received_at=decoded.get(records.HEADER_RECEIVED_AT),
        source=decoded.get(records.HEADER_SOURCE),
        source_ip=decoded.get(records.HEADER_SOURCE_IP),
        token_id=token_id,
        body_sha256=decoded.get(records.HEADER_BODY_SHA256),
        account="acme" if token_id == "bench" else None,
    )
    doc = normalize_raw(value, provenance, now=records.utc_now_iso())
    carried = [(name, decoded[name].encode()) for name in _CARRIED if name in decoded]
    return orjson.dumps(doc), carried


async def raw_loop(
    bootstrap: str, raw: str, events: str, group: str, n: int, *, normalize: bool
) -> None:
    """Consume `raw`, (normalize,) produce to `events`; commit each batch once it is acked."""
    consumer = AIOKafkaConsumer(
        raw,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while done < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            futures = []
            for messages in batches.values():
                for msg in messages:
                    value, headers = msg.value or b"", list(msg.headers)
                    if normalize:
                        value, headers = normalized(value, headers)
                    futures.append(await producer.send(events, value, msg.key, headers=headers))
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


async def run_faust(
    bootstrap: str, raw: str, events: str, app_id: str, n: int, tmp: Path, dedupe: str
) -> None:
    """`python -m forwarder worker` (no sinks) until `events` holds N records, then SIGTERM."""
    tree: dict[str, Any] = {
        "log_level": "warning",
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {
            "raw": raw,
            "events": events,
            "invalid": f"{raw}.invalid",
            "partitions": PARTITIONS,
        },
        "worker": {"app_id": app_id, "data_dir": str(tmp / app_id), "metrics_port": 0},
        "sinks": [],
        "dedupe": {"mode": dedupe},
    }
    if dedupe == "window":
        # Short enough that every held record ships within the run; the other window settings
        # (check interval 1 s, 100 audits per group) stay at their defaults.
        tree["dedupe"]["window_seconds"] = WINDOW_SECONDS
    config = tmp / f"{app_id}.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    env = {k: v for k, v in env.items() if not k.startswith("AHA_SIEM_")}
    log = tmp / f"{app_id}.log"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    proc = _spawn([sys.executable, "-m", "forwarder", "worker", "--config", str(config)], log, env)
    try:
        tps = _partitions(events)
        deadline = time.monotonic() + 180
        while sum((await consumer.end_offsets(tps)).values()) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"faust worker stopped or stalled; see {log}")
            await asyncio.sleep(0.25)
    finally:
        await consumer.stop()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


VARIANTS: dict[str, str] = {
    "passthrough": "aiokafka consume->produce",
    "normalize": "aiokafka consume->normalize_raw->produce",
    "faust": "faust normalize agent, dedupe on (no sinks)",
    "faust-nodedupe": "faust normalize agent, dedupe off (no sinks)",
    "faust-window": "faust normalize agent, dedupe window (no sinks)",
}
# Faust variant -> dedupe.mode.
_DEDUPE_MODES = {"faust": "realtime", "faust-nodedupe": "off", "faust-window": "window"}
WINDOW_SECONDS = 1.0


async def run_variant(
    variant: str, bootstrap: str, prefix: str, rows: list[Record], tmp: Path
) -> dict[str, float]:
    """One variant over fresh topics: steady and total events/s and start-up seconds."""
    raw, events, group = f"{prefix}.raw", f"{prefix}.events", f"{prefix}.group"
    await prepare_topics(bootstrap, raw, events, rows)
    n = len(rows)
    started = time.time()
    if variant.startswith("faust"):
        await run_faust(bootstrap, raw, events, group, n, tmp, _DEDUPE_MODES[variant])
    else:
        await raw_loop(bootstrap, raw, events, group, n, normalize=variant == "normalize")
    total, first, last = await event_span(bootstrap, events)
    if total < n:
        raise RuntimeError(f"{variant}: events topic holds {total} records, expected {n}")
    return {
        "events_per_s": (n - 1) / max(last - first, 1e-3),
        "events_per_s_with_startup": n / max(last - started, 1e-3),
        "startup_s": first - started,
    }
