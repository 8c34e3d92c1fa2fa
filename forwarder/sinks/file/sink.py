"""File sink: appends events as NDJSON lines, fsync'd per batch."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import BinaryIO

from forwarder.sinks.file.config import FileSinkConfig
from forwarder.sinks.base import SinkError


class FileSink:
    """Append each event as one line to a file."""

    def __init__(self, config: FileSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        """Create the folder and open the file for appending."""
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self._config.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._config.path, "ab")  # noqa: SIM115 - kept open for the sink's life

    async def healthcheck(self) -> None:
        """The file can be opened for appending."""
        try:
            await asyncio.to_thread(self._open if self._file is None else lambda: None)
        except OSError as error:
            raise SinkError(
                f"cannot open {self._config.path}: {error.strerror}", retriable=True
            ) from None

    async def send_batch(self, events: Sequence[bytes]) -> None:
        """Append the batch; with fsync on, return only once it is on disk."""
        # orjson never writes a raw newline inside a document, so one event is one line.
        payload = b"".join(event + b"\n" for event in events)
        try:
            await asyncio.to_thread(self._write, payload)
        except OSError as error:
            raise SinkError(
                f"cannot write {self._config.path}: {error.strerror}", retriable=True
            ) from None

    def _write(self, payload: bytes) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        start = self._file.tell()
        try:
            self._file.write(payload)
            self._file.flush()
            if self._config.fsync:
                os.fsync(self._file.fileno())
        except OSError:
            self._discard_torn_tail(start)
            raise

    def _discard_torn_tail(self, size: int) -> None:
        # A retry appends the whole batch again: cut the torn part so no line is half-written.
        assert self._file is not None
        # The buffered rest that fails to flush here is exactly what is cut below.
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = None
        try:
            with open(self._config.path, "r+b") as torn:
                torn.truncate(size)
        except OSError:
            pass  # the retry reports the lasting error

    async def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None
