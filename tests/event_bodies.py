"""Every webhook body the tests have, for checks that must hold whatever Aha! sends.

The samples, every hostile body under tests/data/hostile/ (the text-format attacks and, under
`types/`, values of every JSON type), and bodies with texts longer than a keyword can index
(Lucene refuses a term over 32,766 bytes), made here rather than checked in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from forwarder.core import dedupe, window
from forwarder.core.normalize import Provenance, normalize, normalize_raw
from tests.helpers import FIXED_NOW, SAMPLES, sample_paths, sample_provenance

HOSTILE = Path(__file__).parent / "data" / "hostile"
INDEX_TEMPLATE = Path(__file__).parents[1] / "siem" / "elasticsearch" / "index-template.json"

# Past Lucene's limit for one term in bytes: as ASCII, and as two-byte characters.
_LONG = "x" * 33_000
_LONG_WIDE = "\u00e9" * 17_000


def _long_texts() -> bytes:
    user = {"id": _LONG, "name": _LONG_WIDE, "email": _LONG}
    audit: dict[str, Any] = {
        "id": "7712852600000000100",
        "audit_action": "update",
        "created_at": "2026-11-27T16:01:40.000Z",
        "interesting": True,
        "user": user,
        "contributors": [user],
        "auditable_type": _LONG,
        "auditable_id": _LONG,
        "associated_type": _LONG,
        "associated_id": _LONG_WIDE,
        "description": _LONG_WIDE,
        "auditable_url": "https://acme.aha.io/features/" + _LONG,
        "changes": [
            {"field_name": _LONG, "value": _LONG},
            {"field_name": "Description", "value": f"<p>{_LONG_WIDE}</p>"},
            {"field_name": "Workflow status", "value": f"{_LONG} &rarr; {_LONG_WIDE}"},
            {"field_name": "Tags", "value": [_LONG, _LONG_WIDE]},
        ],
    }
    return json.dumps({"event": "audit", "audit": audit}).encode()


def body_paths() -> list[Path]:
    """The samples and every hostile body file."""
    return [*sample_paths(), *sorted(HOSTILE.rglob("*.json"))]


def bodies() -> dict[str, bytes]:
    """Every body by a name for test ids and messages."""
    root = Path(__file__).parents[1]
    found = {path.relative_to(root).as_posix(): path.read_bytes() for path in body_paths()}
    found["generated/long_texts"] = _long_texts()
    return found


def normalized_events(*, include_original: bool = True) -> dict[str, dict[str, Any]]:
    """Every body normalized as the worker would, with the golden files' clock and provenance."""
    return {
        name: normalize_raw(
            raw, sample_provenance(raw), now=FIXED_NOW, include_original=include_original
        )
        for name, raw in bodies().items()
    }


def annotated_events() -> dict[str, dict[str, Any]]:
    """Events as dedupe marks them: a window-mode merge of the collation burst, and a realtime
    collated audit with repeats and the audits it supersedes."""
    burst = sorted((SAMPLES / "collation").glob("*.json"))
    group = None
    for order, path in enumerate(burst):
        body = orjson.loads(path.read_bytes())
        group = window.hold(group, body["audit"], {}, now=1000.0, event_time=1000.0 + order)
    assert group is not None
    body, info = window.merge(group)
    merged = normalize(body, Provenance(received_at=FIXED_NOW, source="webhook"), now=FIXED_NOW)
    window.annotate(merged, info, held_seconds=30.5)
    raw = (SAMPLES / "collation" / "collated_new_id.json").read_bytes()
    collated = normalize_raw(raw, sample_provenance(raw), now=FIXED_NOW)
    decision = dedupe.Decision(
        ship=True,
        reason=None,
        revision=True,
        collated=True,
        supersedes=["7712852345123012608", "7712852362302881792"],
        repeated=[0],
    )
    dedupe.annotate(collated, decision)
    return {"window/merged_burst": merged, "realtime/collated_with_repeats": collated}
