"""File sink: appends events as lines, fsync'd per batch, optionally rotated by size."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from forwarder.sinks.base import DELIVERED, BatchResult, Retry, SinkError
from forwarder.sinks.file.config import FileSinkConfig

log = logging.getLogger("forwarder.sinks.file")


class FileSink:
    """Append each event as one line to a file."""

    def __init__(self, config: FileSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._file: BinaryIO | None = None

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The line for one event: its payload as encoded in the configured format."""
        return payload

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
            raise SinkError(f"cannot open {self._config.path}: {error.strerror}") from None

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """Append the batch; with fsync on, delivered only once it is on disk."""
        # orjson never writes a raw newline inside a document, so one event is one line.
        payload = b"".join(event + b"\n" for event in events)
        try:
            await asyncio.to_thread(self._write, payload)
        except OSError as error:
            # A full or read-only disk, a folder removed: an operator or time fixes it.
            return BatchResult.of(Retry(f"cannot write {self._config.path}: {error.strerror}"))
        return DELIVERED

    def _write(self, payload: bytes) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        start = self._file.tell()
        limit = self._config.rotate_max_bytes
        # Rotate before the batch, never inside it: a batch always lands whole in one file.
        if limit is not None and start > 0 and start + len(payload) > limit:
            self._rotate()
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

    def _rotate(self) -> None:
        """Shift `path.1..N-1` up by one (dropping `path.N`), move `path` to `path.1`, reopen."""
        assert self._file is not None
        path = self._config.path
        keep = self._config.rotate_keep
        self._file.close()
        self._file = None
        with contextlib.suppress(FileNotFoundError):
            _numbered(path, keep).unlink()
        for number in range(keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                _numbered(path, number).rename(_numbered(path, number + 1))
        path.rename(_numbered(path, 1))
        self._open()
        if self._config.fsync:
            # The renames are durable only once the folder itself is on disk.
            _fsync_folder(path.parent)
        log.info("rotated file", extra={"sink": self.name, "path": str(path), "keep": keep})

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


def _numbered(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
