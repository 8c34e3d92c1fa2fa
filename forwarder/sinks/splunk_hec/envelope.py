"""HEC event envelopes: `{"time", "host", "source", "sourcetype", "index", "fields", "event"}`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson

from forwarder.sinks.config import JSON_FORMATS
from forwarder.sinks.ids import event_key
from forwarder.sinks.splunk_hec.config import SplunkHecSinkConfig

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def epoch_seconds(timestamp: Any) -> float | None:
    """ISO-8601 `@timestamp` as epoch seconds with milliseconds (None when absent or invalid)."""
    if not isinstance(timestamp, str) or not timestamp:
        return None
    try:
        when = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Whole milliseconds, then one division: the float prints as e.g. 1764252312.417, never in
    # exponent form (which HEC refuses).
    return ((when - _EPOCH) // _MILLISECOND) / 1000


def _lookup(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _field_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def indexed_field(value: Any) -> str | list[str] | None:
    """A value HEC can index: a string or a list of strings (objects and nulls are left out)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        texts = [text for item in value if (text := _field_text(item)) is not None]
        return texts or None
    return _field_text(value)


def account_host(doc: Mapping[str, Any]) -> str | None:
    """The Aha! account's host name (acme.aha.io) from the event's URL."""
    url = _lookup(doc, "url.full")
    if not isinstance(url, str):
        return None
    return urlsplit(url).hostname or None


class EnvelopeBuilder:
    """Builds one HEC envelope per event for one sink's config."""

    def __init__(self, config: SplunkHecSinkConfig) -> None:
        self._config = config
        self._json_event = config.format in JSON_FORMATS
        self._sourcetype = config.effective_sourcetype

    def build(self, doc: Mapping[str, Any], payload: bytes) -> bytes:
        """The envelope bytes of one event; `payload` is the event in the sink's format."""
        config = self._config
        head: dict[str, Any] = {}
        seconds = epoch_seconds(doc.get("@timestamp"))
        if seconds is not None:
            head["time"] = seconds
        host = config.host or account_host(doc)
        if host:
            head["host"] = host
        head["source"] = config.source
        head["sourcetype"] = self._sourcetype
        if config.index:
            head["index"] = config.index
        fields: dict[str, str | list[str]] = {}
        for path in config.indexed_fields:
            value = indexed_field(_lookup(doc, path))
            if value is not None:
                fields[path] = value
        if config.key_field:
            fields[config.key_field] = event_key(doc)
        if fields:
            head["fields"] = fields
        if self._json_event:
            # The encoder's JSON goes in as it is: no second parse and dump per event.
            event = payload
        else:
            event = orjson.dumps(payload.decode("utf-8", errors="replace"))
        return orjson.dumps(head)[:-1] + b',"event":' + event + b"}"
