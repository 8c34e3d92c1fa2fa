"""Make a normalized event fit the events topic: the audit still lands, its longest texts cut.

A webhook body of up to `ingest.max_body_bytes` can normalize to a larger event (rich text kept
as HTML and as text, `event.original` when configured). Kafka refuses a record above the topic's
max.message.bytes for good, so retrying it would hold back every event behind it on the
partition. The full body stays in the raw topic.
"""

from __future__ import annotations

from typing import Any

import orjson

from forwarder import records

TRUNCATED_TAG = "aha_siem_truncated"
"""Added to an event's tags when its texts were cut to fit a size limit."""
MARK = "…[truncated]"
"""Ends every text that was cut."""
_MARK_BYTES = len(MARK.encode())


def cut_text(text: str, limit: int) -> str:
    """`text` if its UTF-8 is at most `limit` bytes, else its start ending in `MARK`, in all at
    most `limit` bytes."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: max(0, limit - _MARK_BYTES)].decode("utf-8", "ignore") + MARK


def cut_texts(node: Any, longest: int) -> Any:
    """A copy of a JSON value with every string over `longest` bytes cut to them plus `MARK`."""
    if isinstance(node, str):
        return cut_text(node, longest + _MARK_BYTES)
    if isinstance(node, dict):
        return {key: cut_texts(value, longest) for key, value in node.items()}
    if isinstance(node, list):
        return [cut_texts(value, longest) for value in node]
    return node


def fit_event(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], limit: int
) -> bytes | None:
    """`value` when the record fits `limit`, else the event with `event.original` dropped and
    long strings cut until it fits (tagged `aha_siem_truncated`); None if nothing fits."""
    overhead = records.record_bytes(key or b"", b"", headers)
    if overhead + len(value) <= limit:
        return value
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    event = doc.get("event")
    if isinstance(event, dict):
        event.pop("original", None)
    tags = doc.get("tags")
    doc["tags"] = [*(tags if isinstance(tags, list) else []), TRUNCATED_TAG]
    longest = 64 * 1024
    while longest >= 64:
        smaller = orjson.dumps(cut_texts(doc, longest))
        if overhead + len(smaller) <= limit:
            return smaller
        longest //= 4
    return None
