"""Sink benchmark: each sink's own process against a receiver on this machine, beside a raw read.

One events topic (8 partitions) is filled with N normalized ECS events, keyed and with the
headers the normalize agent writes. Every run then reads all of it in a fresh consumer group:

- the baseline is an aiokafka consumer in the bench process that commits each batch and does
  nothing else (the rate at which a consumer group can read and commit this topic);
- a bare Faust agent (`bench/faust_agent.py`, the sink apps' Faust settings) that consumes and
  acks, in a process of its own: the ceiling of a Faust-based sink, which every sink row is also
  compared with;
- every sink runs as `python -m forwarder sink NAME --config <tmp yaml>`, the process an operator
  runs, against its receiver: a fake served in the bench process (`tests/fakes`), a file, a real
  rsyslogd, or another topic on the same broker.

The receiver is polled every few milliseconds; the rates are N over the time from the process
start, and the events after the first delivery over the time from that delivery, to the moment
the receiver holds all N events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import median, worker
from tests.fakes.elasticsearch import FakeElasticsearch
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.sentinel import FakeAzure
from tests.fakes.server import AsgiServer
from tests.fakes.splunk_hec import FakeHec
from tests.receivers.rsyslog import Rsyslog, rsyslogd_path

BASELINE = "aiokafka consumer, commit per batch (raw read)"
BARE_FAUST = "bare Faust agent: consume and ack"
"""The ceiling of a Faust-based sink: every sink row says its ratio to this one too."""
SINKS: dict[str, str] = {
    "file": "file sink (ecs NDJSON, fsync) -> local file",
    "http": "http sink (ecs NDJSON) -> fake receiver",
    "splunk_hec": "splunk_hec sink (gzip, acks off) -> fake HEC",
    "elasticsearch": "elasticsearch sink (_bulk create) -> fake ES",
    "sentinel": "sentinel sink (gzip) -> fake Entra + ingestion",
    "syslog": "syslog sink (tcp, syslog-cef) -> rsyslogd",
    "kafka": "kafka sink (idempotent) -> topic, same broker",
}
POLL_SECONDS = 0.01
PROFILE_SECONDS = 4
DEADLINE_SECONDS = 300.0
Row = dict[str, Any]


def events(n: int) -> list[worker.Record]:
    """N distinct normalized ECS events with the key and headers the normalize agent writes."""
    out: list[worker.Record] = []
    for key, value, headers in worker.raw_records(n):
        event, carried = worker.normalized(value, headers)
        out.append((key, event, carried))
    return out


async def fill(bootstrap: str, topics: list[str], rows: list[worker.Record]) -> None:
    """Create `topics` (8 partitions) and produce `rows` to the first one."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, worker.PARTITIONS, 1) for t in topics])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topics[0], v, k, headers=h) for k, v, h in rows]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU seconds of a process so far (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        # Fields after the command name: state is field 3, utime 14, stime 15 (proc(5)).
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Receiver:
    """A sink's destination: the sink's config entry and how many events it holds so far."""

    entry: dict[str, Any]
    count: Callable[[], Awaitable[int]]
    pid: int | None = None
    """A receiver process of its own (rsyslogd), whose CPU is reported."""


class _LineCounter:
    """Complete lines in a file that only grows, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    async def __call__(self) -> int:
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """A fake receiver (an ASGI app) served on 127.0.0.1 while the block runs; its URL."""
    with AsgiServer(app) as server:
        yield server.url


def sentinel_entry(azure: FakeAzure, url: str) -> dict[str, Any]:
    """A Sentinel sink's settings for the fake Entra and Logs Ingestion API served at `url`."""
    return {
        "type": "sentinel",
        "dce_endpoint": url,
        "dcr_immutable_id": azure.dcr_immutable_id,
        "tenant_id": azure.tenant_id,
        "client_id": azure.client_id,
        "client_secret": azure.client_secret,
        "token_url": url + azure.token_path,
    }


@contextlib.asynccontextmanager
async def receiver(kind: str, tmp: Path, bootstrap: str, out_topic: str) -> AsyncIterator[Receiver]:
    """Start the receiver of a sink type, fresh and empty."""
    if kind == "faust":
        counted = tmp / "count"

        async def count_seen() -> int:
            try:
                return int(counted.read_bytes() or b"0")
            except FileNotFoundError:
                return 0

        yield Receiver({"type": "file", "path": str(tmp / "unused.ndjson")}, count_seen)
    elif kind == "file":
        path = tmp / "events.ndjson"
        entry = {"type": "file", "format": "ecs", "path": str(path), "fsync": True}
        yield Receiver(entry, _LineCounter(path))
    elif kind == "http":
        http = HttpReceiver()
        seen, lines = 0, 0

        async def count_http() -> int:
            nonlocal seen, lines
            taken = http.requests[seen:]
            seen += len(taken)
            lines += sum(r.body.count(b"\n") for r in taken if 200 <= r.status < 300)
            return lines

        with served(http) as url:
            yield Receiver({"type": "http", "url": f"{url}/events"}, count_http)
    elif kind == "splunk_hec":
        hec = FakeHec()
        token = next(iter(hec.tokens))

        async def count_hec() -> int:
            return len(hec.events)

        with served(hec) as url:
            entry = {"type": "splunk_hec", "url": url, "token": token, "gzip": True}
            yield Receiver({**entry, "acknowledgement": {"enabled": False}}, count_hec)
    elif kind == "elasticsearch":
        es = FakeElasticsearch()

        async def count_es() -> int:
            return sum(len(docs) for docs in es.documents.values())

        with served(es) as url:
            yield Receiver({"type": "elasticsearch", "url": url}, count_es)
    elif kind == "sentinel":
        azure = FakeAzure()

        async def count_rows() -> int:
            return len(azure.rows)

        with served(azure) as url:
            yield Receiver(sentinel_entry(azure, url), count_rows)
    elif kind == "syslog":
        with Rsyslog(tmp / "rsyslog") as rsyslog:
            entry = {"type": "syslog", "host": "127.0.0.1", "port": rsyslog.tcp_port}
            pid = int(rsyslog.pid_file.read_text().strip()) if rsyslog.pid_file.exists() else None
            yield Receiver(entry, _LineCounter(rsyslog.output("tcp")), pid)
    elif kind == "kafka":
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        tps = [TopicPartition(out_topic, p) for p in range(worker.PARTITIONS)]

        async def count_topic() -> int:
            return sum((await consumer.end_offsets(tps)).values())

        try:
            yield Receiver({"type": "kafka", "topic": out_topic}, count_topic)
        finally:
            await consumer.stop()
    else:
        raise ValueError(f"no receiver for sink type {kind!r}")


def skip_reason(kind: str) -> str | None:
    """Why a sink type cannot be measured on this machine, or None."""
    if kind == "syslog":
        binary = rsyslogd_path()
        if binary is None or not os.access(binary, os.X_OK):
            return "skipped: rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls)"
    return None


async def read_loop(bootstrap: str, topic: str, group: str, n: int) -> dict[str, float]:
    """Baseline: read `topic` in a fresh group, committing each batch, until N records."""
    started = time.time()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    done, first, first_count, first_cpu = 0, 0.0, 0, 0.0
    try:
        while done < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            got = sum(len(messages) for messages in batches.values())
            if not got:
                continue
            await consumer.commit()
            if not done:
                first, first_count, first_cpu = time.time(), got, time.process_time()
            done += got
    finally:
        end, end_cpu = time.time(), time.process_time()
        await consumer.stop()
    return _rates(n, started, first, first_count, end) | {
        "bench_cpu": (end_cpu - first_cpu) / max(end - first, 1e-3)
    }


def _rates(n: int, started: float, first: float, first_count: int, end: float) -> dict[str, float]:
    # When the first batch held everything there is no delivery span to measure a rate over.
    steady = (n - first_count) / max(end - first, 1e-3) if n > first_count else float("nan")
    return {
        "events_per_s": steady,
        "events_per_s_with_startup": n / max(end - started, 1e-3),
        "startup_s": first - started,
    }


def _profile(pid: int, name: str, work: Path) -> subprocess.Popen[bytes] | None:
    """With BENCH_PROFILE_DIR set, py-spy samples the process from its first delivery on."""
    folder = os.environ.get("BENCH_PROFILE_DIR")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    out = Path(folder) / f"{name}.txt"
    cmd = [str(py_spy), "record", "--pid", str(pid), "--duration", str(PROFILE_SECONDS)]
    cmd += ["--rate", "200", "--format", "raw", "--output", str(out)]
    return _spawn(cmd, work / "py-spy.log", dict(os.environ))


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


async def run_sink(
    kind: str, bootstrap: str, topic: str, prefix: str, n: int, tmp: Path
) -> dict[str, float]:
    """One sink process over the events topic, from its start until its receiver holds N."""
    app_id, out_topic = f"{prefix}.app", f"{prefix}.out"
    work = tmp / app_id
    work.mkdir(parents=True)
    if kind == "kafka":
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(out_topic, worker.PARTITIONS, 1)])
        finally:
            await admin.close()
    async with receiver(kind, work, bootstrap, out_topic) as dest:
        tree = {
            "log_level": "warning",
            "kafka": {"bootstrap_servers": bootstrap},
            "topics": {
                "raw": f"{prefix}.raw",
                "events": topic,
                "invalid": f"{prefix}.invalid",
                "dlq_prefix": f"{prefix}.dlq.",
                "partitions": worker.PARTITIONS,
            },
            # A fresh app id is a fresh consumer group: every run reads the topic from the start.
            "worker": {"app_id": app_id, "data_dir": str(work / "data"), "metrics_port": 0},
            "sinks": [{"name": "bench", **dest.entry}],
        }
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(tree))
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
        env = {k: v for k, v in env.items() if not k.startswith("AHA_SIEM_")}
        log = work / "sink.log"
        cmd = [sys.executable, "-m", "forwarder", "sink", "bench", "--config", str(config)]
        if kind == "faust":
            cmd = [sys.executable, "-m", "bench.faust_agent", str(config), str(work / "count")]
        started = time.time()
        proc = _spawn(cmd, log, env)
        spy: subprocess.Popen[bytes] | None = None
        try:
            first, first_count = 0.0, 0
            cpu: dict[str, float] = {}
            while True:
                held = await dest.count()
                now = time.time()
                if held and not first:
                    first, first_count = now, held
                    spy = _profile(proc.pid, work.name, log.parent)
                    cpu = {
                        "sink": _cpu_seconds(proc.pid),
                        "bench": time.process_time(),
                        "rsyslogd": _cpu_seconds(dest.pid),
                    }
                if held >= n:
                    break
                if proc.poll() is not None or now > started + DEADLINE_SECONDS:
                    tail = log.read_text(errors="replace").splitlines()[-5:]
                    raise RuntimeError(
                        f"{kind} sink stopped or stalled at {held}/{n}; see {log}:\n"
                        + "\n".join(tail)
                    )
                await asyncio.sleep(POLL_SECONDS)
            span = max(now - first, 1e-3)
            usage = {
                "sink_cpu": (_cpu_seconds(proc.pid) - cpu["sink"]) / span,
                "bench_cpu": (time.process_time() - cpu["bench"]) / span,
            }
            if dest.pid is not None:
                usage["rsyslogd_cpu"] = (_cpu_seconds(dest.pid) - cpu["rsyslogd"]) / span
            if held > n:
                raise RuntimeError(f"{kind}: receiver holds {held} events, expected {n}")
        finally:
            if spy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(PROFILE_SECONDS + 30)
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return _rates(n, started, first, first_count, now) | usage


def _note(results: list[dict[str, float]]) -> str:
    """Median CPU use over the delivery span, in cores."""
    names = {"sink_cpu": "sink", "rsyslogd_cpu": "rsyslogd", "bench_cpu": "bench"}
    parts = [
        f"{label} {median([r[key] for r in results]):.2f}"
        for key, label in names.items()
        if results and key in results[0]
    ]
    return ("CPU cores: " + ", ".join(parts)) if parts else ""


def bench_sinks(
    bootstrap: str,
    prefix: str,
    tmp: Path,
    *,
    n: int,
    rounds: int,
    kinds: list[str],
    log: Callable[[str], None],
) -> list[Row]:
    """The baseline and every sink in `kinds` over the same N events, round by round."""
    topic = f"{prefix}.sinks.events"
    asyncio.run(fill(bootstrap, [topic], events(n)))
    names = ["baseline", "faust", *kinds]
    skipped = {kind: reason for kind in kinds if (reason := skip_reason(kind))}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            if name in skipped:
                continue
            run = f"{prefix}.s{round_no}.{name}"
            try:
                if name == "baseline":
                    result = asyncio.run(read_loop(bootstrap, topic, f"{run}.group", n))
                else:
                    result = asyncio.run(run_sink(name, bootstrap, topic, run, n, tmp))
            except RuntimeError as error:
                if name != "syslog" or not str(error).startswith("rsyslogd"):
                    raise
                # rsyslogd is installed but would not start (e.g. without rsyslog-gnutls).
                skipped[name] = f"skipped: {str(error).splitlines()[0]}"
                log(f"sinks: {name} {skipped[name]}")
                continue
            log(
                f"sinks round {round_no + 1} {name}: {result['events_per_s']:.0f} ev/s, "
                f"{result['events_per_s_with_startup']:.0f} ev/s with start-up "
                f"({result['startup_s']:.1f} s); {_note([result])}"
            )
            runs[name].append(result)
    out: list[Row] = []
    ceiling = median([r["events_per_s"] for r in runs["faust"]]) if runs["faust"] else None
    for name, results in runs.items():
        for metric, key in (
            ("ev/s", "events_per_s"),
            ("ev/s incl. start-up", "events_per_s_with_startup"),
        ):
            values = [r[key] for r in results]
            note = skipped.get(name) or (_note(results) if key == "events_per_s" else "")
            if ceiling and key == "events_per_s" and name not in ("baseline", "faust") and values:
                note = f"{median(values) / ceiling:.2f}x bare Faust agent; {note}"
            out.append(
                {
                    "section": "sinks",
                    "variant": {"baseline": BASELINE, "faust": BARE_FAUST}.get(name) or SINKS[name],
                    "metric": metric,
                    "median": median(values),
                    "rounds": values,
                    "startup_s": median([r["startup_s"] for r in results]),
                    "note": note,
                    "baseline": name == "baseline",
                }
            )
    return out
