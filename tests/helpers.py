"""Shared test helpers: the sample corpus and small fakes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

import forwarder
from forwarder.core.normalize import Provenance, normalize_raw

SAMPLES = Path(forwarder.__file__).parent / "samples"
HOSTILE = Path(__file__).parent / "data" / "hostile"
SHARED_EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "aha" / "example-ecs-event.json"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "example.yaml"


# The clock the golden files were made with.
FIXED_RECEIVED = "2026-11-27T14:10:12.990Z"
FIXED_NOW = "2026-11-27T14:10:13.052Z"


def sample_provenance(raw: bytes) -> Provenance:
    """What the ingest would have recorded for `raw`, posted with the `acme-prod` token."""
    return Provenance(
        received_at=FIXED_RECEIVED,
        source="webhook",
        source_ip="198.51.100.7",
        token_id="acme-prod",
        body_sha256=hashlib.sha256(raw).hexdigest(),
        account="acme",
    )


def normalized_sample(path: Path, **options: Any) -> dict[str, Any]:
    """A sample body normalized with fixed provenance and clock, as the golden files expect."""
    raw = path.read_bytes()
    return normalize_raw(raw, sample_provenance(raw), now=FIXED_NOW, **options)


def sample_paths() -> list[Path]:
    """Every sample webhook body, collation burst included."""
    return sorted(SAMPLES.rglob("*.json"))


def hostile_paths() -> list[Path]:
    """Webhook bodies whose texts attack the text formats (tests/data/hostile/README.md)."""
    return sorted(HOSTILE.glob("*.json"))


def body_id(path: Path) -> str:
    """A sample's path under the samples (`collation/pre_collation_1`), `hostile/<name>` for
    a hostile body: the name of its golden files."""
    if path.is_relative_to(HOSTILE):
        return f"hostile/{path.stem}"
    return path.relative_to(SAMPLES).with_suffix("").as_posix()


class RecordingWriter:
    """A Writer that keeps what it was given; `fail` makes `write` raise it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []
        self.fail: Exception | None = None
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def write(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> str:
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, value, key, {name: raw.decode() for name, raw in headers}))
        return "kafka"

    async def ready(self) -> bool:
        return self.started and self.fail is None


def exposed_metric_names() -> set[str]:
    """Every sample name the processes can expose: ingest, worker, sinks, Faust, reconcile."""
    import forwarder.metrics
    from forwarder.backfill.metrics import ReconcileMetrics
    from forwarder.pipeline.children import SinkProcesses
    from forwarder.pipeline.sensors import FaustMetrics

    classes: list[Any] = [
        value
        for value in vars(forwarder.metrics).values()
        if isinstance(value, type) and value.__module__ == "forwarder.metrics"
    ]
    classes += [FaustMetrics, ReconcileMetrics, lambda registry: SinkProcesses([], None, registry)]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for metrics_class in classes:
        # A registry each: two processes' classes may define the same family.
        registry = CollectorRegistry()
        metrics_class(registry)
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names
