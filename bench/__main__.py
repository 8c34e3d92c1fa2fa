"""`python -m bench`: ingest, worker and sink throughput beside their baselines, in one run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient

from bench import latency, load, median, sinks, worker
from bench.formats import bench_formats
from forwarder import devbroker
from forwarder.config import IngestConfig, hash_token

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".run" / "bench-kafka"
WORK_DIR = ROOT / ".run" / "bench"  # configs and logs of the last run
Row = dict[str, Any]


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 300:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server for {url} did not become ready; see {log}")


def bench_ingest(args: argparse.Namespace, bootstrap: str, prefix: str, tmp: Path) -> list[Row]:
    """Alternate the no-op app and the real ingest app under the same load, round by round."""
    token = secrets.token_urlsafe(16)
    config = tmp / "ingest.yaml"
    topics = {
        "raw": f"{prefix}.ingest.raw",
        "invalid": f"{prefix}.ingest.invalid",
        "events": f"{prefix}.ingest.events",
    }
    tree: dict[str, Any] = {
        "log_level": "warning",
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {**topics, "partitions": worker.PARTITIONS},
        "ingest": {"tokens": [{"name": "bench", "sha256": hash_token(token), "account": "acme"}]},
    }
    if "spool" in IngestConfig.model_fields:  # the durable fallback, where the ingest has one
        tree["ingest"]["spool"] = {"directory": str(tmp / "spool")}
    config.write_text(yaml.safe_dump(tree))
    script = load.write_wrk_script(tmp / "post.lua") if args.generator.startswith("wrk") else None
    servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for kind in ("noop", "ingest"):
            port = devbroker.free_port(pair=False)
            log = tmp / f"{kind}.log"
            with open(log, "wb") as out:
                cmd = [sys.executable, "-m", "bench.serve", kind, str(port), str(config)]
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            servers[kind] = (f"http://127.0.0.1:{port}/v1/aha/{token}", proc)
            _wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        loads = [("64", args.connections), ("8", args.latency_connections)]
        results: dict[tuple[str, str], list[dict[str, Any]]] = {
            (kind, name): [] for name, _ in loads for kind in ("noop", "ingest")
        }
        for url, _ in servers.values():
            load.run(url, args.warmup, args.connections, script)
        for round_no in range(args.rounds):
            order = ["noop", "ingest"] if round_no % 2 == 0 else ["ingest", "noop"]
            for name, connections in loads:
                for kind in order:
                    url, proc = servers[kind]
                    cpu_before = _cpu_seconds(proc.pid)
                    result = load.run(url, args.duration, connections, script)
                    accepted = result["requests"] - result["errors"]
                    cpu = _cpu_seconds(proc.pid) - cpu_before
                    result["cpu_us"] = cpu / accepted * 1e6 if accepted else float("nan")
                    _log(
                        f"ingest round {round_no + 1} {kind} at {connections} connections: "
                        f"{result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
                        f"p99 {result['p99_ms']:.2f} ms, {result['cpu_us']:.0f} us CPU/request, "
                        f"{result['errors']} errors"
                    )
                    results[(kind, name)].append(result)
    finally:
        for _, proc in servers.values():
            proc.terminate()
        for _, proc in servers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    stored = asyncio.run(worker.count(bootstrap, topics["raw"]))
    accepted = sum(
        r["requests"] - r["errors"]
        for (kind, _), runs in results.items()
        if kind == "ingest"
        for r in runs
    )
    _log(
        f"ingest raw topic holds {stored} records; the generator counted {accepted} accepted "
        "in measured rounds (warm-up and requests in flight at a round's end come on top)"
    )
    names = {"noop": "no-op ASGI app", "ingest": "ingest app -> Kafka"}
    counts = {"64": args.connections, "8": args.latency_connections}
    return [
        {
            "section": "ingest",
            "variant": f"{names[kind]}, {counts[name]} connections",
            "metric": f"req/s at {counts[name]} conn.",
            "median": median([r["rps"] for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "cpu_us": median([r["cpu_us"] for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "rounds": [r["rps"] for r in runs],
            "baseline": kind == "noop",
        }
        for (kind, name), runs in results.items()
    ]


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_worker(args: argparse.Namespace, bootstrap: str, prefix: str, tmp: Path) -> list[Row]:
    """Each worker variant over the same N raw records, on fresh topics, round by round."""
    rows = worker.raw_records(args.events)
    # Warms the broker up and creates its offsets topic; not reported.
    asyncio.run(worker.run_variant("passthrough", bootstrap, f"{prefix}.warm", rows[:500], tmp))
    names = list(worker.VARIANTS)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_no in range(args.worker_rounds):
        shift = round_no % len(names)
        for variant in names[shift:] + names[:shift]:
            result = asyncio.run(
                worker.run_variant(variant, bootstrap, f"{prefix}.w{round_no}.{variant}", rows, tmp)
            )
            _log(
                f"worker round {round_no + 1} {variant}: {result['events_per_s']:.0f} ev/s, "
                f"{result['events_per_s_with_startup']:.0f} ev/s with start-up "
                f"({result['startup_s']:.1f} s)"
            )
            runs[variant].append(result)
    out: list[Row] = []
    for variant, results in runs.items():
        for metric, key in (
            ("ev/s", "events_per_s"),
            ("ev/s incl. start-up", "events_per_s_with_startup"),
        ):
            values = [r[key] for r in results]
            out.append(
                {
                    "section": "worker",
                    "variant": worker.VARIANTS[variant],
                    "metric": metric,
                    "median": median(values),
                    "rounds": values,
                    "startup_s": median([r["startup_s"] for r in results]),
                    "baseline": variant == "passthrough",
                }
            )
    return out


def add_ratios(rows: list[Row]) -> None:
    """Ratio of each median to the baseline's for the same section and metric."""
    for row in rows:
        base = next(
            r
            for r in rows
            if r["baseline"] and r["section"] == row["section"] and r["metric"] == row["metric"]
        )
        row["ratio"] = row["median"] / base["median"] if base["median"] else float("nan")


def table(rows: list[Row]) -> str:
    """The plain-text table."""
    head = ("section", "variant", "metric", "median", "ratio", "p50/p99 ms, notes", "rounds")
    lines = [head]
    for r in rows:
        lat = f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f}" if "p50_ms" in r else ""
        if "cpu_us" in r:
            lat += f", {r['cpu_us']:.0f} us CPU/req"
        if r.get("errors"):
            lat += f" {r['errors']} errors"
        if "start-up" in r["metric"] and r["rounds"]:
            lat = f"start-up {r['startup_s']:.1f} s"
        if r.get("note"):
            lat = f"{lat} {r['note']}".strip()
        name = r["variant"] + (" [baseline]" if r["baseline"] else "")
        rounds = " ".join(f"{v:.0f}" for v in r["rounds"])
        lines.append(
            (
                r["section"],
                name,
                r["metric"],
                f"{r['median']:.0f}",
                f"{r['ratio']:.2f}",
                lat,
                rounds,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the options, get a broker, run the benchmarks, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per ingest round")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds per server")
    parser.add_argument("--warmup", type=float, default=2.0, help="ingest warm-up seconds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--latency-connections", type=int, default=8, help="connections of the latency rounds"
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--events", type=int, default=20_000, help="raw records per worker run")
    parser.add_argument("--worker-rounds", type=int, default=1)
    parser.add_argument("--sink-events", type=int, default=10_000, help="events per sink run")
    parser.add_argument("--sink-rounds", type=int, default=1)
    parser.add_argument(
        "--sinks",
        default=",".join(sinks.SINKS),
        help="comma-separated sink types to measure (default: all with a local receiver)",
    )
    parser.add_argument(
        "--latency-sinks",
        default=",".join(latency.KINDS),
        help="comma-separated sinks of the latency run, all on one worker (default: all)",
    )
    parser.add_argument("--latency-rate", type=float, default=50.0, help="webhooks/s")
    parser.add_argument("--latency-seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--latency-warmup", type=float, default=10.0, help="seconds not measured")
    parser.add_argument(
        "--latency-batch-seconds",
        default="",
        help="comma-separated batch_max_seconds for every sink, a run each after the defaults'",
    )
    parser.add_argument("--only", choices=("ingest", "worker", "sinks", "latency", "formats"))
    parser.add_argument("--broker-kind", default="kafka", choices=devbroker.KINDS)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=WORK_DIR,
        help="configs and logs of the run, emptied first (another folder for concurrent runs)",
    )
    args = parser.parse_args(argv)
    kinds = [kind.strip() for kind in args.sinks.split(",") if kind.strip()]
    if unknown := [kind for kind in kinds if kind not in sinks.SINKS]:
        parser.error(f"--sinks: unknown {', '.join(unknown)}; known: {', '.join(sinks.SINKS)}")
    latency_kinds = [kind.strip() for kind in args.latency_sinks.split(",") if kind.strip()]
    if unknown := [kind for kind in latency_kinds if kind not in latency.KINDS]:
        parser.error(
            f"--latency-sinks: unknown {', '.join(unknown)}; known: {', '.join(latency.KINDS)}"
        )
    batchings: list[float | None] = [None]
    batchings += [float(v) for v in args.latency_batch_seconds.split(",") if v.strip()]
    # aiokafka logs the retries it handles itself (leaders of just-created topics, the offsets
    # topic being created); a real failure still ends the run with an exception.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    load_before = os.getloadavg()[0]
    found = load.generator_name()
    if args.generator == "wrk" and not found.startswith("wrk"):
        parser.error("wrk is not installed (apt-get install wrk)")
    args.generator = "httpx" if args.generator == "httpx" else found

    if args.only == "formats":
        only_formats = bench_formats()
        add_ratios(only_formats)
        print("formats: sample corpus, median of 5 rounds x 0.5 s; ratio to orjson.dumps\n")
        print(table(only_formats))
        return 0
    external = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if external:
        bootstrap, broker_kind = external, "external (KAFKA_BOOTSTRAP)"
    else:
        devbroker.stop(STATE_DIR)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        _log("starting the broker")
        port = devbroker.free_port()
        broker = devbroker.start(STATE_DIR, port=port, kind=args.broker_kind)
        bootstrap, broker_kind = broker.bootstrap, broker.kind
    prefix = f"bench-{int(time.time())}"
    rows: list[Row] = []
    try:
        work = args.work_dir
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        if args.only in (None, "ingest"):
            _log(f"ingest: {args.rounds} x {args.duration:g} s per server, {args.generator}")
            rows += bench_ingest(args, bootstrap, prefix, work)
        if args.only in (None, "worker"):
            _log(f"worker: {args.events} records, {args.worker_rounds} round(s)")
            rows += bench_worker(args, bootstrap, prefix, work)
        if args.only in (None, "sinks"):
            _log(f"sinks: {args.sink_events} events, {args.sink_rounds} round(s), {kinds}")
            rows += sinks.bench_sinks(
                bootstrap,
                prefix,
                work,
                n=args.sink_events,
                rounds=args.sink_rounds,
                kinds=kinds,
                log=_log,
            )
        if args.only in (None, "latency"):
            rows += latency.bench_latency(
                bootstrap,
                prefix,
                work,
                kinds=latency_kinds,
                rate=args.latency_rate,
                seconds=args.latency_seconds,
                warmup=args.latency_warmup,
                batch_seconds=batchings,
                log=_log,
            )
        if args.only is None:
            _log("formats: every encoder over the sample corpus")
            rows += bench_formats()
    finally:
        if external:
            with contextlib.suppress(Exception):
                asyncio.run(_delete_topics(bootstrap, prefix))
        else:
            devbroker.stop(STATE_DIR)
            shutil.rmtree(STATE_DIR / "data", ignore_errors=True)  # the topics' logs
    add_ratios(rows)
    info = [
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end",
        f"broker: {broker_kind} at {bootstrap}",
    ]
    if args.only in (None, "ingest"):
        info.append(
            f"ingest: {args.generator}, {args.connections} and {args.latency_connections} "
            f"connections, median of {args.rounds} rounds x {args.duration:g} s; ratio to the "
            "no-op app at as many connections; CPU of the server process per answered request"
        )
    if args.only in (None, "worker"):
        info.append(
            f"worker: {args.events} records, {worker.PARTITIONS} partitions, median of "
            f"{args.worker_rounds} round(s); ratio to the aiokafka pass-through"
        )
    if args.only in (None, "sinks"):
        info.append(
            f"sinks: {args.sink_events} events, {worker.PARTITIONS} partitions, median of "
            f"{args.sink_rounds} round(s); ratio to the raw read; CPU in cores over the delivery"
        )
    if args.only in (None, "latency"):
        info.append(
            f"latency: {args.latency_rate:g} webhooks/s, {args.latency_warmup:g} s warm-up, "
            f"{args.latency_seconds:g} s measured, every sink on one worker (realtime dedupe); "
            "202 answer -> the receiver holds the event; one run per batching; "
            "ratio of p99 to the events topic's"
        )
    if args.only is None:
        info.append("formats: sample corpus, median of 5 rounds x 0.5 s; ratio to orjson.dumps")
    print("\n".join(info) + "\n\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
