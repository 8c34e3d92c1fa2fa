"""What a raw-topic record carries: its key and headers, shared by ingest, backfill and replay."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

HEADER_RECEIVED_AT = "received-at"
HEADER_SOURCE = "source"
HEADER_SOURCE_IP = "source-ip"
HEADER_TOKEN_ID = "token-id"
HEADER_BODY_SHA256 = "body-sha256"
HEADER_ERROR = "error"
HEADER_REQUEST_ID = "request-id"


def utc_now_iso() -> str:
    """Now as ISO-8601 UTC with milliseconds and `Z`, the format Aha! uses."""
    return iso_millis(datetime.now(UTC))


def iso_millis(moment: datetime) -> str:
    """A timezone-aware datetime as ISO-8601 UTC with milliseconds and `Z`."""
    # isoformat, not strftime: this runs for every webhook and every event.
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def record_key(body: Mapping[str, Any], body_sha256: str) -> bytes:
    """`{auditable_type}:{auditable_id}`, else the audit id, else the body hash.

    Keying by record keeps one record's audits in order in one partition.
    """
    event_type = body.get("event")
    inner = body.get(event_type) if isinstance(event_type, str) else None
    if isinstance(inner, Mapping):
        kind, ident = inner.get("auditable_type"), inner.get("auditable_id")
        if isinstance(kind, str) and kind and isinstance(ident, str | int) and str(ident):
            return f"{kind}:{ident}".encode()
        audit_id = inner.get("id")
        if isinstance(audit_id, str | int) and str(audit_id):
            return f"{event_type}:{audit_id}".encode()
    return body_sha256.encode()


def encode_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Kafka headers from a str mapping."""
    return [(name, value.encode()) for name, value in headers.items()]


def decode_headers(headers: Any) -> dict[str, str]:
    """A str mapping from Kafka headers (a list of pairs or a mapping, values bytes or str)."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    decoded: dict[str, str] = {}
    for name, value in items:
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", "replace")
        decoded[str(name)] = "" if value is None else str(value)
    return decoded


def received_epoch(headers: Mapping[str, str]) -> float | None:
    """The `received-at` header as epoch seconds, if present and valid."""
    raw = headers.get(HEADER_RECEIVED_AT)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        return None
