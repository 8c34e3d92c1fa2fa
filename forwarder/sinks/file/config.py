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
    fsync: bool = True
    """fsync after every batch (and the folder after a rotation) before acknowledging it."""
    rotate_max_bytes: int | None = Field(default=None, ge=1024)
    """Size at which the file is rotated, between batches; null: never rotate."""
    rotate_keep: int = Field(default=5, ge=1, le=1000)
    """Rotated files kept (`path.1` is the newest, `path.N` the oldest); older ones are deleted."""
