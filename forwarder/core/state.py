"""One record's dedupe state: what was seen and shipped of it, and its open window. Versioned.

Stored as the value of the worker's `dedupe` table (RocksDB and its Kafka changelog), one value
per record key. Version 2 (written since the pure core, docs/decisions/0009-pure-core.md) is
JSON with named fields:

    {"version": 2, "seen": <time>,
     "audits": {<audit id>: {"content_hash", "event_time", "shipped", "fields", "users"}},
     "changes": {<change key>: {"audit_id", "event_time"}},
     "users": {<user key>: <event time>},
     "held": null | {"opened": <time>, "audits": [{"audit", "time", "headers", "order"}]}}

Version 1 (everything written before) had one-letter keys and positional lists; `decode`
reads it, so state in existing stores and changelogs keeps working, and the next write of a
record turns it into version 2:

    {"a": {<audit id>: [content_hash, event_time, shipped, [fields], [users]]},
     "i": {<change key>: [audit_id, event_time]}, "u": {<user key>: <event time>},
     "seen": <time>, "h": <held group, as in version 2>}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import orjson

VERSION = 2


class HeldAudit(TypedDict):
    """An audit held in a window: the audit object, its event time, its raw record's headers."""

    audit: dict[str, Any]
    time: float
    headers: dict[str, str]
    order: int  # arrival number within the group


class HeldGroup(TypedDict):
    """A record's open window (see window.py)."""

    opened: float  # processing time the first audit was held; the window runs from here
    audits: list[HeldAudit]


@dataclass(slots=True)
class SeenAudit:
    """An audit seen for the record: enough to tell copies from revisions and what it covered."""

    content_hash: str
    event_time: float
    shipped: bool
    fields: list[str]
    users: list[str]


@dataclass(slots=True)
class ShippedChange:
    """A change (or a create/destroy) already shipped for the record, and in which audit."""

    audit_id: str
    event_time: float


@dataclass(slots=True)
class RecordState:
    """Everything dedupe keeps about one record."""

    seen: float  # processing time of the last audit, for expiry
    audits: dict[str, SeenAudit] = field(default_factory=dict)
    changes: dict[str, ShippedChange] = field(default_factory=dict)
    users: dict[str, float] = field(default_factory=dict)  # user key -> event time shipped
    held: HeldGroup | None = None
    version: int = VERSION

    def touched(self, now: float) -> RecordState:
        """A copy to change (the maps are new; their entries are replaced, never changed)."""
        return RecordState(
            seen=now,
            audits=dict(self.audits),
            changes=dict(self.changes),
            users=dict(self.users),
            held=self.held,
        )


def encode(state: RecordState) -> bytes:
    """The table value of a state (always the current version)."""
    return orjson.dumps(state)


def decode(raw: bytes | None) -> RecordState | None:
    """A state from a table value of any version."""
    if raw is None:
        return None
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        return None
    if "version" in data:
        return _from_v2(data)
    return _from_v1(data)


def _from_v2(data: dict[str, Any]) -> RecordState:
    return RecordState(
        seen=float(data["seen"]),
        audits={key: SeenAudit(**value) for key, value in data["audits"].items()},
        changes={key: ShippedChange(**value) for key, value in data["changes"].items()},
        users=dict(data["users"]),
        held=data.get("held"),
    )


def _from_v1(data: dict[str, Any]) -> RecordState:
    audits = {}
    for audit_id, entry in (data.get("a") or {}).items():
        content_hash, event_time, shipped, fields, users = [*entry, None, None, None][:5]
        audits[audit_id] = SeenAudit(
            content_hash=content_hash,
            event_time=float(event_time),
            shipped=bool(shipped) if shipped is not None else True,
            fields=list(fields or ()),
            users=list(users or ()),
        )
    changes = {
        key: ShippedChange(audit_id=str(audit_id), event_time=float(at))
        for key, (audit_id, at) in (data.get("i") or {}).items()
    }
    return RecordState(
        seen=float(data.get("seen", 0.0)),
        audits=audits,
        changes=changes,
        users={key: float(at) for key, at in (data.get("u") or {}).items()},
        held=data.get("h"),
    )
