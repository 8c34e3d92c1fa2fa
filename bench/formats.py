"""Encoder throughput: events/s per output format over the sample corpus, beside plain orjson."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson

from bench import median
from forwarder.core.normalize import Provenance, normalize_raw
from forwarder.formats import encoder_for, format_names

SAMPLES = Path(__file__).resolve().parent.parent / "forwarder" / "samples"
Row = dict[str, Any]


def _corpus() -> tuple[list[bytes], list[dict[str, Any]]]:
    raws = [path.read_bytes() for path in sorted(SAMPLES.rglob("*.json"))]
    events = [
        normalize_raw(
            raw,
            Provenance(
                received_at="2026-11-27T14:10:12.990Z",
                source="webhook",
                token_id="acme-prod",
                body_sha256=hashlib.sha256(raw).hexdigest(),
                account="acme",
            ),
            now="2026-11-27T14:10:13.052Z",
        )
        for raw in raws
    ]
    return raws, events


def _rate(work: Any, items: list[Any], seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for item in items:
            work(item)
        done += len(items)
    return done / elapsed


def bench_formats(rounds: int = 5, seconds: float = 0.5) -> list[Row]:
    """Median events/s of each encoder, of normalization, and of orjson.dumps (the baseline)."""
    raws, events = _corpus()
    provenance = Provenance(received_at="2026-11-27T14:10:12.990Z", token_id="acme-prod")
    variants: list[tuple[str, Any, list[Any], bool]] = [
        ("orjson.dumps (ECS dict)", orjson.dumps, events, True),
        (
            "normalize_raw (body -> ECS dict)",
            lambda raw: normalize_raw(raw, provenance, now="2026-11-27T14:10:13.052Z"),
            raws,
            False,
        ),
    ]
    variants += [(f"encode {name}", encoder_for(name), events, False) for name in format_names()]
    rows: list[Row] = []
    for name, work, items, baseline in variants:
        samples = [_rate(work, items, seconds) for _ in range(rounds)]
        rows.append(
            {
                "section": "formats",
                "variant": name,
                "metric": "ev/s",
                "median": median(samples),
                "rounds": samples,
                "baseline": baseline,
            }
        )
    return rows
