"""`python -m bench.soak` (`make soak`): a long steady load through a pipeline that is disturbed.

A broker of its own, the real ingest and worker (file sink and an HTTP sink to a fake receiver),
`--rate` webhooks a second for `--minutes` (SOAK_MINUTES, 30 by default). Every
`--restart-every` seconds the broker is stopped and started again; once, half a cycle in, the
HTTP sink's receiver is down for `--outage` seconds (connections refused). At the end: what was
accepted, delivered (file sink and receiver), duplicated, the longest end-to-end delay (202
answered -> line in the file sink, polled every 0.25 s), the RSS of every process at the start
and the end, as a markdown table for docs/reliability.md. Exit 1 on any loss.

Runs shorter than two cycles shrink the cycle to half the run (and the outage to a third of it),
so that `SOAK_MINUTES=4` still has a broker restart and an outage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.chaos.harness import (
    Broker,
    Delivered,
    Load,
    Pipeline,
    file_sink,
    http_sink,
    running,
)
from tests.chaos.proxy import ChaosProxy
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.server import AsgiServer
from tests.integration.kafka_io import read_topic

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / ".run" / "soak"  # broker state, configs and process logs of the last run


def _log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Plan:
    """When the faults happen, in seconds from the start of the load."""

    seconds: float
    restart_every: float
    outage_at: float
    outage_seconds: float
    restarts: list[float] = field(default_factory=list)

    @classmethod
    def make(cls, minutes: float, restart_every: float, outage: float) -> Plan:
        seconds = minutes * 60
        cycle = min(restart_every, seconds / 2)
        outage = min(outage, cycle / 3)
        restarts = [cycle * k for k in range(1, int(seconds // cycle) + 1) if cycle * k < seconds]
        return cls(seconds, cycle, cycle / 2 - outage / 2, outage, restarts)


@dataclass
class Outcome:
    """What the run measured."""

    minutes: float
    rate: float
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    file_delivered: int = 0
    file_missing: list[str] = field(default_factory=list)
    file_duplicates: int = 0
    siem_delivered: int = 0
    siem_dead_lettered: int = 0
    siem_missing: list[str] = field(default_factory=list)
    siem_duplicates: int = 0
    max_delay: float = 0.0
    p99_delay: float = 0.0
    slow_answers: int = 0
    broker_restarts: list[tuple[float, float]] = field(default_factory=list)
    outage: tuple[float, float] = (0.0, 0.0)
    rss_start: dict[str, int | None] = field(default_factory=dict)
    rss_end: dict[str, int | None] = field(default_factory=dict)

    @property
    def lost(self) -> bool:
        """Anything accepted that neither sink has (the SIEM's DLQ counts as kept)."""
        return bool(self.file_missing or self.siem_missing)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def table(outcome: Outcome) -> str:
    """The markdown for docs/reliability.md."""
    restarts = outcome.broker_restarts
    refused = ", ".join(f"{k}: {v}" for k, v in sorted(outcome.refused.items())) or "none"
    rows = [
        ("duration, load", f"{outcome.minutes:g} min at {outcome.rate:g} webhooks/s"),
        (
            "faults",
            f"{len(restarts)} broker restart(s) (stop {_span([s for s, _ in restarts])}, start "
            f"{_span([s for _, s in restarts])}); HTTP sink receiver down "
            f"{outcome.outage[1]:.0f} s at minute {outcome.outage[0] / 60:.1f}",
        ),
        ("webhooks accepted (202)", str(outcome.accepted)),
        ("webhooks refused or unanswered", refused),
        ("answers slower than 5 s", str(outcome.slow_answers)),
        (
            "file sink: delivered / missing",
            f"{outcome.file_delivered} / {len(outcome.file_missing)}",
        ),
        ("file sink: duplicate lines", str(outcome.file_duplicates)),
        (
            "HTTP sink: delivered / dead-lettered / missing",
            f"{outcome.siem_delivered} / {outcome.siem_dead_lettered} / {len(outcome.siem_missing)}",
        ),
        ("HTTP sink: duplicate deliveries", str(outcome.siem_duplicates)),
        (
            "end-to-end delay (202 -> file sink), max / p99",
            f"{outcome.max_delay:.1f} s / {outcome.p99_delay:.1f} s",
        ),
    ]
    for name in sorted(set(outcome.rss_start) | set(outcome.rss_end)):
        # The broker restarts during the run: its end is another process than its start.
        label = f"{name} (the process running then)" if name == "broker" else name
        rows.append(
            (
                f"RSS {label}, start -> end",
                f"{_mib(outcome.rss_start.get(name))} -> {_mib(outcome.rss_end.get(name))}",
            )
        )
    lines = ["| soak | result |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.1f}-{max(values):.1f} s"


def soak(args: argparse.Namespace) -> Outcome:
    """Run the plan and measure it."""
    plan = Plan.make(args.minutes, args.restart_every, args.outage)
    _log(
        f"{args.minutes:g} min at {args.rate:g}/s; broker restart every {plan.restart_every:.0f} s "
        f"({len(plan.restarts)}), receiver down {plan.outage_seconds:.0f} s at "
        f"{plan.outage_at:.0f} s; work folder {WORK_DIR}"
    )
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir(parents=True)
    outcome = Outcome(args.minutes, args.rate)
    broker = Broker(WORK_DIR / "kafka")
    receiver = HttpReceiver()
    try:
        broker.start()
        with (
            AsgiServer(receiver) as server,
            ChaosProxy(("127.0.0.1", server.port)) as front,
        ):
            sinks = [
                file_sink(WORK_DIR / "events.ndjson"),
                http_sink("siem", f"http://{front.address}"),
            ]
            with (
                running(Pipeline(WORK_DIR, broker, sinks=sinks, session_timeout=10)) as pipeline,
                Load(pipeline.webhook_url, args.rate) as load,
            ):
                delivered = Delivered(pipeline.events_file).start()
                try:
                    _drive(plan, pipeline, load, front, broker, outcome)
                    _settle(args, pipeline, load, delivered, receiver, outcome)
                finally:
                    delivered.close()
    finally:
        broker.close()
    return outcome


def _drive(
    plan: Plan,
    pipeline: Pipeline,
    load: Load,
    front: ChaosProxy,
    broker: Broker,
    outcome: Outcome,
) -> None:
    began = time.monotonic()
    load.start()
    restarts = list(plan.restarts)
    outage_started: float | None = None
    next_progress = 60.0
    while (elapsed := time.monotonic() - began) < plan.seconds:
        if not outcome.rss_start and elapsed >= 10:
            outcome.rss_start = pipeline.rss()
        if outage_started is None and plan.outage_seconds and elapsed >= plan.outage_at:
            front.refuse()
            outage_started = elapsed
            _log(f"receiver down at {elapsed:.0f} s")
        if (
            outage_started is not None
            and outcome.outage == (0.0, 0.0)
            and elapsed >= outage_started + plan.outage_seconds
        ):
            front.forward()
            outcome.outage = (outage_started, elapsed - outage_started)
            _log(f"receiver back at {elapsed:.0f} s")
        if restarts and elapsed >= restarts[0]:
            restarts.pop(0)
            stopped = time.monotonic()
            broker.stop()
            stop_seconds = time.monotonic() - stopped
            start_seconds = broker.start()
            outcome.broker_restarts.append((stop_seconds, start_seconds))
            _log(
                f"broker restarted at {elapsed:.0f} s (stop {stop_seconds:.1f} s, start {start_seconds:.1f} s)"
            )
        if elapsed >= next_progress:
            next_progress += 60
            _log(f"{elapsed / 60:.0f} min: {dict(load.outcomes())}")
        time.sleep(0.2)
    outcome.rss_end = pipeline.rss()
    load.stop()
    if outcome.outage == (0.0, 0.0) and outage_started is not None:
        front.forward()
        outcome.outage = (outage_started, time.monotonic() - began - outage_started)


def _settle(
    args: argparse.Namespace,
    pipeline: Pipeline,
    load: Load,
    delivered: Delivered,
    receiver: HttpReceiver,
    outcome: Outcome,
) -> None:
    accepted = load.accepted()
    outcome.accepted = len(accepted)
    outcome.refused = {k: v for k, v in load.outcomes().items() if k != "202"}
    outcome.slow_answers = load.slow_answers()
    _log(
        f"load stopped: {outcome.accepted} accepted; waiting up to {args.drain:.0f} s for both sinks"
    )
    missing = delivered.wait_for(accepted, args.drain)
    outcome.file_missing = sorted(missing)
    outcome.file_delivered = len(accepted) - len(missing)
    outcome.file_duplicates = sum(n - 1 for n in delivered.duplicates(accepted).values())
    delays = sorted(
        delivered.first_seen[i] - answer.answered_at
        for i, answer in accepted.items()
        if i in delivered.first_seen
    )
    if delays:
        outcome.max_delay = delays[-1]
        outcome.p99_delay = (
            statistics.quantiles(delays, n=100)[98] if len(delays) > 1 else delays[0]
        )
    deadline = time.monotonic() + args.drain
    while True:
        seen = [str(event["event"]["id"]) for event in receiver.accepted_events()]
        siem_missing = set(accepted) - set(seen)
        if not siem_missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    dlq = f"{pipeline.config.topics.dlq_prefix}siem"
    dead = asyncio.run(read_topic(pipeline.broker.bootstrap, dlq, len(siem_missing) or 1, 10))
    dead_ids = {str(orjson.loads(record.value)["event"]["id"]) for record in dead}
    outcome.siem_delivered = len(set(accepted) & set(seen))
    outcome.siem_dead_lettered = len(dead_ids & set(accepted))
    outcome.siem_missing = sorted(siem_missing - dead_ids)
    outcome.siem_duplicates = len(seen) - len(set(seen))


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the soak, print the table; 1 when anything accepted was lost."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument(
        "--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES") or 30)
    )
    parser.add_argument("--rate", type=float, default=20.0, help="webhooks a second")
    parser.add_argument("--restart-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the receiver is down")
    parser.add_argument(
        "--drain", type=float, default=120.0, help="seconds the sinks get after the load stops"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    outcome = soak(args)
    print(f"\nSoak on {platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}:\n")
    print(table(outcome))
    if outcome.file_missing:
        print(f"\nmissing from the file sink (first 20): {' '.join(outcome.file_missing[:20])}")
    if outcome.siem_missing:
        print(f"missing from the HTTP sink (first 20): {' '.join(outcome.siem_missing[:20])}")
    if args.json:
        data: dict[str, Any] = dict(vars(outcome))
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    if outcome.lost:
        print(f"\nLOSS: logs in {WORK_DIR}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
