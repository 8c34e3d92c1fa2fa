"""ECS JSON: the canonical form, as it travels on the events topic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from forwarder.formats import Encoder


def encode(event: Mapping[str, Any]) -> bytes:
    """One ECS event as compact JSON (orjson never emits a raw newline inside a document)."""
    return orjson.dumps(event)


def encoder(options: Any = None) -> Encoder:
    """The ECS encoder (it has no options)."""
    return encode
