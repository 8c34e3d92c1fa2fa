"""The chaos harness: a broker of its own, the real processes, a steady webhook load, a checker.

- `Broker`: Apache Kafka through `aha-siem broker start/stop` in a state folder of its own, which
  a scenario may stop, start or SIGKILL; optionally with a second listener that advertises a
  `ChaosProxy`'s port, so the ingest's connections (bootstrap and every later one) go through the
  proxy while the worker talks to the broker directly.
- `Pipeline`: `aha-siem ingest` and `aha-siem worker` (which runs one process per sink) with
  topics of their own and a file sink, from the integration tests' config builder.
- `Load`: N webhooks a second over httpx, each a sample body with a fresh audit id, recording
  every answer.
- `Delivered`: the file sink's lines, read as they arrive: which ids, how often, first seen when.
- `check_no_loss`: every id answered 202 is in the file sink within a stated bound; duplicates
  are counted and reported (`REPORTS`, printed at the end of the pytest run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

import forwarder
from forwarder import devbroker
from forwarder.config import Config, parse
from tests.chaos.proxy import ChaosProxy
from tests.integration.conftest import (
    stack_config,
    stop_processes,
    wait_http_ok,
    wait_worker_settled,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED_SAMPLES = ROOT.parent / "shared" / "aha" / "samples"
PACKAGED_SAMPLES = Path(forwarder.__file__).parent / "samples"


def log(message: str) -> None:
    """A timestamped progress line (shown with `pytest -s` and in the captured output)."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def env_without_bootstrap() -> dict[str, str]:
    """The environment for our processes: KAFKA_BOOTSTRAP would override their config."""
    return {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP"}


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return "\n".join(text[-lines:])


def rss_kib(pid: int | None) -> int | None:
    """Resident set size of a process in KiB (Linux), None when it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- the broker -------------------------------------------------------------------------


class Broker:
    """Apache Kafka of one test module, through the CLI a developer would use."""

    def __init__(self, state_dir: Path, *, proxied: bool = False) -> None:
        self.state_dir = state_dir
        self.port = devbroker.free_port(pair=True)
        self.proxy: ChaosProxy | None = None
        self._proxied_port: int | None = None
        if proxied:
            while True:
                listen = devbroker.free_port(pair=False)
                if listen not in (self.port, self.port + 1):
                    break
            self._proxied_port = listen
            # The proxy listens first: the broker advertises its port on the proxied listener.
            self.proxy = ChaosProxy(("127.0.0.1", listen))
            self.proxy.start()

    @property
    def bootstrap(self) -> str:
        """The direct address (the worker's, the checker's)."""
        return f"127.0.0.1:{self.port}"

    @property
    def proxied_bootstrap(self) -> str:
        """The address through the proxy (the ingest's)."""
        assert self.proxy is not None, "broker started without a proxied listener"
        return self.proxy.address

    def start(self, timeout: float = 120) -> float:
        """Start (or start again on the same ports and data); returns the seconds it took."""
        command = [sys.executable, "-m", "forwarder", "broker", "start"]
        command += ["--state-dir", str(self.state_dir), "--port", str(self.port), "--kind", "kafka"]
        if self.proxy is not None:
            command += ["--proxied-listener", f"{self._proxied_port}:{self.proxy.port}"]
        began = time.monotonic()
        done = subprocess.run(
            command, capture_output=True, text=True, env=env_without_bootstrap(), timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"broker start failed: {done.stdout}{done.stderr}")
        return time.monotonic() - began

    def stop(self) -> None:
        """`aha-siem broker stop`: SIGTERM, a clean shutdown."""
        subprocess.run(
            [
                sys.executable,
                "-m",
                "forwarder",
                "broker",
                "stop",
                "--state-dir",
                str(self.state_dir),
            ],
            capture_output=True,
            env=env_without_bootstrap(),
            timeout=90,
        )

    @property
    def pid(self) -> int | None:
        """The broker's pid as the dev broker recorded it (`broker.json`)."""
        try:
            return int(json.loads((self.state_dir / devbroker.STATE_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def kill(self) -> None:
        """SIGKILL the broker process: no shutdown, produces in flight lost on the wire."""
        pid = self.pid
        assert pid is not None, "no broker pid recorded"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            # Not our child (a new session of the CLI's): gone once /proc forgets it.
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's server.log."""
        return tail(self.state_dir / "kafka" / "server.log", lines)

    def close(self) -> None:
        """Stop the broker and the proxy."""
        self.stop()
        if self.proxy is not None:
            self.proxy.close()


# -- webhook bodies -----------------------------------------------------------------------


class Bodies:
    """Sample webhook bodies with fresh ids: every call is a new audit of a new record."""

    def __init__(self) -> None:
        folder = SHARED_SAMPLES if SHARED_SAMPLES.is_dir() else PACKAGED_SAMPLES
        self.samples = [orjson.loads(path.read_bytes()) for path in sorted(folder.glob("*.json"))]
        assert self.samples, f"no sample bodies in {folder}"
        self._index = 0
        self._lock = threading.Lock()
        # Aha! ids are 64-bit with the Unix second in the top 32 bits; the low bits tell this
        # run's audits apart from any other run's.
        self._base = (int(time.time()) << 32) | (random.getrandbits(12) << 20)

    def _next(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            index = self._index
            self._index += 1
        body = orjson.loads(orjson.dumps(self.samples[index % len(self.samples)]))
        return index, body

    def make(self, pad: int = 0) -> tuple[str, bytes]:
        """(audit id, body); `pad` adds that many characters to the description."""
        index, body = self._next()
        audit_id = str(self._base + index)
        kind = body["event"]
        inner = body[kind]
        inner["id"] = audit_id
        if kind == "audit":
            # A record of its own: the dedupe never takes it for a part of another audit.
            inner["auditable_id"] = str(self._base + (1 << 19) + index)
            if pad:
                inner["description"] = f"{inner.get('description') or ''} {'x' * pad}"
        elif pad:
            inner["details"] = {"padding": "x" * pad}
        return audit_id, orjson.dumps(body)

    def sized(self, size: int) -> tuple[str, bytes]:
        """A valid audit body of exactly `size` bytes (the description is padded)."""
        while True:
            audit_id, body = self.make()
            if orjson.loads(body)["event"] == "audit":
                break
        parsed = orjson.loads(body)
        parsed["audit"]["description"] = ""
        bare = len(orjson.dumps(parsed))
        parsed["audit"]["description"] = "x" * (size - bare)
        body = orjson.dumps(parsed)
        assert len(body) == size, (len(body), size)
        return audit_id, body


# -- the load -----------------------------------------------------------------------------


@dataclass
class Answer:
    """What the ingest answered to one webhook."""

    audit_id: str
    size: int
    sent_at: float  # monotonic
    answered_at: float = 0.0
    status: int | None = None  # None: no HTTP answer (refused, reset, timed out)
    error: str | None = None  # the answer's `error` field, or the transport error's name

    @property
    def outcome(self) -> str:
        """`202`, `503 spool_full`, `ConnectError`, ..."""
        if self.status is None:
            return self.error or "no answer"
        return f"{self.status}" + (f" {self.error}" if self.error else "")


class Load:
    """Posts `rate` webhooks a second (each a fresh audit) in a thread, records every answer.

    Each post is a task of its own, so a slow answer never lowers the rate; the client waits
    `timeout` seconds (Aha! waits 5: slower answers are counted in `slow_answers`).
    """

    def __init__(
        self,
        url: str,
        rate: float,
        bodies: Bodies | None = None,
        *,
        pad: int = 0,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.rate = rate
        self.bodies = bodies or Bodies()
        self.pad = pad
        self.timeout = timeout
        self.answers: dict[str, Answer] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="load", daemon=True)
        self._running = False
        self._client: httpx.AsyncClient | None = None
        self._pacer: Future[None] | None = None
        self._in_flight: set[asyncio.Task[Answer]] = set()

    def __enter__(self) -> Load:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Start the client thread (no load yet)."""
        self._thread.start()

        async def client() -> None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )

        asyncio.run_coroutine_threadsafe(client(), self._loop).result(10)

    def start(self, rate: float | None = None) -> None:
        """Begin the steady load (again after `stop`)."""
        if rate is not None:
            self.rate = rate
        self._running = True
        self._pacer = asyncio.run_coroutine_threadsafe(self._pace(), self._loop)

    def stop(self, wait: bool = True) -> None:
        """Stop posting; with `wait`, until every post in flight has its answer."""
        self._running = False
        if self._pacer is not None:
            self._pacer.result(30)
            self._pacer = None
        if wait:
            asyncio.run_coroutine_threadsafe(self._settle(), self._loop).result(self.timeout + 30)

    def close(self) -> None:
        """Stop and end the thread."""
        if not self._thread.is_alive():
            return
        self.stop()

        async def shut() -> None:
            if self._client is not None:
                await self._client.aclose()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def post(self, audit_id: str, body: bytes) -> Answer:
        """One webhook, now, from the caller's thread (beside the steady load)."""
        return asyncio.run_coroutine_threadsafe(self._post(audit_id, body), self._loop).result(
            self.timeout + 30
        )

    async def _settle(self) -> None:
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def _pace(self) -> None:
        began = time.monotonic()
        sent = 0
        while self._running:
            due = began + sent / self.rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            audit_id, body = self.bodies.make(self.pad)
            task = asyncio.create_task(self._post(audit_id, body))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            sent += 1

    async def _post(self, audit_id: str, body: bytes) -> Answer:
        assert self._client is not None
        answer = Answer(audit_id, len(body), time.monotonic())
        with self._lock:
            self.answers[audit_id] = answer
        try:
            response = await self._client.post(
                self.url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as error:
            answer.error = type(error).__name__
        else:
            answer.status = response.status_code
            if response.status_code != 202:
                try:
                    answer.error = str(response.json().get("error"))
                except ValueError:
                    answer.error = response.text[:60]
        answer.answered_at = time.monotonic()
        return answer

    # -- what happened -----------------------------------------------------------------

    def snapshot(self) -> list[Answer]:
        """Every answer so far (posts still in flight have `answered_at` 0)."""
        with self._lock:
            return list(self.answers.values())

    def accepted(self) -> dict[str, Answer]:
        """Ids answered 202, with their answers."""
        return {a.audit_id: a for a in self.snapshot() if a.status == 202}

    def outcomes(self) -> Counter[str]:
        """How many posts ended how (`202`, `503 spool_full`, `ConnectError`, ...)."""
        return Counter(a.outcome for a in self.snapshot() if a.answered_at)

    def slow_answers(self, limit: float = 5.0) -> int:
        """Answers that took longer than Aha! waits."""
        return sum(
            1 for a in self.snapshot() if a.answered_at and a.answered_at - a.sent_at > limit
        )

    def wait_accepted(self, count: int, timeout: float = 60) -> None:
        """Until `count` webhooks were accepted (the pipeline is taking load)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} accepted in {timeout}s: {self.outcomes()}")
            time.sleep(0.2)


# -- the checker --------------------------------------------------------------------------


class Delivered:
    """The ids in file sink outputs, read incrementally; `start()` polls in a thread."""

    def __init__(self, *paths: Path, interval: float = 0.25) -> None:
        self.paths = list(paths)
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        """Read another file too (a second worker's file sink)."""
        with self._lock:
            self.paths.append(path)

    def start(self) -> Delivered:
        """Poll every `interval` seconds: first-seen times are then that precise."""
        self._thread = threading.Thread(target=self._run, name="delivered", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Read the lines appended since the last poll (whole lines only)."""
        with self._lock:
            for path in self.paths:
                offset = self._offsets.get(path, 0)
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        data = handle.read()
                except FileNotFoundError:
                    continue
                end = data.rfind(b"\n") + 1
                now = time.monotonic()
                for line in data[:end].splitlines():
                    if not line.strip():
                        continue
                    event_id = str(orjson.loads(line).get("event", {}).get("id"))
                    self.counts[event_id] += 1
                    self.first_seen.setdefault(event_id, now)
                self._offsets[path] = offset + end

    def seen(self) -> set[str]:
        """Every id seen at least once."""
        with self._lock:
            return set(self.counts)

    def missing(self, ids: Iterable[str]) -> set[str]:
        """Ids not seen yet (after reading what is new)."""
        self.poll()
        with self._lock:
            return {i for i in ids if i not in self.counts}

    def wait_for(self, ids: Iterable[str], timeout: float) -> set[str]:
        """Until every id was seen or `timeout` passed; returns those still missing."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            missing = self.missing(wanted)
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.25)

    def duplicates(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        """Ids seen more than once (of `ids`, or of all), with their counts."""
        with self._lock:
            chosen = self.counts if ids is None else {i: self.counts[i] for i in ids}
            return {i: n for i, n in chosen.items() if n > 1}


# -- reporting ------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    """One scenario's numbers, printed with the test output and in the session summary."""

    scenario: str
    seconds: float = 0.0
    sent: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    delivered: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    max_delay: float | None = None
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        """A few lines a person reads."""
        extra = sum(count - 1 for count in self.duplicates.values())
        lines = [
            f"{self.scenario}: {self.seconds:.0f} s, sent {self.sent}, accepted {self.accepted}, "
            f"delivered {self.delivered}, missing {len(self.missing)}, "
            f"duplicates {len(self.duplicates)} ids ({extra} extra lines)"
            + (f", max delay {self.max_delay:.1f} s" if self.max_delay is not None else ""),
            "  answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items())),
        ]
        if self.missing:
            lines.append(f"  missing ids (first 20): {' '.join(sorted(self.missing)[:20])}")
        if self.duplicates:
            shown = sorted(self.duplicates.items())[:50]
            lines.append("  duplicates: " + " ".join(f"{i}x{n}" for i, n in shown))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


REPORTS: list[ChaosReport] = []


def check_no_loss(
    scenario: str,
    load: Load,
    delivered: Delivered,
    *,
    within: float,
    began: float,
    pipeline: Pipeline | None = None,
    notes: Iterable[str] = (),
) -> ChaosReport:
    """Every id answered 202 is in the file sink within `within` seconds from now; reports
    duplicates. Raises AssertionError naming what is missing, with the processes' log tails."""
    accepted = load.accepted()
    missing = delivered.wait_for(accepted, within)
    report = ChaosReport(
        scenario,
        seconds=time.monotonic() - began,
        sent=len(load.snapshot()),
        outcomes=dict(load.outcomes()),
        accepted=len(accepted),
        delivered=len(set(accepted) - missing),
        missing=sorted(missing),
        duplicates=delivered.duplicates(accepted),
        notes=list(notes),
    )
    delays = [
        delivered.first_seen[i] - a.answered_at for i, a in accepted.items() if i not in missing
    ]
    report.max_delay = max(delays) if delays else None
    slow = load.slow_answers()
    if slow:
        report.notes.append(f"{slow} answer(s) took longer than Aha!'s 5 s")
    REPORTS.append(report)
    log(report.render())
    if missing:
        detail = report.render()
        if pipeline is not None:
            detail += "\n" + pipeline.log_tails()
        raise AssertionError(
            f"{len(missing)} of {len(accepted)} webhooks answered 202 are not in the file sink "
            f"{within:.0f} s after recovery\n{detail}"
        )
    return report


# -- the processes ------------------------------------------------------------------------


def file_sink(path: Path, name: str = "file") -> dict[str, Any]:
    """A file sink entry, batching briefly."""
    return {"type": "file", "name": name, "path": str(path), "batch_max_seconds": 0.2}


def http_sink(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A generic HTTP sink entry that retries quickly."""
    return {
        "type": "http",
        "name": name,
        "url": f"{url}/events",
        "batch_max_seconds": 0.2,
        "retry": {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 2},
        "http": {"timeout_seconds": 5},
        **extra,
    }


class Pipeline:
    """A real `aha-siem ingest` and `aha-siem worker` (with its sink processes) on one broker.

    The ingest may reach the broker through the broker's proxy; the worker never does.
    """

    def __init__(
        self,
        tmp: Path,
        broker: Broker,
        *,
        through_proxy: bool = False,
        sinks: list[dict[str, Any]] | None = None,
        ingest: dict[str, Any] | None = None,
        session_timeout: float = 6,
    ) -> None:
        self.tmp = tmp
        self.broker = broker
        self.token = f"chaos-{uuid.uuid4().hex}"
        tree = stack_config(tmp, broker.bootstrap, self.token)
        self.events_file = tmp / "events.ndjson"
        tree["sinks"] = sinks if sinks is not None else [file_sink(self.events_file)]
        tree["kafka"]["session_timeout_seconds"] = session_timeout
        tree["ingest"].update(ingest or {})
        self.tree = tree
        self.config: Config = parse(tree)
        self.worker_config = tmp / "worker.yaml"
        self.worker_config.write_text(yaml.safe_dump(tree))
        ingest_tree = json.loads(json.dumps(tree))
        if through_proxy:
            ingest_tree["kafka"]["bootstrap_servers"] = broker.proxied_bootstrap
        self.ingest_config = tmp / "ingest.yaml"
        self.ingest_config.write_text(yaml.safe_dump(ingest_tree))
        self.env = env_without_bootstrap()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.configs: dict[str, Path] = {}
        self.logs: dict[str, Path] = {}
        self.metrics_urls: dict[str, str] = {}
        self.url = f"http://127.0.0.1:{self.config.ingest.port}"
        self.webhook_url = f"{self.url}/v1/aha/{self.token}"

    @property
    def metrics_url(self) -> str:
        """The first worker's /metrics (its sinks' merged in)."""
        return self.metrics_urls["worker"]

    def start(self) -> None:
        """Start the ingest and the worker; return once the worker and its sinks settled."""
        self.start_ingest()
        self.start_worker()

    def _spawn(self, name: str, role: str, config: Path) -> None:
        self.configs[name] = config
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "ab") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "forwarder", role, "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def start_ingest(self, timeout: float = 90) -> None:
        """Start (or start again) the ingest; return once /readyz answers 200."""
        self._spawn("ingest", "ingest", self.ingest_config)
        wait_http_ok(f"{self.url}/readyz", [self.processes["ingest"]], self.logs, timeout)

    def start_worker(self, name: str = "worker", settle: bool = True) -> None:
        """Start (or start again) a worker; a second name gets its own state, port and file."""
        if name == "worker":
            config = self.worker_config
            self.metrics_urls[name] = self.metrics_url_of(self.tree)
        else:
            tree = json.loads(json.dumps(self.tree))
            tree["worker"]["data_dir"] = str(self.tmp / f"{name}-state")
            tree["worker"]["metrics_port"] = devbroker.free_port(pair=False)
            for sink in tree["sinks"]:
                if sink["type"] == "file":
                    # Same sink (same consumer group), another file: two processes never
                    # append to one file.
                    sink["path"] = str(self.tmp / f"{name}-{Path(sink['path']).name}")
            config = self.tmp / f"{name}.yaml"
            config.write_text(yaml.safe_dump(tree))
            self.metrics_urls[name] = self.metrics_url_of(tree)
        self._spawn(name, "worker", config)
        wait_http_ok(self.metrics_urls[name], [self.processes[name]], self.logs)
        if settle:
            wait_worker_settled(
                self.metrics_urls[name],
                self.config.topics.partitions,
                sinks=len(self.tree["sinks"]),
            )

    @staticmethod
    def metrics_url_of(tree: dict[str, Any]) -> str:
        """A worker's /metrics address in its config tree."""
        return f"http://127.0.0.1:{tree['worker']['metrics_port']}/metrics"

    def file_of(self, worker: str) -> Path:
        """The file sink output of a worker started with `start_worker(worker)`."""
        return self.events_file if worker == "worker" else self.tmp / f"{worker}-events.ndjson"

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` to one of our processes and wait until it is gone."""
        process = self.processes[name]
        process.send_signal(sig)
        process.wait(60)

    def sink_pid(self, sink: str, worker: str = "worker") -> int:
        """The pid of a worker's sink process (`aha-siem sink NAME`, the worker's child)."""
        parent = self.processes[worker].pid
        for child in Path(f"/proc/{parent}/task").glob("*/children"):
            for pid in child.read_text().split():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"sink" in argv and sink.encode() in argv:
                    return int(pid)
        raise LookupError(f"no sink process {sink} under {worker} (pid {parent})")

    def pids(self) -> dict[str, int]:
        """Every process of the pipeline that runs now, sink processes and broker included."""
        found: dict[str, int] = {}
        broker = self.broker.pid
        if broker is not None:
            found["broker"] = broker
        for name, process in self.processes.items():
            if process.poll() is not None:
                continue
            found[name] = process.pid
            if name.startswith("worker"):
                for sink in self.tree["sinks"]:
                    with contextlib.suppress(LookupError, OSError):
                        found[f"{name}/sink {sink['name']}"] = self.sink_pid(sink["name"], name)
        return found

    def rss(self) -> dict[str, int | None]:
        """RSS in KiB of every running process of the pipeline."""
        return {name: rss_kib(pid) for name, pid in self.pids().items()}

    def metric(self, name: str, worker: str = "worker", **labels: str) -> float | None:
        """One sample of a worker's /metrics (labels in any order), None when absent."""
        return scrape(self.metrics_urls[worker], name, **labels)

    def log_tails(self, lines: int = 25) -> str:
        """The end of every process log and of the broker's, for a failure message."""
        parts = [f"--- {name} ({path})\n{tail(path, lines)}" for name, path in self.logs.items()]
        parts.append(f"--- broker\n{self.broker.log_tail(lines)}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM every process, SIGKILL what does not stop in 30 s."""
        stop_processes(self.processes.values())


def scrape(url: str, name: str, **labels: str) -> float | None:
    """One sample from a Prometheus text exposition, labels in any order; None when absent."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base != name:
            continue
        have = set(rest.rstrip("}").split(",")) if rest else set()
        if wanted <= have:
            return float(value)
    return None


def samples_matching(url: str, fragment: str) -> dict[str, float]:
    """Every sample whose name contains `fragment`, by series."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or fragment not in line.split("{")[0].split(" ")[0]:
            continue
        series, _, value = line.rpartition(" ")
        found[series] = float(value)
    return found


@contextlib.contextmanager
def running(pipeline: Pipeline) -> Iterator[Pipeline]:
    """Start the pipeline; always stop it."""
    try:
        pipeline.start()
        yield pipeline
    finally:
        pipeline.stop()
