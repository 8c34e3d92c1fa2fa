"""Generic HTTPS sink: batches POSTed or PUT to any endpoint as JSON or NDJSON."""

from forwarder.sinks.http.config import HttpSinkConfig

__all__ = ["HttpSinkConfig"]
