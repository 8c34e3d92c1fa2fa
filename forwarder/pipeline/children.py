"""The worker's sink processes: started, restarted when they die, stopped with the worker.

Their metrics are served from the worker's own /metrics: at each scrape the worker reads every
child's loopback endpoint and merges the families, so Prometheus scrapes one port per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from forwarder.devbroker import free_port

log = logging.getLogger("forwarder.worker")

_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A SIGKILLed worker must not leave orphan sink processes consuming behind it.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised sink process."""

    sink: str
    metrics_port: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    command: tuple[str, ...] = ()
    """`aha-siem` arguments; empty: `sink NAME`."""


class SinkProcesses:
    """Runs `aha-siem sink NAME` for each sink and keeps them running."""

    def __init__(
        self,
        sinks: list[str],
        config_path: Path | None,
        registry: CollectorRegistry,
        *,
        detections: bool = False,
    ) -> None:
        self._config_path = config_path
        self._children = [Child(name, free_port(pair=False)) for name in sinks]
        if detections:
            # The streaming alerts (forwarder/pipeline/alerts.py) are supervised like a sink;
            # their restarts count under sink="detections".
            self._children.append(
                Child("detections", free_port(pair=False), command=("detections", "run"))
            )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="sink-processes", daemon=True)
        self._restarts = Counter(
            "aha_siem_sink_process_restarts_total",
            "Sink processes the worker restarted after they exited, by sink.",
            ["sink"],
            registry=registry,
        )
        for child in self._children:
            self._restarts.labels(child.sink)

    def exposition(self, own: CollectorRegistry) -> CollectorRegistry:
        """A registry to serve: the worker's own metrics and its sinks', one family per name."""
        served = CollectorRegistry(auto_describe=False)
        served.register(_Merged(own, self._children))
        return served

    def _spawn(self, child: Child) -> None:
        if child.process is not None:
            # A restart: the port may be why it exited (taken by another process since it was
            # chosen), and keeping it would make the sink fail the same way for ever.
            child.metrics_port = free_port(pair=False)
        command = [sys.executable, "-m", "forwarder", *(child.command or ("sink", child.sink))]
        command += ["--metrics-host", "127.0.0.1", "--metrics-port", str(child.metrics_port)]
        if self._config_path is not None:
            command += ["--config", str(self._config_path)]
        # A session of its own: a Ctrl-C in the terminal reaches the worker, which stops its
        # sinks in order, rather than every process at once (the supervisor would restart them).
        child.process = subprocess.Popen(
            command, preexec_fn=_die_with_parent, start_new_session=True
        )
        child.started_at = time.monotonic()
        log.info("sink process started", extra={"sink": child.sink, "pid": child.process.pid})

    def start(self) -> None:
        """Start every sink process and the supervising thread."""
        for child in self._children:
            self._spawn(child)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            for child in self._children:
                if child.process is None or child.process.poll() is None:
                    continue
                code = child.process.returncode
                # A process that ran a while before dying starts again at once; a crash loop
                # backs off so it does not hammer the broker or the destination.
                if time.monotonic() - child.started_at > 60:
                    child.restarts = 0
                delay = RESTART_BACKOFF_SECONDS[
                    min(child.restarts, len(RESTART_BACKOFF_SECONDS) - 1)
                ]
                log.error(
                    "sink process exited, restarting",
                    extra={"sink": child.sink, "exit_code": code, "restart_in": delay},
                )
                if self._stopping.wait(delay):
                    return
                child.restarts += 1
                self._restarts.labels(child.sink).inc()
                self._spawn(child)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every sink process (they finish their batch) and wait for them."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)
        running = [c.process for c in self._children if c.process and c.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _Merged(Collector):
    """The worker's families and its sink processes', merged by name.

    Two processes expose some families alike (the Faust ones, with an `app` label of their
    own): the text format allows one HELP and TYPE per name, so their samples are joined.
    """

    def __init__(self, own: CollectorRegistry, children: list[Child]) -> None:
        self._own = own
        self._children = children

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {family.name: family for family in self._own.collect()}
        for child in self._children:
            if child.process is None or child.process.poll() is not None:
                continue
            try:
                url = f"http://127.0.0.1:{child.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    text = answer.read().decode()
            except OSError:
                continue  # starting or stopping: its series come back at the next scrape
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                else:
                    into.samples.extend(family.samples)
        yield from merged.values()
