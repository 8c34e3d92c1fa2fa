"""An audit from the REST API wrapped as the webhook body Aha! would have POSTed, and its record.

The worker's dedupe drops an exact copy only when the wrapped body yields the same
`dedupe.content_hash` (and record key) as the webhook's audit, so the API's shape is brought to
the webhook's here (docs/decisions/0005-backfill.md lists each difference and its source).
Documented by Aha!'s own example answer:
- `auditable_id` and `associated_id` are JSON numbers: they become strings, as the webhook has them;
- `contributors` come on every audit, each wrapped as `{"user": {...}}`: they become flat user
  records (`core.users`, the same function the worker applies to webhook bodies).
Not documented, accepted in case the API ever sends them:
- record types as Rails class names (`Feature`, `Ideas::IdeaEndorsement`) become the webhook's
  lower snake case (`feature`, `ideas/idea_endorsement`);
- an `id` or `user.id` given as a JSON number becomes a string;
- `changes` given as a mapping of field to value becomes the webhook's `[{field_name, value}]`;
- `created_at` in another ISO-8601 spelling becomes UTC with milliseconds and `Z`.
Fields the webhook has that the API lacks are not invented; unknown fields are kept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from forwarder import records
from forwarder.core.dedupe import content_hash
from forwarder.core.users import canonical_audit

SOURCE = "backfill"

# The order of a webhook's audit object, so wrapped bodies read like received ones.
_FIELD_ORDER = (
    "id",
    "audit_action",
    "created_at",
    "interesting",
    "user",
    "auditable_type",
    "auditable_id",
    "associated_type",
    "associated_id",
    "description",
    "auditable_url",
    "changes",
    "contributors",
)
_ID_FIELDS = ("id", "auditable_id", "associated_id")
_TYPE_FIELDS = ("auditable_type", "associated_type")
_ACRONYM = re.compile(r"([A-Z\d]+)([A-Z][a-z])")
_CAMEL = re.compile(r"([a-z\d])([A-Z])")


def snake_type(value: Any) -> Any:
    """A Rails class name as Aha!'s webhook spells record types (ActiveSupport's `underscore`)."""
    if not isinstance(value, str) or not (any(c.isupper() for c in value) or "::" in value):
        return value
    text = value.replace("::", "/")
    text = _ACRONYM.sub(r"\1_\2", text)
    text = _CAMEL.sub(r"\1_\2", text)
    return text.replace("-", "_").lower()


def _id(value: Any) -> Any:
    # bool is an int; an id never is one.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _user(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    return {key: (_id(item) if key == "id" else item) for key, item in value.items()}


def _changes(value: Any) -> Any:
    if isinstance(value, Mapping):
        return [{"field_name": name, "value": item} for name, item in value.items()]
    return value


def _created_at(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return records.iso_millis(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def normalize_audit(audit: Mapping[str, Any]) -> dict[str, Any]:
    """An audit of the REST API in the shape of a webhook's `audit` object."""
    fixed: dict[str, Any] = dict(canonical_audit(audit))
    for name in _ID_FIELDS:
        if name in fixed:
            fixed[name] = _id(fixed[name])
    for name in _TYPE_FIELDS:
        if name in fixed:
            fixed[name] = snake_type(fixed[name])
    if "user" in fixed:
        fixed["user"] = _user(fixed["user"])
    if isinstance(fixed.get("contributors"), list):
        fixed["contributors"] = [_user(user) for user in fixed["contributors"]]
    if "changes" in fixed:
        fixed["changes"] = _changes(fixed["changes"])
    if "created_at" in fixed:
        fixed["created_at"] = _created_at(fixed["created_at"])
    ordered = {name: fixed.pop(name) for name in _FIELD_ORDER if name in fixed}
    ordered.update(fixed)
    return ordered


@dataclass(frozen=True)
class RawRecord:
    """A record for the raw topic, keyed and with headers as the ingest would write it."""

    audit_id: str
    content_hash: str
    created_at: str | None
    value: bytes
    key: bytes
    headers: dict[str, str]
    audit: dict[str, Any]
    """The audit in the webhook's shape (what `value` holds under `audit`)."""

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The headers as Kafka takes them."""
        return records.encode_headers(self.headers)


def wrap(audit: Mapping[str, Any], token_id: str, received_at: str | None = None) -> RawRecord:
    """The raw-topic record for one audit of the REST API."""
    normalized = normalize_audit(audit)
    body = {"event": "audit", "audit": normalized}
    value = orjson.dumps(body)
    body_sha256 = hashlib.sha256(value).hexdigest()
    headers = {
        records.HEADER_RECEIVED_AT: received_at or records.utc_now_iso(),
        records.HEADER_SOURCE: SOURCE,
        records.HEADER_TOKEN_ID: token_id,
        records.HEADER_BODY_SHA256: body_sha256,
    }
    created = normalized.get("created_at")
    return RawRecord(
        audit_id=str(normalized.get("id")),
        content_hash=content_hash(normalized),
        created_at=created if isinstance(created, str) else None,
        value=value,
        key=records.record_key(body, body_sha256),
        headers=headers,
        audit=normalized,
    )
