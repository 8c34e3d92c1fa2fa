"""Memory of the worker and of each sink process over a long run of distinct records.

`python -m bench.memory` (`make bench-memory`): N distinct raw records (default 1,000,000; each
with its own audit id and record id, so realtime dedupe keeps a state for every one) are produced
to a fresh raw topic while the real worker (`aha-siem worker`, realtime dedupe, one process per
sink) consumes them and its sinks deliver them. The resident memory of the worker and of every
sink process (VmRSS and RssAnon from /proc/<pid>/status) is sampled when idle after start, when
each has handled 10 %, 25 %, 50 % and 100 % of N, and again after the dedupe retention has passed
over everything. The retention (`dedupe.retention_seconds`, 7 days by default) is set short for
the run so that expiry applies within it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import sample_bodies
from bench.stack import memory_kib, mib, pipeline
from bench.worker import iter_raw_records
from forwarder import devbroker
from tests.chaos.harness import samples_matching
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.server import AsgiServer

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".run" / "bench-memory"
STATE_DIR = ROOT / ".run" / "bench-memory-kafka"
PARTITIONS = 8
SHARES = (0.1, 0.25, 0.5, 1.0)


def _log(message: str) -> None:
    print(f"[bench.memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def produce(bootstrap: str, topic: str, n: int, *, chunk: int = 20_000) -> float:
    """Produce the run's N raw records to `topic` as fast as the broker takes them; seconds."""
    bodies = [orjson.loads(body) for body in sample_bodies()]
    base = int(time.time()) << 32
    began = time.monotonic()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        for start in range(0, n, chunk):
            rows = iter_raw_records(start, min(chunk, n - start), base, bodies)
            futures = [await producer.send(topic, v, k, headers=h) for k, v, h in rows]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - began


def total(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's series (with these labels) in a Prometheus exposition."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        value
        for series, value in samples_matching(url, name).items()
        if series.split("{")[0] == name and all(w in series for w in wanted)
    )


async def _topics(bootstrap: str, create: list[str], delete_prefix: str | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if create:
            await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in create])
        if delete_prefix:
            names = [t for t in await admin.list_topics() if t.startswith(delete_prefix)]
            if names:
                await admin.delete_topics(names)
    finally:
        await admin.close()


class _Http:
    """The generic HTTP fake, emptied as the run goes (the sink's own counter says what it
    delivered; a million kept events would only grow the bench process)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.app = HttpReceiver()
        self.url = stack.enter_context(AsgiServer(self.app)).url

    def trim(self) -> None:
        """Forget what was received."""
        self.app.requests.clear()


async def run(args: argparse.Namespace, bootstrap: str, prefix: str, work: Path) -> dict[str, Any]:
    """The run: worker and sinks up and idle, then N records, sampled as they go through."""
    n = args.events
    marks = [round(share * n) for share in SHARES]
    raw = f"{prefix}.raw"
    await _topics(bootstrap, [raw, f"{prefix}.events"])
    with contextlib.ExitStack() as stack:
        sinks: list[dict[str, Any]] = []
        http: _Http | None = None
        for kind in args.sinks:
            if kind == "file":
                path = work / "events.ndjson"
                sinks.append({"type": "file", "name": "file", "path": str(path), "fsync": True})
            elif kind == "http":
                http = _Http(stack)
                sinks.append({"type": "http", "name": "http", "url": f"{http.url}/events"})
        dedupe = {
            "mode": "realtime",
            "retention_seconds": args.retention_seconds,
            "sweep_interval_seconds": args.sweep_seconds,
        }
        made = pipeline(work, bootstrap, prefix, sinks, dedupe)
        samples: list[dict[str, Any]] = []
        at_mark: dict[str, dict[str, Any]] = {}
        try:
            await asyncio.to_thread(made.start_worker)
            await asyncio.sleep(args.idle_seconds)
            pids = made.pids()
            names = ["worker", *(f"worker/sink {s['name']}" for s in sinks)]
            _log(f"worker and sinks up and idle: {pids}")
            began = time.monotonic()

            def sample(label: str) -> dict[str, Any]:
                url = made.metrics_url
                counts = {"worker": total(url, "aha_siem_worker_events_out_total")}
                for s in sinks:
                    counts[f"worker/sink {s['name']}"] = total(
                        url, "aha_siem_sink_events_sent_total", sink=s["name"]
                    )
                row = {
                    "label": label,
                    "seconds": round(time.monotonic() - began, 1),
                    "counts": counts,
                    "dedupe_records": total(url, "aha_siem_dedupe_records"),
                    "dedupe_expired": total(url, "aha_siem_dedupe_expired_total"),
                    "memory": {name: memory_kib(made.pids().get(name)) for name in names},
                    "pids": made.pids(),
                }
                samples.append(row)
                return row

            at_mark["start"] = sample("start (idle)")
            producer = asyncio.create_task(produce(bootstrap, raw, n))
            deadline = time.monotonic() + args.timeout_minutes * 60
            last_log = 0.0
            while True:
                row = sample("")
                for name in names:
                    for mark in marks:
                        key = f"{name}@{mark}"
                        if row["counts"][name] >= mark and key not in at_mark:
                            at_mark[key] = row
                if http is not None:
                    http.trim()
                if all(row["counts"][name] >= n for name in names):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not done in {args.timeout_minutes} min: {row['counts']}")
                if producer.done() and producer.exception() is not None:
                    raise RuntimeError("producing failed") from producer.exception()
                if time.monotonic() - last_log > 30:
                    last_log = time.monotonic()
                    _log(
                        f"{row['seconds']:.0f} s: {row['counts']}, dedupe records "
                        f"{row['dedupe_records']:.0f}, expired {row['dedupe_expired']:.0f}; "
                        + ", ".join(
                            f"{k} {mib((v or {}).get('VmRSS'))} MiB"
                            for k, v in row["memory"].items()
                        )
                    )
                await asyncio.sleep(args.sample_seconds)
            produced_in = await producer
            _log(
                f"all {n} delivered at {time.monotonic() - began:.0f} s (produced in {produced_in:.0f} s)"
            )
            # Every state goes idle now: after the retention and a sweep or two it is expired.
            settle = args.retention_seconds + 2 * args.sweep_seconds + 10
            _log(f"waiting {settle:.0f} s for the retention to expire the last states")
            end = time.monotonic() + settle
            while time.monotonic() < end:
                sample("")
                await asyncio.sleep(args.sample_seconds)
            at_mark["expired"] = sample("after the retention (idle)")
        finally:
            await asyncio.to_thread(made.stop)
    with (work / "samples.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "name", "count", "VmRSS_kib", "RssAnon_kib", "dedupe_records"])
        for row in samples:
            for name, memory in row["memory"].items():
                writer.writerow(
                    [
                        row["seconds"],
                        name,
                        row["counts"].get(name),
                        (memory or {}).get("VmRSS"),
                        (memory or {}).get("RssAnon"),
                        row["dedupe_records"],
                    ]
                )
    return {"marks": marks, "names": names, "at": at_mark, "produced_in": produced_in}


def report(result: dict[str, Any], n: int) -> str:
    """The markdown table: VmRSS / RssAnon in MiB per process at each point."""
    marks, at = result["marks"], result["at"]
    head = ["process", "start (idle)", *(f"{m:,}" for m in marks), "after retention (idle)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in result["names"]:
        cells = [name.replace("worker/", "")]
        for key in ["start", *(f"{name}@{m}" for m in marks), "expired"]:
            row = at.get(key)
            memory = (row or {}).get("memory", {}).get(name) or {}
            cells.append(f"{mib(memory.get('VmRSS'))} / {mib(memory.get('RssAnon'))}")
        lines.append("| " + " | ".join(cells) + " |")
    states = ["dedupe states (gauge, last sweep)"]
    seconds = ["seconds since the first record"]
    for key in ["start", *(f"worker@{m}" for m in marks), "expired"]:
        row = at.get(key) or {}
        states.append(f"{row.get('dedupe_records', float('nan')):,.0f}")
        seconds.append(f"{row.get('seconds', float('nan')):.0f}")
    lines.append("| " + " | ".join(seconds) + " |")
    lines.append("| " + " | ".join(states) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, get a broker, run, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sinks", default="file,http", help="comma-separated: file, http")
    parser.add_argument(
        "--retention-seconds",
        type=float,
        default=120.0,
        help="dedupe.retention_seconds for the run (7 days by default in a deployment)",
    )
    parser.add_argument("--sweep-seconds", type=float, default=30.0, help="dedupe sweep interval")
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="idle before the start sample"
    )
    parser.add_argument("--sample-seconds", type=float, default=2.0)
    parser.add_argument("--timeout-minutes", type=float, default=45.0)
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument("--json", type=Path, help="also write the samples as JSON here")
    args = parser.parse_args(argv)
    args.sinks = [kind.strip() for kind in args.sinks.split(",") if kind.strip()]
    if unknown := [kind for kind in args.sinks if kind not in ("file", "http")]:
        parser.error(f"--sinks: unknown {', '.join(unknown)}; known: file, http")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    load_before = os.getloadavg()[0]
    external = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if external:
        bootstrap = external
    else:
        devbroker.stop(STATE_DIR)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        bootstrap = devbroker.start(STATE_DIR, port=devbroker.free_port(), kind="kafka").bootstrap
    prefix = f"bench-mem-{int(time.time())}"
    work = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        result = asyncio.run(run(args, bootstrap, prefix, work))
    finally:
        if external:
            with contextlib.suppress(Exception):
                asyncio.run(_topics(bootstrap, [], delete_prefix=prefix))
        else:
            devbroker.stop(STATE_DIR)
            shutil.rmtree(STATE_DIR / "data", ignore_errors=True)
        with contextlib.suppress(OSError):
            (work / "events.ndjson").unlink()  # a GB or more of events
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; niceness {os.nice(0)}\n"
        f"broker: {bootstrap}; {args.events} distinct raw records produced in "
        f"{result['produced_in']:.0f} s; realtime dedupe, retention {args.retention_seconds:g} s, "
        f"sweep every {args.sweep_seconds:g} s; sinks {', '.join(args.sinks)}\n"
        "VmRSS / RssAnon in MiB, each process sampled when it had handled that many events\n"
    )
    print(report(result, args.events))
    if args.json:
        args.json.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
