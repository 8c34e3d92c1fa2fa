"""Idempotency ids for destinations that can drop a repeated event."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# Long enough that two revisions of one audit never collide, short enough for any id field.
_HASH_CHARS = 16
# Elasticsearch refuses an `_id` over 512 bytes, and with it the whole `_bulk` request; Aha!'s
# ids are about 20 digits, so only a hostile or broken id is ever this long.
MAX_KEY_BYTES = 128


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
    if ident and len(ident.encode()) > MAX_KEY_BYTES:
        ident = "sha256-" + hashlib.sha256(ident.encode()).hexdigest()
    if ident and digest:
        return f"{ident}-{digest}"
    if ident:
        return ident
    if digest:
        return digest
    # Neither is set only for events built outside the pipeline: the content is all there is.
    content = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(content).hexdigest()[:_HASH_CHARS]
