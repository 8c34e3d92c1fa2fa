"""Turn one raw webhook body into one canonical ECS event (a plain dict, ready for orjson)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from forwarder.core.richtext import rich_text
from forwarder.core.users import canonical_audit, canonical_body
from forwarder.records import iso_millis

ECS_VERSION = "8.17.0"
DATASET = "aha.audit"

# Record types whose changes are identity and access management rather than configuration.
_IAM_TYPES = frozenset({"user", "role", "permission", "account_user", "project_user", "user_role"})
_ACTION_TYPES = {"create": "creation", "update": "change", "destroy": "deletion"}
_ARROW = "\u2192"

INVALID_RECEIVED_AT_TAG = "aha_siem_invalid_received_at"
"""Added to an event whose raw record's `received-at` header was not a time (it is left out)."""
# Names under `aha` the event itself uses; another event type's payload never goes there.
_AHA_KEYS = frozenset({"event", "audit", "ingest", "collation"})
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Provenance:
    """What the ingest recorded about a body in the raw record's headers."""

    received_at: str | None = None
    source: str | None = None
    source_ip: str | None = None
    token_id: str | None = None
    body_sha256: str | None = None
    account: str | None = None


def _text(value: Any) -> str | None:
    return None if value is None else _json_text(value)


def _timestamp(value: Any) -> str | None:
    """An ISO-8601 time as Aha! writes it, or None when the value is not one."""
    if not isinstance(value, str) or not value[:4].isdigit():
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    # One shape for every consumer (Aha!'s own is already this one); naive times are UTC.
    return iso_millis(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


def _user(raw: Any) -> dict[str, str] | None:
    if not isinstance(raw, Mapping):
        return None
    user = {key: _text(raw.get(key)) for key in ("id", "name", "email")}
    return {key: value for key, value in user.items() if value} or None


def _json_text(value: Any) -> str:
    """A JSON value as text: strings as they are, the rest as their compact JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits inside, or something that is not JSON
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _value(raw: Any) -> dict[str, Any]:
    """`value` always text (or null); `value_raw` the typed original when it was not text.

    An integer beyond 64 bits has no `value_raw` (the exact digits stay in `value`): the events
    topic's JSON cannot carry it. Bodies read from the raw topic never have one (their numbers
    are parsed as doubles); a body handed to `normalize` directly may.
    """
    if raw is None or isinstance(raw, str):
        return {"value": raw}
    try:
        orjson.dumps(raw)
    except TypeError:
        return {"value": _json_text(raw)}
    return {"value": _json_text(raw), "value_raw": raw}


def _change(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        return {"field_name": None, **_value(raw)}
    value = raw.get("value")
    field_name = raw.get("field_name")
    change: dict[str, Any] = {
        "field_name": None if field_name is None else _json_text(field_name),
        **_value(value),
    }
    if not isinstance(value, str):
        # Rich text and `old &rarr; new` are Aha!'s text values; a number or an object is neither.
        return change
    if "&" in value or "<" in value:
        rendered = rich_text(value)
        change["value_text"] = rendered.text
        if rendered.deleted:
            change["deleted_text"] = rendered.deleted
        if rendered.inserted:
            change["inserted_text"] = rendered.inserted
    text = change.get("value_text", value)
    if f" {_ARROW} " in text and "\n" not in text:
        old, _, new = text.partition(f" {_ARROW} ")
        change["old"], change["new"] = old, new
    return change


def flag(value: Any) -> bool:
    """A boolean Aha! may also send as a string or a number: `"false"` and `0` are false."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if isinstance(value, bool | int | float) else False


def _items(value: Any) -> list[Any]:
    """A list field as a list; a lone value as one item (kept, never dropped); null as none."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _related_users(users: list[dict[str, str]]) -> list[str]:
    seen: dict[str, None] = {}
    for user in users:
        for key in ("id", "name", "email"):
            if user.get(key):
                seen.setdefault(user[key], None)
    return list(seen)


def _base(provenance: Provenance, now: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "event",
        "outcome": "success",
        "dataset": DATASET,
        "module": "aha",
        "provider": "aha-roadmaps",
        "created": now,
    }
    if provenance.body_sha256:
        event["hash"] = provenance.body_sha256
    # "@timestamp" first: a reader of the raw line sees when before what.
    doc: dict[str, Any] = {"@timestamp": now, "ecs": {"version": ECS_VERSION}, "event": event}
    if provenance.token_id:
        doc["organization"] = {"id": provenance.token_id}
        if provenance.account:
            doc["organization"]["name"] = provenance.account
    doc["observer"] = {"vendor": "Aha!", "product": "Aha! Roadmaps", "type": "saas"}
    return doc


def _ingest_info(provenance: Provenance) -> dict[str, Any]:
    info = {
        "received_at": provenance.received_at,
        "source": provenance.source,
        "token_id": provenance.token_id,
    }
    return {key: value for key, value in info.items() if value}


def normalize(
    body: Mapping[str, Any],
    provenance: Provenance,
    *,
    now: str,
    original: bytes | None = None,
) -> dict[str, Any]:
    """The ECS event for one parsed webhook body. Unknown event types are kept whole."""
    event_type = _text(body.get("event")) or "unknown"
    inner = body.get(event_type)
    inner = inner if isinstance(inner, Mapping) else {}
    doc = _base(provenance, now)
    event = doc["event"]
    if original is not None:
        event["original"] = original.decode("utf-8", "replace")
    # The header comes from whoever wrote the raw record: a time that is not one is left out
    # (tagged), or the event would be refused where @timestamp and received_at are dates.
    received_at = _timestamp(provenance.received_at)
    timestamp = _timestamp(inner.get("created_at")) or received_at or now
    if event_type == "audit":
        _audit(doc, inner)
    else:
        _generic(doc, event_type, inner)
    doc["@timestamp"] = timestamp
    doc["aha"]["ingest"] = _ingest_info(replace(provenance, received_at=received_at))
    if provenance.received_at and received_at is None:
        doc["tags"] = [*doc.get("tags", ()), INVALID_RECEIVED_AT_TAG]
    return doc


def _audit(doc: dict[str, Any], audit: Mapping[str, Any]) -> None:
    event = doc["event"]
    action = _text(audit.get("audit_action")) or "unknown"
    record_type = _text(audit.get("auditable_type")) or "unknown"
    if audit.get("id") is not None:
        event["id"] = _text(audit.get("id"))
    event["action"] = f"{record_type.replace('/', '-').replace('_', '-')}-{action}"
    event["category"] = ["iam"] if record_type in _IAM_TYPES else ["configuration"]
    event["type"] = [_ACTION_TYPES.get(action, "info")]
    description = _text(audit.get("description"))
    if description:
        doc["message"] = description
    author = _user(audit.get("user"))
    # parse_body's bodies are canonical already; one given to normalize() directly may not be.
    listed = canonical_audit(audit).get("contributors")
    contributors = [user for user in (_user(raw) for raw in _items(listed)) if user]
    if author:
        doc["user"] = author
    related = _related_users(([author] if author else []) + contributors)
    if related:
        doc["related"] = {"user": related}
    url = _text(audit.get("auditable_url"))
    if url:
        doc["url"] = {"full": url}
    associated = None
    if audit.get("associated_type") or audit.get("associated_id"):
        associated = {
            "type": _text(audit.get("associated_type")),
            "id": _text(audit.get("associated_id")),
        }
    doc["aha"] = {
        "event": "audit",
        "audit": {
            "id": _text(audit.get("id")),
            "action": action,
            "interesting": flag(audit.get("interesting")),
            "auditable": {"type": record_type, "id": _text(audit.get("auditable_id"))},
            "associated": associated,
            "contributors": contributors,
            "changes": [_change(raw) for raw in _items(audit.get("changes"))],
        },
    }


def _generic(doc: dict[str, Any], event_type: str, inner: Mapping[str, Any]) -> None:
    event = doc["event"]
    if inner.get("id") is not None:
        event["id"] = _text(inner.get("id"))
    action = _text(inner.get("action"))
    event["action"] = f"{event_type}-{action}" if action else event_type
    # Payloads other than audits are not documented: only a name that says so is a failure.
    failed = action is not None and any(
        word in action.lower() for word in ("fail", "denied", "rejected")
    )
    event["outcome"] = "failure" if failed else "unknown"
    user = _user(inner.get("user"))
    if user:
        doc["user"] = user
        doc["related"] = {"user": _related_users([user])}
    doc["message"] = f"Aha! {event_type} event" + (f" {action}" if action else "")
    key = _payload_key(event_type)
    doc["aha"] = {"event": key, key: dict(inner)}


def _payload_key(event_type: str) -> str:
    """The key under `aha` for an event type's payload: the type itself when it is a plain
    name. A dot would make Elasticsearch read the key as a path (`ingest.received_at`), and a
    name of the event's own (`ingest`, `collation`) would collide with it."""
    key = _UNSAFE_KEY.sub("_", event_type)
    return f"{key}_event" if key in _AHA_KEYS else key


def parse_body(raw: bytes) -> Mapping[str, Any]:
    """A raw record's body; bytes that are not a JSON object become an `unparsed` event."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, Mapping):
        # The ingest validates bodies, so this is a record produced by someone else: keep it.
        body = {"event": "unparsed", "unparsed": {"raw": raw.decode("utf-8", "replace")}}
    # The worker's edge: dedupe, window mode and normalize see one shape of contributors.
    return canonical_body(body)


def event_epoch(body: Mapping[str, Any]) -> float | None:
    """When the event happened (its `created_at`), as a Unix time, if it says."""
    event_type = body.get("event")
    inner = body.get(event_type) if isinstance(event_type, str) else None
    stamp = _timestamp(inner.get("created_at")) if isinstance(inner, Mapping) else None
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def normalize_raw(
    raw: bytes, provenance: Provenance, *, now: str, include_original: bool = False
) -> dict[str, Any]:
    """Normalize raw bytes from the raw topic; bytes that are not a webhook become a generic event."""
    return normalize(
        parse_body(raw), provenance, now=now, original=raw if include_original else None
    )
