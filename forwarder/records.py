"""What a raw-topic record carries: its key and headers, shared by ingest, backfill and replay."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

HEADER_RECEIVED_AT = "received-at"
HEADER_SOURCE = "source"
HEADER_SOURCE_IP = "source-ip"
HEADER_TOKEN_ID = "token-id"
HEADER_BODY_SHA256 = "body-sha256"
HEADER_ERROR = "error"
HEADER_REQUEST_ID = "request-id"
HEADER_TRUNCATED_FROM = "truncated-from"
HEADER_SCHEMA_VERSION = "schema-version"
"""On events: the major version of the event JSON Schema (forwarder/schemas/) they follow."""

MAX_KEY_BYTES = 256
"""Longer record keys (an absurd auditable type or id) are replaced by a digest of themselves."""
MAX_ERROR_BYTES = 1024
"""The `error` header is cut to this length."""

# The longest value each header of an ingested record can have (see `max_record_bytes`).
_HEADER_BOUNDS = {
    HEADER_RECEIVED_AT: 32,
    HEADER_SOURCE: 16,
    HEADER_SOURCE_IP: 64,
    HEADER_TOKEN_ID: 64,
    HEADER_REQUEST_ID: 64,
    HEADER_BODY_SHA256: 64,
    HEADER_ERROR: MAX_ERROR_BYTES,
    HEADER_TRUNCATED_FROM: 20,
}

# Kafka's record batch v2: a 61-byte batch header, and per record at most 21 bytes of
# attributes, offset and timestamp deltas and length varints besides the key, value and headers.
_BATCH_HEADER_BYTES = 61
_RECORD_OVERHEAD_BYTES = 21


def _varint_bytes(value: int) -> int:
    """Bytes of `value` as a zigzag varint (Kafka's encoding of lengths in a record)."""
    encoded = (value << 1) ^ (value >> 63)
    size = 1
    while encoded >= 0x80:
        encoded >>= 7
        size += 1
    return size


def record_bytes(key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
    """An upper bound of the bytes of one record alone in a batch, as Kafka counts them.

    The producer refuses a record above its max_request_size by this same bound, the broker a
    batch above the topic's max.message.bytes.
    """
    size = _BATCH_HEADER_BYTES + _RECORD_OVERHEAD_BYTES
    size += _varint_bytes(len(key)) + len(key) + _varint_bytes(len(value)) + len(value)
    size += _varint_bytes(len(headers))
    for name, data in headers:
        raw = name.encode()
        size += _varint_bytes(len(raw)) + len(raw) + _varint_bytes(len(data)) + len(data)
    return size


def max_record_bytes(body_bytes: int) -> int:
    """The largest record the ingest can make of a body of `body_bytes` (longest key, headers)."""
    headers = [(name, b"x" * bound) for name, bound in _HEADER_BOUNDS.items()]
    return record_bytes(b"k" * MAX_KEY_BYTES, b"", headers) + body_bytes + 4


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
            return _bounded(f"{kind}:{ident}".encode())
        audit_id = inner.get("id")
        if isinstance(audit_id, str | int) and str(audit_id):
            return _bounded(f"{event_type}:{audit_id}".encode())
    return body_sha256.encode()


def _bounded(key: bytes) -> bytes:
    # Still one key per record, so its audits stay in order in one partition.
    if len(key) <= MAX_KEY_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


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
