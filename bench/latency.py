"""End-to-end latency at a steady webhook rate: from the ingest's 202 to the SIEM holding the event.

The real `aha-siem ingest` and `aha-siem worker` (realtime dedupe, one process per sink) run as
the chaos suite runs them (`tests.chaos.harness.Pipeline`), with every sink of `kinds` configured
at once on the same worker and each writing to a receiver on this machine. `tests.chaos.harness.Load`
posts fresh audits at a steady rate; after a warm-up, every webhook answered 202 in the measured
window is looked for in every receiver, polled every few milliseconds by the bench:

- file: the line appearing in the file; http, splunk_hec, elasticsearch, sentinel: the event in
  the fake's store (it is stored when the fake answers the request); syslog: the line in
  rsyslogd's output file; kafka: the output record's timestamp (CreateTime, the sink's producer);
- the baseline: the normalized event on the events topic (its CreateTime), before any sink.

A latency is the time from the 202 answer to that moment. The sinks' own
`aha_siem_sink_end_to_end_seconds` histogram (webhook received -> SIEM acknowledged, measured by
the sink) is read from the worker's /metrics before and after the window as a cross-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.sinks import sentinel_entry, served
from bench.stack import memory_kib, mib, pipeline
from tests.chaos.harness import Load, samples_matching
from tests.fakes.elasticsearch import FakeElasticsearch
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.sentinel import FakeAzure
from tests.fakes.splunk_hec import FakeHec
from tests.receivers.rsyslog import Rsyslog, rsyslogd_path

PARTITIONS = 8
POLL_SECONDS = 0.01
DRAIN_SECONDS = 60.0
KINDS: dict[str, str] = {
    "file": "file sink (ecs NDJSON, fsync) -> local file",
    "http": "http sink (ecs NDJSON) -> fake receiver",
    "splunk_hec": "splunk_hec sink (gzip, acks off) -> fake HEC",
    "splunk_hec_acks": "splunk_hec sink (gzip, acks on, polled every 2 s) -> fake HEC",
    "splunk_hec_acks_fast": "splunk_hec sink (gzip, acks on, polled every 0.25 s) -> fake HEC",
    "elasticsearch": "elasticsearch sink (_bulk create) -> fake ES",
    "sentinel": "sentinel sink (gzip) -> fake Entra + ingestion",
    "syslog": "syslog sink (tcp, syslog-cef) -> rsyslogd",
    "kafka": "kafka sink (idempotent) -> topic, same broker",
}
BASELINE = "normalized event on the events topic (worker output, before any sink)"
_EXTERNAL_ID = re.compile(rb"externalId=(\d+)")
_BUCKET = re.compile(r'le="([^"]+)"')
Row = dict[str, Any]


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of `values` (NaN when empty); p99 by the inclusive method."""
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p99 = (
        statistics.quantiles(values, n=100, method="inclusive")[98]
        if len(values) > 1
        else values[0]
    )
    return {"p50": statistics.median(values), "p99": p99, "max": max(values)}


def histogram_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """From two readings of a Prometheus histogram's cumulative buckets (upper bound -> count):
    the bucket bounds that hold the median and the 99th percentile of what was observed in
    between, and the share observed at or under 1 s."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return {
            "count": 0.0,
            "p50_le": float("nan"),
            "p99_le": float("nan"),
            "under_1s": float("nan"),
        }

    def bound(share: float) -> float:
        return next(b for b, c in zip(bounds, counts, strict=True) if c >= share * total)

    under = next((c for b, c in zip(bounds, counts, strict=True) if b >= 1.0), total)
    return {"count": total, "p50_le": bound(0.5), "p99_le": bound(0.99), "under_1s": under / total}


def _ecs_id(doc: Any) -> str | None:
    if isinstance(doc, bytes | str):
        try:
            doc = orjson.loads(doc)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(doc, dict):
        return None
    event = doc.get("event")
    return str(event.get("id")) if isinstance(event, dict) else None


@dataclass
class Arrivals:
    """Where one sink's events land: a poll returns the ids that arrived since the last one,
    each with its arrival time (time.monotonic)."""

    kind: str
    entry: dict[str, Any]
    poll: Callable[[], Awaitable[list[tuple[str, float]]]]
    seen: dict[str, float] = field(default_factory=dict)
    extra: int = 0
    """Arrivals of an id already seen (duplicates)."""

    async def update(self) -> None:
        """Take what arrived since the last poll."""
        for event_id, at in await self.poll():
            if event_id in self.seen:
                self.extra += 1
            else:
                self.seen[event_id] = at


def _taken(items: list[Any], start: list[int]) -> list[Any]:
    """The items appended to `items` since the last call (`start` holds the position)."""
    new = items[start[0] :]
    start[0] += len(new)
    return new


def _stamped(ids: list[str | None]) -> list[tuple[str, float]]:
    now = time.monotonic()
    return [(i, now) for i in ids if i is not None]


class _Lines:
    """Ids in a file that only grows, read incrementally, each line parsed by `parse`."""

    def __init__(self, path: Path, parse: Callable[[bytes], str | None]) -> None:
        self.path, self.parse, self.offset = path, parse, 0

    async def __call__(self) -> list[tuple[str, float]]:
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return _stamped([self.parse(line) for line in data[:end].splitlines() if line.strip()])


def _cef_id(line: bytes) -> str | None:
    found = _EXTERNAL_ID.search(line)
    return found.group(1).decode() if found else None


class _TopicTimes:
    """Ids and CreateTimes (as time.monotonic) of the records appended to a topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.skew = time.time() - time.monotonic()

    async def start(self) -> None:
        """Assign every partition from its current end (what is new from now on)."""
        await self.consumer.start()
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_end(*self.tps)

    async def __call__(self) -> list[tuple[str, float]]:
        batches = await self.consumer.getmany(timeout_ms=0, max_records=5000)
        out: list[tuple[str, float]] = []
        for records in batches.values():
            for record in records:
                event_id = _ecs_id(record.value)
                if event_id is not None:
                    out.append((event_id, record.timestamp / 1e3 - self.skew))
        return out

    async def stop(self) -> None:
        """Leave."""
        await self.consumer.stop()


def receivers(
    kinds: list[str], tmp: Path, bootstrap: str, prefix: str, stack: contextlib.ExitStack
) -> list[Arrivals]:
    """A fresh receiver for each sink kind, kept open by `stack`."""
    out: list[Arrivals] = []
    for kind in kinds:
        name = kind.replace("_", "-")
        if kind == "file":
            path = tmp / "events.ndjson"
            entry: dict[str, Any] = {"type": "file", "format": "ecs", "path": str(path)}
            entry["fsync"] = True
            out.append(Arrivals(kind, {"name": name, **entry}, _Lines(path, _ecs_id)))
        elif kind == "http":
            http = HttpReceiver()
            url = stack.enter_context(served(http))
            start = [0]

            async def http_ids(http: HttpReceiver = http, start: list[int] = start) -> Any:
                taken = _taken(http.requests, start)
                ok = [r for r in taken if 200 <= r.status < 300]
                return _stamped([_ecs_id(line) for r in ok for line in r.body.splitlines()])

            entry = {"type": "http", "url": f"{url}/events"}
            out.append(Arrivals(kind, {"name": name, **entry}, http_ids))
        elif kind.startswith("splunk_hec"):
            acks = kind != "splunk_hec"
            hec = FakeHec(ack=acks)
            url = stack.enter_context(served(hec))
            start = [0]

            async def hec_ids(hec: FakeHec = hec, start: list[int] = start) -> Any:
                return _stamped([_ecs_id(e.get("event")) for e in _taken(hec.events, start)])

            entry = {"type": "splunk_hec", "url": url, "token": next(iter(hec.tokens))}
            entry |= {"gzip": True, "acknowledgement": {"enabled": acks}}
            if kind == "splunk_hec_acks_fast":
                entry["acknowledgement"]["poll_interval_seconds"] = 0.25
            out.append(Arrivals(kind, {"name": name, **entry}, hec_ids))
        elif kind == "elasticsearch":
            es = FakeElasticsearch()
            url = stack.enter_context(served(es))
            known: set[tuple[str, str]] = set()

            async def es_ids(
                es: FakeElasticsearch = es, known: set[tuple[str, str]] = known
            ) -> Any:
                # dict.copy() is one step under the GIL; the fake's thread writes meanwhile.
                new = [
                    (index, doc_id, doc)
                    for index, docs in es.documents.copy().items()
                    for doc_id, doc in docs.copy().items()
                    if (index, doc_id) not in known
                ]
                known.update((index, doc_id) for index, doc_id, _ in new)
                return _stamped([_ecs_id(doc) for _, _, doc in new])

            out.append(Arrivals(kind, {"name": name, "type": "elasticsearch", "url": url}, es_ids))
        elif kind == "sentinel":
            azure = FakeAzure()
            url = stack.enter_context(served(azure))
            start = [0]

            async def rows(azure: FakeAzure = azure, start: list[int] = start) -> Any:
                return _stamped([_ecs_id(r.get("Event")) for r in _taken(azure.rows, start)])

            out.append(Arrivals(kind, {"name": name, **sentinel_entry(azure, url)}, rows))
        elif kind == "syslog":
            rsyslog = stack.enter_context(Rsyslog(tmp / "rsyslog"))
            entry = {"type": "syslog", "host": "127.0.0.1", "port": rsyslog.tcp_port}
            lines = _Lines(rsyslog.output("tcp"), _cef_id)
            out.append(Arrivals(kind, {"name": name, **entry}, lines))
        elif kind == "kafka":
            topic = f"{prefix}.out"
            times = _TopicTimes(bootstrap, topic)
            entry = {"type": "kafka", "topic": topic}
            out.append(Arrivals(kind, {"name": name, **entry}, times))
        else:
            raise ValueError(f"no receiver for sink type {kind!r}")
    return out


def _histograms(url: str) -> dict[str, dict[float, float]]:
    """The sinks' end-to-end histogram buckets by sink name."""
    out: dict[str, dict[float, float]] = {}
    for series, value in samples_matching(url, "aha_siem_sink_end_to_end_seconds_bucket").items():
        sink = re.search(r'sink="([^"]+)"', series)
        bound = _BUCKET.search(series)
        if sink and bound:
            out.setdefault(sink.group(1), {})[float(bound.group(1))] = value
    return out


async def _create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in names])
    finally:
        await admin.close()


async def measure(
    bootstrap: str,
    prefix: str,
    tmp: Path,
    *,
    kinds: list[str],
    rate: float,
    seconds: float,
    warmup: float,
    batch_seconds: float | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One run: every sink of `kinds` on one worker under `rate` webhooks/s; per sink the
    latencies of the webhooks accepted in the measured window."""
    await _create_topics(bootstrap, [f"{prefix}.raw", f"{prefix}.events", f"{prefix}.out"])
    with contextlib.ExitStack() as stack:
        dests = receivers(kinds, tmp, bootstrap, prefix, stack)
        entries = [dict(d.entry) for d in dests]
        if batch_seconds is not None:
            for entry in entries:
                entry["batch_max_seconds"] = batch_seconds
        made = pipeline(tmp, bootstrap, prefix, entries, {"mode": "realtime"})
        base = Arrivals("events", {}, _TopicTimes(bootstrap, f"{prefix}.events"))
        topics = [d.poll for d in [*dests, base] if isinstance(d.poll, _TopicTimes)]
        for times in topics:
            await times.start()
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                for dest in [*dests, base]:
                    await dest.update()
                await asyncio.sleep(POLL_SECONDS)

        poller: asyncio.Task[None] | None = None
        try:
            began = time.monotonic()
            await asyncio.to_thread(made.start)
            log(f"latency: pipeline up in {time.monotonic() - began:.1f} s with {len(dests)} sinks")
            await asyncio.sleep(2)
            idle = {name: memory_kib(pid) for name, pid in made.pids().items()}
            poller = asyncio.create_task(poll())
            with Load(made.webhook_url, rate) as load:
                load.start()
                await asyncio.sleep(warmup)
                warm = set(load.answers)
                hist_before = _histograms(made.metrics_url)
                opened = time.monotonic()
                await asyncio.sleep(seconds)
                await asyncio.to_thread(load.stop)
                window = time.monotonic() - opened
                accepted = {i: a for i, a in load.accepted().items() if i not in warm}
                outcomes = load.outcomes()
            deadline = time.monotonic() + DRAIN_SECONDS
            while time.monotonic() < deadline:
                if all(accepted.keys() <= d.seen.keys() for d in [*dests, base]):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2 * POLL_SECONDS)
            hist_after = _histograms(made.metrics_url)
            loaded = {name: memory_kib(pid) for name, pid in made.pids().items()}
        finally:
            stop.set()
            try:
                if poller is not None:
                    await poller
            finally:
                await asyncio.to_thread(made.stop)
                for times in topics:
                    await times.stop()
    log(
        "latency: RSS MiB (RssAnon) idle -> after the window: "
        + ", ".join(
            f"{name} {mib((m or {}).get('VmRSS'))} ({mib((m or {}).get('RssAnon'))}) -> "
            f"{mib((loaded.get(name) or {}).get('VmRSS'))}"
            for name, m in idle.items()
        )
    )
    results: dict[str, Any] = {}
    for dest in [base, *dests]:
        delays = [dest.seen[i] - a.answered_at for i, a in accepted.items() if i in dest.seen]
        name = dest.entry.get("name", "")
        results[dest.kind] = {
            **percentiles(delays),
            "accepted": len(accepted),
            "delivered": len(delays),
            "duplicates": dest.extra,
            "histogram": histogram_quantiles(hist_before.get(name, {}), hist_after.get(name, {})),
        }
    log(
        f"latency: {len(accepted)} webhooks accepted in {window:.0f} s ({outcomes}); "
        + ", ".join(
            f"{k} p50 {r['p50'] * 1e3:.0f} / p99 {r['p99'] * 1e3:.0f} ms "
            f"({r['delivered']}/{r['accepted']})"
            for k, r in results.items()
        )
    )
    return {
        "window": window,
        "accepted": len(accepted),
        "sinks": results,
        "rss_idle": idle,
        "rss_after": loaded,
    }


def skip_reasons(kinds: list[str]) -> dict[str, str]:
    """Sink kinds that cannot run on this machine, with why."""
    if "syslog" in kinds and rsyslogd_path() is None:
        return {
            "syslog": "skipped: rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls)"
        }
    return {}


def _rows(result: dict[str, Any], label: str) -> list[Row]:
    out: list[Row] = []
    for kind, r in result["sinks"].items():
        hist = r["histogram"]
        note = f"max {r['max'] * 1e3:.0f} ms; delivered {r['delivered']}/{r['accepted']}"
        if r["duplicates"]:
            note += f", {r['duplicates']} duplicates"
        idle = result["rss_idle"].get(f"worker/sink {kind.replace('_', '-')}") or {}
        if idle:
            note += f"; process RSS idle {mib(idle.get('VmRSS'))} MiB"
        if kind != "events" and hist["count"]:
            note += (
                f"; sink histogram: p50 <= {hist['p50_le']:g} s, p99 <= {hist['p99_le']:g} s, "
                f"{hist['under_1s']:.1%} <= 1 s"
            )
        out.append(
            {
                "section": "latency",
                "variant": (BASELINE if kind == "events" else KINDS[kind]) + label,
                "metric": "p99 ms",
                "median": r["p99"] * 1e3,
                "p50_ms": r["p50"] * 1e3,
                "p99_ms": r["p99"] * 1e3,
                "max_ms": r["max"] * 1e3,
                "delivered": r["delivered"],
                "accepted": r["accepted"],
                "note": note,
                "rounds": [r["p99"] * 1e3],
                "baseline": kind == "events" and not label,
            }
        )
    return out


def bench_latency(
    bootstrap: str,
    prefix: str,
    tmp: Path,
    *,
    kinds: list[str],
    rate: float,
    seconds: float,
    warmup: float,
    batch_seconds: list[float | None],
    log: Callable[[str], None],
) -> list[Row]:
    """A run per batching setting (None: every sink at its default); rows per sink, p99 in the
    median column, its ratio to the events topic's p99 of the run at the defaults."""
    tmp = tmp.resolve()  # rsyslogd's config needs absolute paths
    skipped = skip_reasons(kinds)
    kinds = [k for k in kinds if k not in skipped]
    rows: list[Row] = []
    for number, batching in enumerate(batch_seconds):
        label = "" if batching is None else f", batch_max_seconds {batching:g}"
        log(f"latency: {rate:g} webhooks/s, {warmup:g} s warm-up, {seconds:g} s measured{label}")
        (tmp / f"latency{number}").mkdir(parents=True)
        result = asyncio.run(
            measure(
                bootstrap,
                f"{prefix}.l{number}",
                tmp / f"latency{number}",
                kinds=kinds,
                rate=rate,
                seconds=seconds,
                warmup=warmup,
                batch_seconds=batching,
                log=log,
            )
        )
        rows += _rows(result, label)
    if not any(r["baseline"] for r in rows) and rows:
        rows[0]["baseline"] = True
    for kind, reason in skipped.items():
        rows.append(
            {
                "section": "latency",
                "variant": KINDS[kind],
                "metric": "p99 ms",
                "median": float("nan"),
                "note": reason,
                "rounds": [],
                "baseline": False,
            }
        )
    return rows
