"""The ingest's local durable spool: fsync'd segment files that drain to Kafka in order.

Aha! posts each webhook once and never retries, so while Kafka is down or slow the ingest
appends the record here, answers, and drains the spool to Kafka once Kafka is back.
The on-disk format and its trade-offs are in docs/decisions/0002-spool-format.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from forwarder.metrics import SpoolMetrics

log = logging.getLogger("forwarder.ingest.spool")

# Frame: magic, payload length (u32 BE), CRC32 of length bytes + payload (u32 BE), payload.
MAGIC = b"AHS\x01"
_HEADER = struct.Struct(">4sII")
HEADER_SIZE = _HEADER.size
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF

# Cursor file: magic, segment id (u64), offset (u64), CRC32 of the preceding 20 bytes.
_CURSOR_MAGIC = b"AHC\x01"
_CURSOR = struct.Struct(">4sQQ")
CURSOR_NAME = "cursor"
_CURSOR_TMP = "cursor.tmp"
_LOCK_NAME = "lock"
SEGMENT_SUFFIX = ".spool"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.spool$")

QUARANTINE_DIR = "quarantine"
QUARANTINE_SUFFIX = ".record"
HEADER_QUARANTINE_ERROR = "quarantine-error"
HEADER_QUARANTINED_AT = "quarantined-at"

_READ_CHUNK = 1024 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One Kafka record as it will be produced when the spool drains."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class SpoolFull(Exception):
    """The spool cannot take the record: size limit reached or the disk is full (ENOSPC/EDQUOT). Message says which."""


class SpoolInUse(Exception):
    """Another open Spool (this process or another) holds the spool folder's lock."""


@dataclass(frozen=True)
class RecoveryReport:
    """What `Spool.open()` found on disk."""

    segments: int
    """Segment files holding undrained records."""
    records: int
    """Undrained records."""
    bytes: int
    """Bytes of undrained frames."""
    corrupt_bytes: int
    """Bytes of invalid frames skipped or truncated (torn tails of interrupted writes)."""


def segment_name(segment_id: int) -> str:
    """File name of a segment: zero-padded so that name order is append order."""
    return f"{segment_id:020d}{SEGMENT_SUFFIX}"


def encode_record(record: SpoolRecord) -> bytes:
    """The payload of a frame: length-prefixed topic, key, headers, then value."""
    topic = record.topic.encode("utf-8")
    if len(topic) > _MAX_U16:
        raise ValueError("topic name longer than 65535 bytes")
    if len(record.headers) > _MAX_U16:
        raise ValueError("more than 65535 headers")
    parts = [_U16.pack(len(topic)), topic, _U32.pack(len(record.key)), record.key]
    parts.append(_U16.pack(len(record.headers)))
    for name, value in record.headers:
        raw_name = name.encode("utf-8")
        if len(raw_name) > _MAX_U16:
            raise ValueError("header name longer than 65535 bytes")
        parts += [_U16.pack(len(raw_name)), raw_name, _U32.pack(len(value)), value]
    parts += [_U32.pack(len(record.value)), record.value]
    return b"".join(parts)


def decode_record(payload: bytes) -> SpoolRecord:
    """The record in a frame's payload; ValueError if it is malformed."""
    view = memoryview(payload)
    position = 0

    def take(size: int) -> bytes:
        nonlocal position
        if position + size > len(view):
            raise ValueError("spool payload ends inside a field")
        chunk = bytes(view[position : position + size])
        position += size
        return chunk

    def length(packer: struct.Struct) -> int:
        value: int = packer.unpack(take(packer.size))[0]
        return value

    try:
        topic = take(length(_U16)).decode("utf-8")
        key = take(length(_U32))
        headers = []
        for _ in range(length(_U16)):
            name = take(length(_U16)).decode("utf-8")
            headers.append((name, take(length(_U32))))
        value = take(length(_U32))
    except UnicodeDecodeError as error:
        raise ValueError(f"spool payload has invalid UTF-8: {error}") from None
    if position != len(view):
        raise ValueError("spool payload has trailing bytes")
    return SpoolRecord(topic, key, value, tuple(headers))


def encode_frame(record: SpoolRecord) -> bytes:
    """One record framed for a segment file."""
    payload = encode_record(record)
    if len(payload) > _MAX_U32:
        raise ValueError("record larger than 4 GiB")
    size = _U32.pack(len(payload))
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload, zlib.crc32(size))) + payload


class _Reader:
    """Buffered positional reads of one segment file up to a fixed end."""

    def __init__(self, fd: int, end: int) -> None:
        self.fd = fd
        self.end = end
        self._base = 0
        self._buffer = b""

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.end - offset))
        start = offset - self._base
        if start < 0 or start + size > len(self._buffer):
            want = max(0, min(max(size, _READ_CHUNK), self.end - offset))
            self._buffer = os.pread(self.fd, want, offset)
            self._base = offset
            start = 0
        return self._buffer[start : start + size]

    def payload_at(self, offset: int) -> bytes | None:
        """The payload of the valid frame starting at `offset`, or None."""
        header = self.read(offset, HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return None
        magic, size, crc = _HEADER.unpack(header)
        if magic != MAGIC or size > self.end - offset - HEADER_SIZE:
            return None
        payload = self.read(offset + HEADER_SIZE, size)
        if len(payload) != size or zlib.crc32(payload, zlib.crc32(header[4:8])) != crc:
            return None
        return payload

    def next_frame(self, offset: int) -> int:
        """Where the next valid frame after a bad one at `offset` starts (`end` if none)."""
        position = offset + 1
        while position < self.end:
            window = self.read(position, _READ_CHUNK)
            found = window.find(MAGIC)
            if found < 0:
                if position + len(window) >= self.end:
                    break
                position += max(1, len(window) - len(MAGIC) + 1)
                continue
            if self.payload_at(position + found) is not None:
                return position + found
            position += found + 1
        return self.end


def _frames(reader: _Reader, start: int) -> Iterator[tuple[int, int, bytes | None]]:
    """(offset, size, payload) of each frame from `start`; payload None for a corrupt stretch."""
    offset = start
    while offset < reader.end:
        payload = reader.payload_at(offset)
        if payload is None:
            resume = reader.next_frame(offset)
            yield offset, resume - offset, None
            offset = resume
        else:
            yield offset, HEADER_SIZE + len(payload), payload
            offset += HEADER_SIZE + len(payload)


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int
    """Bytes written and fsync'd (the drain never reads past them)."""
    records: int
    """Undrained records."""
    pending: int
    """Bytes of undrained frames."""


@dataclass(slots=True)
class _ActiveFile:
    id: int
    path: Path
    fd: int
    size: int
    broken: bool = False
    """A failed write could not be cut back: nothing may be appended after it."""


@dataclass(slots=True)
class _Drained:
    segment: int
    end: int
    size: int
    record: SpoolRecord


class Spool:
    """Append-only segment files with group-committed fsync'd appends and an ordered drain."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = 64 * 1024 * 1024,
        metrics: SpoolMetrics | None = None,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self._directory = Path(directory)
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._metrics = metrics
        self._segments: dict[int, _Segment] = {}
        self._cursor = (0, 0)
        self._next_id = 1
        self._active: _ActiveFile | None = None
        self._queue: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._io_lock = asyncio.Lock()
        self._drain_lock = asyncio.Lock()
        self._known_corrupt: set[tuple[int, int]] = set()
        # Records past the cursor Kafka already acknowledged while one before them failed: the
        # next drain passes them without sending them again.
        self._acked_ahead: set[tuple[int, int]] = set()
        self._lock_fd: int | None = None
        self._full = False
        self._closed = False

    # -- opening and recovery -------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Create the folder, recover segments (truncating torn tails) and load the cursor."""
        if self._lock_fd is not None:
            raise RuntimeError("spool is already open")
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = _lock(self._directory / _LOCK_NAME)
        try:
            return self._recover_all()
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            self._segments.clear()
            raise

    def _recover_all(self) -> RecoveryReport:
        self._closed = False
        self._segments.clear()
        self._known_corrupt.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._directory / _CURSOR_TMP)
        self._cursor = self._load_cursor()
        found: list[tuple[int, Path]] = []
        for entry in os.scandir(self._directory):
            match = _SEGMENT_NAME.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
        found.sort()
        self._next_id = max([self._cursor[0], *(segment_id for segment_id, _ in found)]) + 1
        corrupt = 0
        removed = False
        for segment_id, path in found:
            segment, skipped = self._recover(segment_id, path)
            corrupt += skipped
            if segment is None:
                path.unlink()
                removed = True
            else:
                self._segments[segment_id] = segment
        if removed:
            _fsync_dir(self._directory)
        if self._metrics is not None:
            self._metrics.corrupt_bytes.inc(corrupt)
            self._metrics.full.set(0)
        self._acked_ahead.clear()
        self._update_gauges()
        return RecoveryReport(
            segments=len(self._segments),
            records=self.pending_records,
            bytes=self.pending_bytes,
            corrupt_bytes=corrupt,
        )

    def _recover(self, segment_id: int, path: Path) -> tuple[_Segment | None, int]:
        """Validate one segment; None when nothing in it is left to drain."""
        cursor_id, cursor_offset = self._cursor
        if segment_id < cursor_id:
            return None, 0
        start = cursor_offset if segment_id == cursor_id else 0
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            records = pending = corrupt = 0
            for offset, length, payload in _frames(_Reader(fd, size), 0):
                if payload is None:
                    corrupt += length
                    if offset + length == size:
                        # A torn write: nothing after it was ever acknowledged.
                        log.warning(
                            "spool segment has a torn tail, truncating",
                            extra={"segment": path.name, "offset": offset, "bytes": length},
                        )
                        os.ftruncate(fd, offset)
                        os.fsync(fd)
                        size = offset
                    else:
                        log.error(
                            "spool segment has a corrupt frame, skipping it",
                            extra={"segment": path.name, "offset": offset, "bytes": length},
                        )
                        self._known_corrupt.add((segment_id, offset))
                elif offset >= start:
                    records += 1
                    pending += length
        finally:
            os.close(fd)
        if records == 0:
            return None, corrupt
        return _Segment(segment_id, path, size, records, pending), corrupt

    def _load_cursor(self) -> tuple[int, int]:
        try:
            raw = (self._directory / CURSOR_NAME).read_bytes()
        except FileNotFoundError:
            return 0, 0
        if len(raw) == _CURSOR.size + 4:
            magic, segment_id, offset = _CURSOR.unpack(raw[: _CURSOR.size])
            (crc,) = _U32.unpack(raw[_CURSOR.size :])
            if magic == _CURSOR_MAGIC and zlib.crc32(raw[: _CURSOR.size]) == crc:
                return segment_id, offset
        # Draining everything again is safe (at-least-once); losing records is not.
        log.error("spool cursor file is corrupt, draining every segment from its start")
        return 0, 0

    # -- state --------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        """Records appended (and fsync'd) but not yet acknowledged by the drain's `send`."""
        return sum(segment.records for segment in self._segments.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of undrained frames."""
        return sum(segment.pending for segment in self._segments.values())

    @property
    def full(self) -> bool:
        """Whether the last append was refused with SpoolFull and none has succeeded since."""
        return self._full

    def is_empty(self) -> bool:
        """No undrained records and no append in progress."""
        return not self._queue and self._queued_bytes == 0 and self.pending_records == 0

    @property
    def quarantine_directory(self) -> Path:
        """Folder of the records Kafka refused for good (one file each)."""
        return self._directory / QUARANTINE_DIR

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.depth_records.set(self.pending_records)
            self._metrics.depth_bytes.set(sum(s.size for s in self._segments.values()))
            self._metrics.quarantine_records.set(len(quarantined_paths(self._directory)))

    def _set_full(self, full: bool) -> None:
        self._full = full
        if self._metrics is not None:
            self._metrics.full.set(1 if full else 0)

    # -- appending ----------------------------------------------------------------------

    async def append(self, record: SpoolRecord) -> None:
        """Write one record; returns once it is fsync'd. Raises SpoolFull."""
        if self._lock_fd is None or self._closed:
            raise RuntimeError("spool is not open")
        frame = encode_frame(record)
        if self.pending_bytes + self._queued_bytes + len(frame) > self._max_bytes:
            self._set_full(True)
            raise SpoolFull(
                f"spool size limit reached: {self.pending_bytes + self._queued_bytes} bytes "
                f"pending, record of {len(frame)} bytes, max_bytes {self._max_bytes}"
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((frame, done))
        self._queued_bytes += len(frame)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queue(), name="spool-writer")
        try:
            # Shielded: a caller that gives up (a deadline) must not cancel the shared write;
            # its record may still be written, and then drained: at-least-once.
            await asyncio.shield(done)
        except asyncio.CancelledError:
            done.add_done_callback(_consume)
            raise

    async def _write_queue(self) -> None:
        while self._queue:
            async with self._io_lock:
                await self._write_batch()

    async def _write_batch(self) -> None:
        active = self._active
        first = len(self._queue[0][0])
        new_id: int | None = None
        if active is None or (active.size > 0 and active.size + first > self._segment_bytes):
            new_id = self._next_id
            self._next_id += 1  # never reused, even when the file is removed again
        room = self._segment_bytes - (0 if new_id is not None or active is None else active.size)
        frames: list[bytes] = []
        waiters: list[asyncio.Future[None]] = []
        size = 0
        while self._queue and (not frames or size + len(self._queue[0][0]) <= room):
            frame, done = self._queue.popleft()
            frames.append(frame)
            waiters.append(done)
            size += len(frame)
        try:
            written = await asyncio.to_thread(self._write_sync, active, new_id, b"".join(frames))
        except asyncio.CancelledError:
            self._queued_bytes -= size
            for done in waiters:
                done.cancel()
            raise
        except Exception as error:
            self._queued_bytes -= size
            if active is not None and active.broken:
                self._active = None
                with contextlib.suppress(OSError):
                    os.close(active.fd)
            self._fail(waiters, error)
            return
        self._queued_bytes -= size
        self._active = written
        segment = self._segments.get(written.id)
        if segment is None:
            segment = _Segment(written.id, written.path, 0, 0, 0)
            self._segments[written.id] = segment
        segment.size = written.size
        segment.records += len(frames)
        segment.pending += size
        if self._metrics is not None:
            self._metrics.appended.inc(len(frames))
        self._set_full(False)
        self._update_gauges()
        for done in waiters:
            if not done.done():
                done.set_result(None)

    def _fail(self, waiters: list[asyncio.Future[None]], error: Exception) -> None:
        disk_full = isinstance(error, OSError) and error.errno in _DISK_FULL
        if disk_full:
            self._set_full(True)
        log.error(
            "spool write failed",
            extra={"error": type(error).__name__, "detail": str(error), "records": len(waiters)},
        )
        for done in waiters:
            if done.done():
                continue
            if disk_full:
                assert isinstance(error, OSError)
                reason = errno.errorcode.get(error.errno or 0, "ENOSPC")
                full = SpoolFull(f"disk full ({reason}): {error.strerror}")
                full.__cause__ = error
                done.set_exception(full)
            else:
                done.set_exception(error)

    def _write_sync(
        self, active: _ActiveFile | None, new_id: int | None, data: bytes
    ) -> _ActiveFile:
        """Write and fsync `data` at the end of the active segment or of a new one (in a thread)."""
        if new_id is None:
            assert active is not None
            try:
                _write_fsync(active.fd, data)
            except BaseException:
                # The truncation reaches the disk with the next successful fsync; until then a
                # crash leaves at most a torn tail, which open() cuts off.
                active.broken = not _cut_back(active.fd, active.size, active.path)
                raise
            active.size += len(data)
            return active
        path = self._directory / segment_name(new_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        created = _ActiveFile(new_id, path, fd, 0)
        try:
            _write_fsync(fd, data)
            _fsync_dir(self._directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        created.size = len(data)
        if active is not None:
            # Already fsync'd by its last batch.
            with contextlib.suppress(OSError):
                os.close(active.fd)
        return created

    # -- draining -----------------------------------------------------------------------

    async def drain(
        self,
        send: Callable[[SpoolRecord], Awaitable[None]],
        *,
        refused: Callable[[BaseException], str | None] | None = None,
        batch: int = 256,
    ) -> int:
        """Send undrained records in spool order until the spool is empty; returns how many.

        `refused(error)` names the reason when Kafka refuses a record for good: that record is
        moved to the quarantine and the drain goes on. Any other failure stops the drain and is
        raised; records after it that Kafka acknowledged are not sent again by the next drain.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        sent = 0
        async with self._drain_lock:
            while True:
                if self._lock_fd is None or self._closed:
                    raise RuntimeError("spool is not open")
                plan = [
                    (s.id, s.path, self._cursor[1] if s.id == self._cursor[0] else 0, s.size)
                    for s in self._segments.values()
                    if s.id >= self._cursor[0]
                ]
                records, scanned_to = await asyncio.to_thread(
                    self._read_batch, plan, self._cursor, batch
                )
                if not records and scanned_to <= self._cursor:
                    # A write that held the lock may have kept the last _advance from retiring it.
                    await self._retire()
                    return sent
                to_send = [
                    item for item in records if (item.segment, item.end) not in self._acked_ahead
                ]
                # Started in spool order; the idempotent producer keeps that order per partition.
                results = await asyncio.gather(
                    *(send(item.record) for item in to_send), return_exceptions=True
                )
                failed: dict[tuple[int, int], BaseException] = {}
                for item, result in zip(to_send, results, strict=True):
                    position = (item.segment, item.end)
                    if not isinstance(result, BaseException):
                        self._acked_ahead.add(position)
                        sent += 1
                        continue
                    reason = refused(result) if refused is not None else None
                    if reason is None:
                        failed[position] = result
                        continue
                    await asyncio.to_thread(self._quarantine, item, result, reason)
                    self._acked_ahead.add(position)
                # The cursor moves over the records done (acknowledged or quarantined) up to the
                # first that failed; those done after it are remembered, not sent again.
                done: list[_Drained] = []
                for item in records:
                    if (item.segment, item.end) in failed:
                        break
                    done.append(item)
                if not failed:
                    cursor = scanned_to
                elif done:
                    cursor = (done[-1].segment, done[-1].end)
                else:
                    cursor = self._cursor
                if cursor != self._cursor:
                    await self._advance(cursor, done)
                if failed:
                    raise next(iter(failed.values()))

    def _quarantine(self, item: _Drained, error: BaseException, reason: str) -> None:
        """Move one record Kafka refused for good out of the way, with the error (in a thread)."""
        record = item.record
        marked = SpoolRecord(
            record.topic,
            record.key,
            record.value,
            (
                *record.headers,
                (HEADER_QUARANTINE_ERROR, f"{type(error).__name__}: {error}"[:1024].encode()),
                (HEADER_QUARANTINED_AT, f"{time.time():.3f}".encode()),
            ),
        )
        directory = self.quarantine_directory
        directory.mkdir(mode=0o700, exist_ok=True)
        name = f"{time.time_ns():020d}-{item.segment:020d}-{item.end:012d}{QUARANTINE_SUFFIX}"
        temporary = directory / (name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_fsync(fd, encode_frame(marked))
        finally:
            os.close(fd)
        os.replace(temporary, directory / name)
        _fsync_dir(directory)
        log.error(
            "kafka refused a spooled record for good, quarantined",
            extra={
                "topic": record.topic,
                "reason": reason,
                "bytes": len(record.value),
                "file": name,
                "error.type": type(error).__name__,
                "error.message": str(error)[:300],
            },
        )
        if self._metrics is not None:
            self._metrics.quarantined.labels(record.topic, reason).inc()
            self._metrics.quarantine_records.set(len(quarantined_paths(self._directory)))

    def _read_batch(
        self, plan: list[tuple[int, Path, int, int]], cursor: tuple[int, int], batch: int
    ) -> tuple[list[_Drained], tuple[int, int]]:
        """Up to `batch` records from the cursor on, and the position after the last one read."""
        records: list[_Drained] = []
        scanned_to = cursor
        for segment_id, path, start, end in plan:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                reader = _Reader(fd, end)
                for offset, length, payload in _frames(reader, start):
                    record = None if payload is None else self._decode(segment_id, offset, payload)
                    if record is None:
                        self._report_corrupt(segment_id, path, offset, length)
                    else:
                        records.append(_Drained(segment_id, offset + length, length, record))
                    scanned_to = (segment_id, offset + length)
                    if len(records) >= batch:
                        return records, scanned_to
                scanned_to = max(scanned_to, (segment_id, end))
            finally:
                os.close(fd)
        return records, scanned_to

    def _decode(self, segment_id: int, offset: int, payload: bytes) -> SpoolRecord | None:
        try:
            return decode_record(payload)
        except ValueError as error:
            log.error(
                "spool frame has a valid CRC but cannot be decoded, skipping it",
                extra={"segment": segment_id, "offset": offset, "detail": str(error)},
            )
            return None

    def _report_corrupt(self, segment_id: int, path: Path, offset: int, length: int) -> None:
        # Stretches found by open() were reported there; a new one means the disk changed since.
        if (segment_id, offset) in self._known_corrupt:
            return
        self._known_corrupt.add((segment_id, offset))
        log.error(
            "spool segment has a corrupt frame, skipping it",
            extra={"segment": path.name, "offset": offset, "bytes": length},
        )
        if self._metrics is not None:
            self._metrics.corrupt_bytes.inc(length)

    async def _advance(self, cursor: tuple[int, int], acked: list[_Drained]) -> None:
        """Persist the cursor, then account for and delete what is fully drained."""
        await asyncio.to_thread(_write_cursor, self._directory, cursor)
        self._cursor = cursor
        self._acked_ahead = {position for position in self._acked_ahead if position > cursor}
        for item in acked:
            segment = self._segments.get(item.segment)
            if segment is not None:
                segment.records -= 1
                segment.pending -= item.size
        if self._metrics is not None:
            self._metrics.drained.inc(len(acked))
        await self._retire()

    async def _retire(self) -> None:
        """Delete the segment files the cursor has passed (files whose ids are never reused)."""
        segment_id, offset = self._cursor
        done = [
            segment
            for segment in self._segments.values()
            if segment.id < segment_id or (segment.id == segment_id and offset >= segment.size)
        ]
        active = self._active
        if active is not None and any(segment.id == active.id for segment in done):
            # The writer may be mid-write into it: retire it only while no write is running;
            # the next append then starts a new segment.
            if self._io_lock.locked():
                done = [segment for segment in done if segment.id != active.id]
            else:
                self._active = None
                with contextlib.suppress(OSError):
                    os.close(active.fd)
        for segment in done:
            del self._segments[segment.id]
        if done:
            await asyncio.to_thread(_remove, [segment.path for segment in done])
        self._update_gauges()

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish pending appends, close the files and release the folder's lock."""
        if self._lock_fd is None:
            return
        self._closed = True
        if self._writer is not None:
            await asyncio.wait({self._writer})
        async with self._io_lock:
            if self._active is not None:
                with contextlib.suppress(OSError):
                    os.close(self._active.fd)
                self._active = None
        self._segments.clear()
        os.close(self._lock_fd)
        self._lock_fd = None


@dataclass(frozen=True)
class QuarantinedRecord:
    """A record Kafka refused for good, as kept in the spool's quarantine."""

    path: Path
    record: SpoolRecord
    """The record as it was spooled (without the quarantine's own headers)."""
    error: str
    quarantined_at: float


def quarantined_paths(spool_directory: Path) -> list[Path]:
    """The quarantine's record files, oldest first."""
    try:
        entries = os.listdir(spool_directory / QUARANTINE_DIR)
    except FileNotFoundError:
        return []
    names = sorted(name for name in entries if name.endswith(QUARANTINE_SUFFIX))
    return [spool_directory / QUARANTINE_DIR / name for name in names]


def read_quarantined(path: Path) -> QuarantinedRecord:
    """One quarantined record; ValueError if the file is damaged."""
    data = path.read_bytes()
    if len(data) < HEADER_SIZE:
        raise ValueError(f"{path.name}: too short")
    magic, size, crc = _HEADER.unpack(data[:HEADER_SIZE])
    payload = data[HEADER_SIZE:]
    if magic != MAGIC or size != len(payload) or zlib.crc32(payload, zlib.crc32(data[4:8])) != crc:
        raise ValueError(f"{path.name}: not a valid spool frame")
    marked = decode_record(payload)
    own = {HEADER_QUARANTINE_ERROR, HEADER_QUARANTINED_AT}
    extra = {name: value for name, value in marked.headers if name in own}
    record = SpoolRecord(
        marked.topic,
        marked.key,
        marked.value,
        tuple((name, value) for name, value in marked.headers if name not in own),
    )
    return QuarantinedRecord(
        path,
        record,
        extra.get(HEADER_QUARANTINE_ERROR, b"").decode("utf-8", "replace"),
        float(extra.get(HEADER_QUARANTINED_AT, b"0") or 0),
    )


def _consume(done: asyncio.Future[None]) -> None:
    # Nobody awaits the future of a cancelled append any more: keep asyncio from warning.
    if not done.cancelled():
        done.exception()


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolInUse(f"spool folder {path.parent} is used by another open Spool") from None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_fsync(fd: int, data: bytes) -> None:
    _write_all(fd, data)
    os.fsync(fd)


def _cut_back(fd: int, size: int, path: Path) -> bool:
    """Truncate a segment back to `size` after a failed write, so no torn frame stays."""
    try:
        os.ftruncate(fd, size)
    except OSError as error:
        log.error(
            "spool segment could not be truncated after a failed write",
            extra={"segment": path.name, "detail": str(error)},
        )
        return False
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_cursor(directory: Path, cursor: tuple[int, int]) -> None:
    body = _CURSOR.pack(_CURSOR_MAGIC, *cursor)
    temporary = directory / _CURSOR_TMP
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, body + _U32.pack(zlib.crc32(body)))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / CURSOR_NAME)
    _fsync_dir(directory)


def _remove(paths: list[Path]) -> None:
    # No directory fsync: a deletion lost in a crash is redone by open(), the cursor is ahead.
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
