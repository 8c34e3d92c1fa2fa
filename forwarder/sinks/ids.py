"""Idempotency ids for destinations that can drop a repeated event."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# Long enough that two revisions of one audit never collide, short enough for any id field.
_HASH_CHARS = 16


def event_key(doc: Mapping[str, Any]) -> str:
    """A normalized event's unique id: `{event.id}-{event.hash[:16]}`, else event.id, else a hash.

    A collated revision can reuse an audit id with other content; the body hash tells them apart
    while a resend of the same body keeps the same key.
    """
    event = doc.get("event") or {}
    ident = event.get("id")
    digest = event.get("hash")
    ident = str(ident) if ident not in (None, "") else None
    digest = str(digest)[:_HASH_CHARS] if digest else None
    if ident and digest:
        return f"{ident}-{digest}"
    if ident:
        return ident
    if digest:
        return digest
    # Neither is set only for events built outside the pipeline: the content is all there is.
    content = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(content).hexdigest()[:_HASH_CHARS]
