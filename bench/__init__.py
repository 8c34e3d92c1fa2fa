"""Throughput benchmarks beside their baselines: `make bench` runs `python -m bench`."""

from __future__ import annotations

import statistics
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "forwarder" / "samples"


def sample_bodies() -> list[bytes]:
    """The sample webhook bodies (top level of forwarder/samples), in a stable order."""
    return [path.read_bytes() for path in sorted(SAMPLES.glob("*.json"))]


def median(values: list[float]) -> float:
    """The median, or NaN when there is nothing to take it of."""
    return statistics.median(values) if values else float("nan")
