"""Output formats: one encoder per format, each a pure function of a normalized ECS event."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

# An encoder turns one normalized ECS event into the bytes of one record in its format
# (no trailing newline; framing is the transport's business).
Encoder = Callable[[Mapping[str, Any]], bytes]

# name -> "module:factory"; a factory takes the format options and returns an Encoder.
# Imported lazily so a process only loads the formats it uses.
_REGISTRY: dict[str, str] = {
    "ecs": "forwarder.formats.ecs:encoder",
    "cef": "forwarder.formats.cef:encoder",
    "leef": "forwarder.formats.leef:encoder",
    "syslog-cef": "forwarder.formats.syslog:cef_encoder",
    "syslog-leef": "forwarder.formats.syslog:leef_encoder",
    "syslog-json": "forwarder.formats.syslog:json_encoder",
    "ocsf": "forwarder.formats.ocsf:encoder",
}


def format_names() -> list[str]:
    """Every format name `encoder_for` accepts."""
    return sorted(_REGISTRY)


def encoder_for(name: str, options: Any = None) -> Encoder:
    """The encoder of a format, configured with its options (the `formats` config section)."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown format {name!r}; expected one of {', '.join(format_names())}"
        ) from None
    module_name, _, factory = target.partition(":")
    encoder: Encoder = getattr(importlib.import_module(module_name), factory)(options)
    return encoder
