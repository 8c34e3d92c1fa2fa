"""Dedupe `window` mode: hold a record's audits for a while, then ship one merged audit.

Pure functions over one record's held group; the Faust agent stores the group in a table and a
timer asks the agent (through a tick record on the partition's own tick topic) to flush it.

Merging (docs/decisions/0006-window-mode.md): the merged audit lists every source audit id,
every contributor, and per field the last value with who set it. "Last" is by *effective* time:
a collated audit's values are those at the end of the burst it covers, so its effective time is
that of the newest held audit it covers (same fields, users among its own), even when it reuses
the first audit's id and `created_at`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forwarder.core import dedupe
from forwarder.core.normalize import flag
from forwarder.core.state import HeldAudit, HeldGroup
from forwarder.core.users import contributors, merges

# A held group, kept in the record's dedupe state (state.py).
Group = HeldGroup


def hold(
    group: Group | None,
    audit: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    now: float,
    event_time: float,
) -> Group:
    """The group with `audit` added (a new group opens now)."""
    opened = now if group is None else group["opened"]
    audits = [] if group is None else [*group["audits"]]
    held: HeldAudit = {
        "audit": dict(audit),
        "time": event_time,
        "headers": dict(headers),
        "order": len(audits),
    }
    audits.append(held)
    return {"opened": opened, "audits": audits}


def due(group: Group, *, now: float, window: float) -> bool:
    """Whether the group's window has passed."""
    return bool(now - group["opened"] >= window)


def _users(audit: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [audit.get("user"), *contributors(audit)]
    return [user for user in found if isinstance(user, Mapping)]


def _fields(audit: Mapping[str, Any]) -> set[str]:
    return {
        str(change.get("field_name"))
        for change in audit.get("changes") or ()
        if isinstance(change, Mapping)
    }


def _collated(entry: Mapping[str, Any]) -> bool:
    # Not "has contributors": the REST API lists the author as one on every audit.
    return merges(entry["audit"])


def effective_time(entry: Mapping[str, Any], entries: list[Mapping[str, Any]]) -> float:
    """When the values of an audit were current: for a collated audit, at the end of its burst."""
    at = float(entry["time"])
    if not _collated(entry):
        return at
    fields = _fields(entry["audit"])
    users = {dedupe.user_key(user) for user in _users(entry["audit"])}
    for other in entries:
        if other is entry or _collated(other):
            continue
        if (
            _fields(other["audit"]) <= fields
            and dedupe.user_key(other["audit"].get("user")) in users
        ):
            at = max(at, float(other["time"]))
    return at


def _rank(entry: Mapping[str, Any], entries: list[Mapping[str, Any]]) -> tuple[float, int, int]:
    # At equal effective time a collated audit (the burst's summary) wins, then arrival order.
    return (effective_time(entry, entries), 1 if _collated(entry) else 0, int(entry["order"]))


_ACTION_PRIORITY = {"destroy": 3, "create": 2, "update": 1}


def merge(group: Group) -> tuple[dict[str, Any], dict[str, Any]]:
    """The merged webhook body of a group, and what to record about it in `aha.collation`.

    The body has the shape Aha! sends, so it is normalized like any other; the second value
    gives, per merged change (by index), who set the value and in which audit, and the ids of
    every source audit.
    """
    entries: list[Mapping[str, Any]] = list(group["audits"])
    ordered = sorted(entries, key=lambda entry: _rank(entry, entries))
    latest = ordered[-1]["audit"]
    # Per field, the value of the audit that set it last; who set it is the author of a plain
    # audit carrying that same value when there is one (a collated audit names its contributors,
    # not who set which field).
    last: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    for entry in ordered:
        for change in entry["audit"].get("changes") or ():
            if isinstance(change, Mapping):
                last[str(change.get("field_name"))] = (change, entry)
    changes: list[dict[str, Any]] = []
    changed_by: list[dict[str, Any]] = []
    for change, entry in last.values():
        setter = entry
        if _collated(entry):
            for other in reversed(ordered):
                if not _collated(other) and any(
                    isinstance(c, Mapping)
                    and c.get("field_name") == change.get("field_name")
                    and c.get("value") == change.get("value")
                    for c in other["audit"].get("changes") or ()
                ):
                    setter = other
                    break
        changes.append(dict(change))
        changed_by.append(
            {"audit_id": str(setter["audit"].get("id")), "user": setter["audit"].get("user")}
        )
    # The author is the newest audit's; everyone else who took part is a contributor.
    author = latest.get("user")
    author_key = dedupe.user_key(author)
    contributors: list[Mapping[str, Any]] = []
    seen = {author_key}
    for entry in ordered:
        for user in _users(entry["audit"]):
            key = dedupe.user_key(user)
            if key not in seen:
                seen.add(key)
                contributors.append(user)
    action = max(
        (str(entry["audit"].get("audit_action") or "update") for entry in entries),
        key=lambda name: _ACTION_PRIORITY.get(name, 0),
    )
    sources = []
    for entry in sorted(entries, key=lambda entry: (float(entry["time"]), int(entry["order"]))):
        audit_id = str(entry["audit"].get("id"))
        if audit_id not in sources:
            sources.append(audit_id)
    merged = {
        **latest,
        "id": sources[0],
        "audit_action": action,
        "created_at": max(
            (
                entry["audit"].get("created_at")
                for entry in entries
                if entry["audit"].get("created_at")
            ),
            default=latest.get("created_at"),
        ),
        "user": author,
        "contributors": contributors,
        "changes": changes,
        "interesting": any(flag(entry["audit"].get("interesting")) for entry in entries),
    }
    info = {"sources": sources, "changed_by": changed_by}
    return {"event": "audit", "audit": merged}, info


def annotate(doc: dict[str, Any], info: Mapping[str, Any], *, held_seconds: float) -> None:
    """Record in a normalized merged event its sources and who set each change."""
    aha = doc["aha"]
    changes = aha.get("audit", {}).get("changes") or []
    for change, setter in zip(changes, info["changed_by"], strict=False):
        change["audit_id"] = setter["audit_id"]
        user = setter.get("user")
        if isinstance(user, Mapping):
            change["changed_by"] = {
                key: str(user[key]) for key in ("id", "name", "email") if user.get(key)
            }
    event_id = doc.get("event", {}).get("id")
    aha["collation"] = {
        "mode": "window",
        "sources": list(info["sources"]),
        "supersedes": [source for source in info["sources"] if source != event_id],
        "held_seconds": round(held_seconds, 3),
    }


def first_headers(group: Group) -> dict[str, str]:
    """The headers of the group's first-held audit (its arrival starts end-to-end latency)."""
    return dict(group["audits"][0]["headers"]) if group["audits"] else {}
