"""Config of the file sink."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from forwarder.sinks.config import SinkConfigBase


class FileSinkConfig(SinkConfigBase):
    type: Literal["file"]
    path: Path
    """File the events are appended to, one per line."""
    batch_max_seconds: float = Field(default=0.5, gt=0)
    """Longest time an event waits for its batch to fill."""
    fsync: bool = True
    """fsync after every batch before acknowledging it."""
