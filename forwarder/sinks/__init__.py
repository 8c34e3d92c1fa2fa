"""SIEM sinks: one module per sink, loaded by name."""

from __future__ import annotations

import importlib
from typing import Any

from forwarder.sinks.base import Sink, SinkError

# Imported lazily so an optional dependency is only needed by the sink that uses it.
_REGISTRY: dict[str, str] = {
    "file": "forwarder.sinks.file.sink:FileSink",
}


def create_sink(config: Any) -> Sink:
    """The sink instance for one sink config (its `type` selects the class)."""
    module_name, _, class_name = _REGISTRY[config.type].partition(":")
    module = importlib.import_module(module_name)
    sink: Sink = getattr(module, class_name)(config)
    return sink


__all__ = ["Sink", "SinkError", "create_sink"]
