"""The users of an audit in one shape, whichever way the audit came.

Aha!'s webhook page describes `contributors` as an array of user records; the REST API's own
example sends `[{"user": {...}}]` on every audit, usually with just the author in it. Both are
brought to the flat form here, once, where a body enters the pipeline (`normalize.parse_body`),
where an audit of the API is wrapped (`backfill.wrap`) and where the raw topic is read
(`backfill.seen`); dedupe, window mode and normalization then read only the flat form.

An audit merges others' work only when it names a contributor besides its author: a list that
holds just the author (what the API sends on every audit) says nothing more than `user` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_IDENTITY = ("id", "email", "name")


def user_key(user: Any) -> str | None:
    """A stable key for a user record: the id, else the e-mail, else the name."""
    if not isinstance(user, Mapping):
        return None
    for name in _IDENTITY:
        value = user.get(name)
        if value not in (None, ""):
            return f"{name}:{value}"
    return None


def _wrapped(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and isinstance(item.get("user"), Mapping)
        and all(item.get(name) in (None, "") for name in _IDENTITY)
    )


def user_record(item: Any) -> Any:
    """A contributor as a user record: `{"user": {...}}` unwrapped, anything else as it is.

    Keys beside `user` in a wrapped item are kept (the user's own win), so nothing is lost.
    """
    if not _wrapped(item):
        return item
    inner = dict(item["user"])
    for name, value in item.items():
        if name != "user":
            inner.setdefault(name, value)
    return inner


def canonical_audit(audit: Mapping[str, Any]) -> Mapping[str, Any]:
    """The audit with its contributors as a list of flat user records (the same object when
    they already are, or when it has none)."""
    contributors = audit.get("contributors")
    if isinstance(contributors, Mapping):
        contributors = [contributors]
    elif not isinstance(contributors, list) or not any(map(_wrapped, contributors)):
        return audit
    return {**audit, "contributors": [user_record(item) for item in contributors]}


def canonical_body(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A webhook body whose audit (if it is one) has flat contributors."""
    audit = body.get("audit")
    if body.get("event") != "audit" or not isinstance(audit, Mapping):
        return body
    canonical = canonical_audit(audit)
    return body if canonical is audit else {**body, "audit": canonical}


def contributors(audit: Mapping[str, Any]) -> list[Any]:
    """The contributors of a canonical audit as a list (none for null or a missing key)."""
    found = audit.get("contributors")
    if found is None:
        return []
    return found if isinstance(found, list) else [found]


def others(audit: Mapping[str, Any]) -> list[str]:
    """Keys of the contributors other than the author, in order, each once."""
    author = user_key(audit.get("user"))
    keys: list[str] = []
    for contributor in contributors(audit):
        key = user_key(contributor)
        if key and key != author and key not in keys:
            keys.append(key)
    return keys


def merges(audit: Mapping[str, Any]) -> bool:
    """Whether the audit carries the work of users besides its author (collation did that)."""
    return bool(others(audit))
