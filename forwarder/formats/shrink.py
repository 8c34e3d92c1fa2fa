"""Smaller copies of an event, for a message that must fit a size (RFC 3164: 1024 octets).

An encoder run on a smaller event still writes a whole CEF line, LEEF line or JSON document, which
a cut through its bytes would not. Two steps, each tried at the largest size that fits:
1. `shrunk(event, size)`: every text longer than `size` characters is cut to `size`, its last
   character an ellipsis. Texts of at most `TEXT_FLOOR` characters are never cut this way, so
   ids, times, actions and addresses stay whole.
2. `essential(event)`: only the fields of `ESSENTIAL` (who did what to which record, when, where
   to see it), with texts and lists then shrunk as far as needed.
Both add `TRUNCATED_TAG` to the event's `tags`, which syslog-json shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from forwarder.formats.options import MAPPINGS, dig

ELLIPSIS = "\u2026"
TEXT_FLOOR = 64
TRUNCATED_TAG = "truncated"
# Deeper values are kept as they are (normalized events are a few levels deep).
MAX_DEPTH = 64

ESSENTIAL: tuple[tuple[str, ...], ...] = (
    ("@timestamp",),
    ("event", "id"),
    ("event", "action"),
    ("event", "category"),
    ("event", "outcome"),
    ("user", "id"),
    ("user", "name"),
    ("user", "email"),
    ("organization", "id"),
    ("organization", "name"),
    ("url", "full"),
    ("aha", "event"),
    ("aha", "audit", "action"),
    ("aha", "audit", "auditable", "type"),
    ("aha", "audit", "auditable", "id"),
    ("message",),
)


def shrunk(value: Any, size: int, *, lists: bool = False, depth: int = 0) -> Any:
    """`value` with each text over `size` characters cut to `size` (ending in an ellipsis) and,
    with `lists`, each list cut to its first `size` items."""
    if isinstance(value, str):
        return value if len(value) <= size else value[: size - 1] + ELLIPSIS
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, list):
        items = value[:size] if lists else value
        return [shrunk(item, size, lists=lists, depth=depth + 1) for item in items]
    if isinstance(value, MAPPINGS):
        return {
            key: shrunk(item, size, lists=lists, depth=depth + 1) for key, item in value.items()
        }
    return value


def largest(value: Any, *, lists: bool = False, depth: int = 0) -> int:
    """The length of the longest text (and, with `lists`, list) anywhere in `value`."""
    if isinstance(value, str):
        return len(value)
    if depth >= MAX_DEPTH:
        return 0
    items: list[Any]
    if isinstance(value, list):
        items = value
    elif isinstance(value, MAPPINGS):
        items = list(value.values())
    else:
        return 0
    own = len(items) if lists and isinstance(value, list) else 0
    return max([own, *(largest(item, lists=lists, depth=depth + 1) for item in items)])


def tagged(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `event` whose `tags` end with `TRUNCATED_TAG`."""
    tags = event.get("tags")
    tags = [*tags] if isinstance(tags, list) else [] if tags is None else [tags]
    return {**event, "tags": [*tags, TRUNCATED_TAG]}


def essential(event: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `ESSENTIAL` that `event` has, in the same places."""
    kept: dict[str, Any] = {}
    for path in ESSENTIAL:
        value = dig(event, *path)
        if value is None:
            continue
        level = kept
        for key in path[:-1]:
            level = level.setdefault(key, {})
        level[path[-1]] = value
    return kept


def largest_fit(attempt: Callable[[int], bytes], low: int, high: int, limit: int) -> bytes | None:
    """The output of `attempt(size)` for the largest size in low..high whose output is at most
    `limit` octets long (assuming a smaller size never makes it longer), or None."""
    best: bytes | None = None
    while low <= high:
        size = (low + high) // 2
        output = attempt(size)
        if len(output) <= limit:
            best, low = output, size + 1
        else:
            high = size - 1
    return best
