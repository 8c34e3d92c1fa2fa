"""The rows of the stream: a few columns to filter on and the whole event, each within Azure's limits.

Azure Monitor keeps a `TimeGenerated` only within 2 days before and 1 day after the time it
receives the row; anything else it replaces with the time of arrival. A backfill, a replay or an
outage of more than two days would then be filed under the day it was sent, so the event's own
time also goes in `EventTime`, which Azure leaves alone.

Azure truncates a value over 64 KB (the Logs Ingestion API's limit on one field), which would cut
the `Event` JSON anywhere and leave it unreadable. The sink keeps `Event` and `Message` within
`FIELD_MAX_BYTES` itself, cutting the longest texts with a marker; the whole event stays on the
events topic and in the other sinks, found by `EventKey`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from forwarder.core.oversize import MARK, TRUNCATED_TAG, cut_text, cut_texts
from forwarder.sinks.ids import event_key

FIELD_MAX_BYTES = 64_000
"""Bytes a value may have: under Azure's 64 KB whether a KB is 1,000 or 1,024 bytes."""

# Texts are cut to this many bytes, the largest that makes the event fit.
_TEXT_LIMITS = (16_384, 4_096, 1_024, 256, 64)
_KEY = re.compile(rb'^\{"EventKey":("(?:[^"\\]|\\.)*")')


def row(doc: dict[str, Any], payload: bytes, fmt: str = "ecs") -> bytes:
    """One row: `EventKey` first (read back by `row_key`), the times, two texts and `Event`."""
    event = doc.get("event") or {}
    timestamp = doc.get("@timestamp")
    if not isinstance(timestamp, str):
        timestamp = None
    message = doc.get("message")
    if isinstance(message, str):
        message = cut_text(message, FIELD_MAX_BYTES)
    columns = {
        "EventKey": event_key(doc),
        "TimeGenerated": timestamp or _now(),
        "EventTime": timestamp,
        "EventAction": event.get("action"),
        "Message": message,
    }
    # `payload` is already JSON in the sink's format: splice it in rather than decode it.
    return orjson.dumps(columns)[:-1] + b',"Event":' + fit_event(payload, fmt) + b"}"


def row_key(data: bytes) -> str | None:
    """The `EventKey` of a row made by `row` (for logs), without decoding the whole row."""
    found = _KEY.match(data)
    if found is None:
        return None
    try:
        key = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return key if isinstance(key, str) else None


def fit_event(payload: bytes, fmt: str, limit: int = FIELD_MAX_BYTES) -> bytes:
    """The event JSON for the `Event` column: `payload` if it fits `limit` bytes, else the event
    without its raw body (`event.original`, OCSF `raw_data`) and, if still needed, with its
    longest texts cut, tagged `TRUNCATED_TAG`; as a last resort a stub that says so."""
    if len(payload) <= limit:
        return payload
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        return _stub(len(payload))
    _drop_raw(doc, fmt)
    _tag(doc, fmt)
    smaller = orjson.dumps(doc)
    if len(smaller) <= limit:
        return smaller
    for longest in _TEXT_LIMITS:
        smaller = orjson.dumps(cut_texts(doc, longest))
        if len(smaller) <= limit:
            return smaller
    return _stub(len(payload))


def _drop_raw(doc: dict[str, Any], fmt: str) -> None:
    # The body as received is the largest part and the raw topic keeps it.
    if fmt == "ocsf":
        doc.pop("raw_data", None)
        return
    event = doc.get("event")
    if isinstance(event, dict):
        event.pop("original", None)


def _tag(doc: dict[str, Any], fmt: str) -> None:
    holder = doc
    name = "tags"
    if fmt == "ocsf":
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict):
            metadata = doc["metadata"] = {}
        holder, name = metadata, "labels"
    found = holder.get(name)
    labels = [*found] if isinstance(found, list) else []
    if TRUNCATED_TAG not in labels:
        labels.append(TRUNCATED_TAG)
    holder[name] = labels


def _stub(size: int) -> bytes:
    """What stands in for an event too large even with its texts cut (thousands of fields)."""
    return orjson.dumps(
        {
            "tags": [TRUNCATED_TAG],
            "message": f"event of {size} bytes too large for this column: find it by EventKey "
            "on the events topic or in another sink",
        }
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = ["FIELD_MAX_BYTES", "MARK", "TRUNCATED_TAG", "cut_text", "fit_event", "row", "row_key"]
