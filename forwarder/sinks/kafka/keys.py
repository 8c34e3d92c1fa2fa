"""Message keys of the Kafka sink."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forwarder import records
from forwarder.sinks.ids import event_key


def record_key(doc: Mapping[str, Any]) -> bytes:
    """The project's own topic key for a normalized event: `{auditable_type}:{auditable_id}`,
    else `{event type}:{id}`, else the body hash (see `records.record_key`)."""
    aha = doc.get("aha") or {}
    event = doc.get("event") or {}
    event_type = aha.get("event")
    if event_type == "audit":
        audit = aha.get("audit") or {}
        auditable = audit.get("auditable") or {}
        inner: Any = {
            "auditable_type": None if auditable.get("type") == "unknown" else auditable.get("type"),
            "auditable_id": auditable.get("id"),
            "id": audit.get("id"),
        }
    else:
        # Other event types keep their whole payload under `aha.<type>`.
        inner = aha.get(event_type) if isinstance(event_type, str) else None
    body = {"event": event_type, event_type: inner} if isinstance(event_type, str) else {}
    digest = event.get("hash")
    return records.record_key(body, digest if digest else event_key(doc))


def message_key(doc: Mapping[str, Any], kind: str) -> bytes | None:
    """The key for `kind`: event (unique event id), record (the record's key) or none."""
    if kind == "event":
        return event_key(doc).encode()
    if kind == "record":
        return record_key(doc)
    return None
