"""Dedupe decisions: exact copies, collated audits and their parts. Pure functions over one record's state.

The rule (docs/decisions/0004-dedupe-rule.md): an audit ships unless everything it carries — each
change (field and value) and each user — was already shipped for its record within the collation
horizon. Exact copies (same id, same content) are dropped. The same rule holds for pre-collation
and collated audits, so the outcome does not depend on the order they arrive in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from forwarder.core import state as stored
from forwarder.core.state import RecordState, SeenAudit, ShippedChange
from forwarder.core.users import contributors, merges, others, user_key

State = RecordState

_SEP = "\x1f"


@dataclass(frozen=True)
class Decision:
    """What to do with one audit, and the record's state afterwards."""

    ship: bool
    reason: str | None  # why it was dropped: "exact" or "collated"
    revision: bool  # same id as an earlier audit, different content
    collated: bool  # merges users besides its author, or revises an id
    supersedes: list[str] = field(default_factory=list)
    repeated: list[int] = field(default_factory=list)  # indices of changes shipped before
    state: State = field(default_factory=lambda: RecordState(seen=0.0))


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _changes(audit: Mapping[str, Any]) -> list[Any]:
    changes = audit.get("changes")
    if changes is None:
        return []
    return changes if isinstance(changes, list) else [changes]


def change_key(change: Any) -> str:
    """A change's identity: its field and its exact value."""
    if isinstance(change, Mapping):
        return f"{change.get('field_name')}{_SEP}{_canonical(change.get('value'))}"
    return f"None{_SEP}{_canonical(change)}"


def _field(change: Any) -> str:
    return str(change.get("field_name")) if isinstance(change, Mapping) else "None"


def audit_items(audit: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The change keys and user keys an audit carries."""
    items = [change_key(change) for change in _changes(audit)]
    action = audit.get("audit_action")
    if action != "update" or not items:
        # A create or destroy is itself something to ship; so is an update that names nothing.
        items.append(f"@{action}{_SEP}{audit.get('id')}" if not items else f"@{action}")
    users = [key for key in (user_key(audit.get("user")),) if key]
    for contributor in contributors(audit):
        key = user_key(contributor)
        if key and key not in users:
            users.append(key)
    return items, users


def content_hash(audit: Mapping[str, Any]) -> str:
    """Hash of what an audit says (not how it was formatted), to tell copies from revisions.

    Contributors count without the author: the REST API lists the author as a contributor of
    every audit, the webhook does not, and both say the same.
    """
    projection = {
        "action": audit.get("audit_action"),
        "record": [audit.get("auditable_type"), audit.get("auditable_id")],
        "user": user_key(audit.get("user")),
        "contributors": sorted(others(audit)),
        "changes": [change_key(change) for change in _changes(audit)],
    }
    return hashlib.sha256(_canonical(projection).encode()).hexdigest()[:32]


def _prune(state: State, newest: float, horizon: float) -> None:
    floor = newest - horizon
    state.changes = {k: v for k, v in state.changes.items() if v.event_time >= floor}
    state.users = {k: at for k, at in state.users.items() if at >= floor}


def _bound_audits(state: State, max_audits: int) -> None:
    audits = state.audits
    if len(audits) > max_audits:
        oldest_first = sorted(audits, key=lambda audit_id: audits[audit_id].event_time)
        for audit_id in oldest_first[: len(audits) - max_audits]:
            del audits[audit_id]


def _shipped(key: str, table: Mapping[str, Any], event_time: float, horizon: float) -> bool:
    entry = table.get(key)
    if entry is None:
        return False
    at = entry.event_time if isinstance(entry, ShippedChange) else entry
    return bool(abs(at - event_time) <= horizon)


def decide(
    state: State | None,
    audit: Mapping[str, Any],
    *,
    event_time: float,
    now: float,
    horizon: float,
    max_audits: int = 1000,
) -> Decision:
    """Decide about one audit of a record given what was seen of that record before."""
    state = _fresh(state, now)
    audit_id = str(audit.get("id"))
    digest = content_hash(audit)
    items, users = audit_items(audit)
    fields = sorted({_field(change) for change in _changes(audit)})
    earlier = state.audits.get(audit_id)
    if earlier is not None and earlier.content_hash == digest:
        return Decision(False, "exact", False, False, state=state)
    revision = earlier is not None
    collated = revision or merges(audit)
    newest = max([event_time, *(entry.event_time for entry in state.audits.values())])
    _prune(state, newest, horizon)

    def shipped(key: str, table: Mapping[str, Any]) -> bool:
        return _shipped(key, table, event_time, horizon)

    covered = all(shipped(key, state.changes) for key in items) and all(
        shipped(key, state.users) for key in users
    )
    state.audits[audit_id] = SeenAudit(digest, event_time, not covered, fields, users)
    _bound_audits(state, max_audits)
    if covered:
        return Decision(False, "collated", revision, collated, state=state)

    repeated = [
        index
        for index, key in enumerate(items[: len(_changes(audit))])
        if shipped(key, state.changes)
    ]
    for key in items:
        if not shipped(key, state.changes):
            state.changes[key] = ShippedChange(audit_id, event_time)
    for key in users:
        state.users[key] = event_time
    supersedes: list[str] = []
    if collated:
        # An earlier audit is covered when its fields and users are all in this one.
        for other_id, other in state.audits.items():
            if (
                other_id != audit_id
                and abs(other.event_time - event_time) <= horizon
                and set(other.fields) <= set(fields)
                and set(other.users) <= set(users)
            ):
                supersedes.append(other_id)
    return Decision(True, None, revision, collated, sorted(supersedes), repeated, state)


def annotate(event: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """Mark a shipped ECS event with what dedupe knows: repeats and what it supersedes."""
    changes = event.get("aha", {}).get("audit", {}).get("changes")
    if isinstance(changes, list):
        for index in decision.repeated:
            if index < len(changes):
                changes[index]["repeat"] = True
    if decision.collated or decision.supersedes:
        event["aha"]["collation"] = {
            "supersedes": decision.supersedes,
            "revision": decision.revision,
        }
    return event


def expired(state: State, now: float, retention: float) -> bool:
    """Whether a record's state has been idle longer than the retention."""
    return bool(now - state.seen > retention)


def encode_state(state: State) -> bytes:
    """Table value of a state (the current version, state.py)."""
    return stored.encode(state)


def decode_state(raw: bytes | None) -> State | None:
    """State from a table value of any version."""
    return stored.decode(raw)


def subject(body: Mapping[str, Any], body_sha256: str) -> Mapping[str, Any]:
    """What dedupe decides about: the audit, or for other event types a stand-in that only
    recognizes exact copies (same id, same body)."""
    event_type = body.get("event")
    inner = body.get(event_type) if isinstance(event_type, str) else None
    if event_type == "audit" and isinstance(inner, Mapping):
        return inner
    ident = inner.get("id") if isinstance(inner, Mapping) else None
    return {
        "id": f"{event_type}:{ident if ident is not None else body_sha256}",
        "audit_action": f"@{event_type}",
        "changes": [{"field_name": "@body", "value": body_sha256}],
    }


def _fresh(state: State | None, now: float) -> State:
    return RecordState(seen=now) if state is None else state.touched(now)


def observe(
    state: State | None,
    audit: Mapping[str, Any],
    *,
    event_time: float,
    now: float,
    max_audits: int = 1000,
) -> tuple[str | None, bool, State]:
    """Window mode, on arrival: ("exact", False, state) for a copy, else (None, revision, state)
    with the audit remembered as seen (not yet shipped)."""
    state = _fresh(state, now)
    audit_id = str(audit.get("id"))
    digest = content_hash(audit)
    earlier = state.audits.get(audit_id)
    if earlier is not None and earlier.content_hash == digest:
        return "exact", False, state
    _, users = audit_items(audit)
    fields = sorted({_field(change) for change in _changes(audit)})
    state.audits[audit_id] = SeenAudit(digest, event_time, False, fields, users)
    _bound_audits(state, max_audits)
    return None, earlier is not None, state


def decide_group(
    state: State | None,
    audits: Sequence[tuple[Mapping[str, Any], float]],
    *,
    now: float,
    horizon: float,
) -> tuple[bool, State]:
    """Window mode, at flush: whether a held group ships, with every source's changes and users
    marked shipped when it does.

    The group is suppressed only when every change and every user of every audit in it was
    already shipped for the record within the horizon (a collated audit arriving after the
    window that shipped its parts): the realtime rule, applied to the group as a whole.
    """
    state = _fresh(state, now)
    if not audits:
        return False, state
    newest = max(
        [time for _, time in audits] + [entry.event_time for entry in state.audits.values()]
    )
    _prune(state, newest, horizon)
    covered = True
    for audit, event_time in audits:
        items, users = audit_items(audit)
        if not all(_shipped(key, state.changes, event_time, horizon) for key in items) or not all(
            _shipped(key, state.users, event_time, horizon) for key in users
        ):
            covered = False
            break
    if covered:
        return False, state
    for audit, event_time in audits:
        audit_id = str(audit.get("id"))
        items, users = audit_items(audit)
        for key in items:
            if not _shipped(key, state.changes, event_time, horizon):
                state.changes[key] = ShippedChange(audit_id, event_time)
        for key in users:
            state.users[key] = event_time
        seen = state.audits.get(audit_id)
        if seen is not None:
            state.audits[audit_id] = replace(seen, shipped=True)
    return True, state
