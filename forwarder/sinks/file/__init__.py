"""File sink: events appended as lines to a local file."""

from forwarder.sinks.file.config import FileSinkConfig
from forwarder.sinks.file.sink import FileSink

__all__ = ["FileSink", "FileSinkConfig"]
