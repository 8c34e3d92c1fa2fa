"""The ingest's durable spool: order, resumption, torn writes, limits and crash durability."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from forwarder.ingest import spool as spool_module
from forwarder.ingest.durable import _refused
from forwarder.ingest.spool import (
    Spool,
    SpoolFull,
    SpoolInUse,
    SpoolRecord,
    quarantined_paths,
    read_quarantined,
)
from forwarder.metrics import SpoolMetrics

REPO = Path(__file__).resolve().parents[2]


def record(index: int, size: int = 40) -> SpoolRecord:
    return SpoolRecord(
        topic="aha.audit.raw",
        key=f"feature:{index}".encode(),
        value=f"{index}:".encode() + b"x" * size,
        headers=(("source", b"webhook"), ("seq", str(index).encode())),
    )


def frame_size(item: SpoolRecord) -> int:
    return len(spool_module.encode_frame(item))


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


class Sink:
    """A `send` that keeps what it was given and fails once at the records listed in `fail`."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.sent: list[SpoolRecord] = []
        self.fail = set(fail or ())
        self.calls = 0

    async def __call__(self, item: SpoolRecord) -> None:
        index = self.calls
        self.calls += 1
        await asyncio.sleep(0)
        if index in self.fail:
            self.fail.discard(index)
            raise ConnectionError(f"broker went away at send {index}")
        self.sent.append(item)


def open_spool(directory: Path, registry: CollectorRegistry | None = None, **options: Any) -> Spool:
    options.setdefault("max_bytes", 1 << 24)
    metrics = SpoolMetrics(registry) if registry is not None else None
    spool = Spool(directory, metrics=metrics, **options)
    spool.open()
    return spool


def sample(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None
) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_records_drain_back_identical_and_in_order_across_segments(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry, segment_bytes=512)
    records = [record(index, size=index * 3) for index in range(60)]
    for item in records:
        await spool.append(item)
    written = segment_files(tmp_path)
    assert len(written) >= 5
    assert spool.pending_records == 60
    assert sample(registry, "aha_siem_ingest_spool_records") == 60

    sink = Sink()
    assert await spool.drain(sink, batch=7) == 60
    assert sink.sent == records
    assert segment_files(tmp_path) == []
    assert spool.is_empty()
    assert spool.pending_bytes == 0
    assert sample(registry, "aha_siem_ingest_spool_drained_total") == 60
    assert sample(registry, "aha_siem_ingest_spool_records") == 0
    assert sample(registry, "aha_siem_ingest_spool_bytes") == 0
    assert await spool.drain(sink) == 0

    # Segment ids are never reused, even after every file was deleted and the spool reopened.
    await spool.close()
    spool = open_spool(tmp_path, segment_bytes=512)
    await spool.append(record(60))
    (new,) = segment_files(tmp_path)
    assert new.name > written[-1].name
    await spool.close()


async def test_records_appended_while_draining_are_drained_too_in_order(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=400)
    first = [record(index) for index in range(10)]
    later = [record(index) for index in range(100, 106)]
    for item in first:
        await spool.append(item)
    sent: list[SpoolRecord] = []

    async def send(item: SpoolRecord) -> None:
        sent.append(item)
        if item == first[3]:
            for extra in later:
                await spool.append(extra)

    assert await spool.drain(send, batch=4) == 16
    assert sent == first + later
    assert spool.is_empty()
    assert segment_files(tmp_path) == []
    await spool.close()


async def test_reopen_after_partial_drain_resumes_at_the_cursor(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=300)
    records = [record(index) for index in range(10)]
    for item in records:
        await spool.append(item)
    sink = Sink(fail={5})
    with pytest.raises(ConnectionError):
        await spool.drain(sink, batch=5)
    assert sink.sent[:5] == records[:5]
    await spool.close()

    reopened = Spool(tmp_path, max_bytes=1 << 24, segment_bytes=300)
    report = reopened.open()
    assert report.records == 5
    assert report.corrupt_bytes == 0
    resumed = Sink()
    assert await reopened.drain(resumed) == 5
    assert resumed.sent == records[5:]
    await reopened.close()


async def test_failed_send_stops_the_drain_and_the_next_sends_only_what_kafka_lacks(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry, segment_bytes=350)
    records = [record(index) for index in range(12)]
    await asyncio.gather(*(spool.append(item) for item in records))
    sink = Sink(fail={5})
    with pytest.raises(ConnectionError, match="send 5"):
        await spool.drain(sink, batch=4)
    # The batch 4..7 went out together: 6 and 7 were acknowledged although 5 failed.
    assert sink.sent == records[:5] + records[6:8]
    assert spool.pending_records == 7
    assert sample(registry, "aha_siem_ingest_spool_drained_total") == 5

    retry = Sink()
    assert await spool.drain(retry, batch=4) == 5
    # Never a second copy of a record Kafka already has.
    assert retry.sent == [records[5], *records[8:]]
    assert spool.is_empty()
    assert sample(registry, "aha_siem_ingest_spool_drained_total") == 12
    await spool.close()


async def test_a_record_kafka_refuses_for_good_is_quarantined_and_the_rest_drain(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry, segment_bytes=350)
    records = [record(index) for index in range(8)]
    huge = record(99, size=5000)
    for item in [*records[:3], huge, *records[3:]]:
        await spool.append(item)
    sent: list[SpoolRecord] = []

    async def send(item: SpoolRecord) -> None:
        if item == huge:
            raise MessageSizeTooLargeError("The message is 5100 bytes when serialized")
        sent.append(item)

    assert await spool.drain(send, refused=_refused, batch=4) == 8
    assert sent == records
    assert spool.is_empty()
    (path,) = quarantined_paths(tmp_path)
    kept = read_quarantined(path)
    assert kept.record == huge
    assert "MessageSizeTooLargeError" in kept.error
    assert sample(registry, "aha_siem_ingest_spool_quarantine_records") == 1
    labels = {"topic": "aha.audit.raw", "reason": "MessageSizeTooLargeError"}
    assert sample(registry, "aha_siem_ingest_spool_quarantined_total", labels) == 1
    await spool.close()

    # Across a restart: the quarantined record is not drained again.
    reopened = open_spool(tmp_path)
    again = Sink()
    assert await reopened.drain(again) == 0
    assert again.sent == []
    await reopened.close()


async def test_a_failure_that_is_not_the_records_still_stops_the_drain(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for index in range(3):
        await spool.append(record(index))

    async def send(item: SpoolRecord) -> None:
        raise OutOfOrderSequenceNumber()

    with pytest.raises(OutOfOrderSequenceNumber):
        await spool.drain(send, refused=_refused)
    assert spool.pending_records == 3
    assert quarantined_paths(tmp_path) == []
    await spool.close()


@pytest.mark.parametrize(
    "torn",
    [
        pytest.param(lambda frame: b"\x00garbage\xff" * 3, id="garbage"),
        pytest.param(lambda frame: frame[: len(frame) // 2], id="half-frame"),
        pytest.param(lambda frame: frame[:6], id="half-header"),
    ],
)
async def test_torn_tail_is_cut_off_and_complete_records_survive(
    tmp_path: Path, torn: Callable[[bytes], bytes]
) -> None:
    spool = open_spool(tmp_path)
    records = [record(index) for index in range(5)]
    for item in records:
        await spool.append(item)
    await spool.close()
    (segment,) = segment_files(tmp_path)
    intact = segment.stat().st_size
    tail = torn(spool_module.encode_frame(record(99)))
    with segment.open("ab") as file:
        file.write(tail)

    registry = CollectorRegistry()
    spool = Spool(tmp_path, max_bytes=1 << 24, metrics=SpoolMetrics(registry))
    report = spool.open()
    assert report.records == 5
    assert report.corrupt_bytes == len(tail)
    assert sample(registry, "aha_siem_ingest_spool_corrupt_bytes_total") == len(tail)
    assert segment.stat().st_size == intact

    after = [record(index) for index in range(5, 8)]
    for item in after:
        await spool.append(item)
    sink = Sink()
    assert await spool.drain(sink) == 8
    assert sink.sent == records + after
    await spool.close()


async def test_flipped_byte_in_the_last_frame_is_detected(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    records = [record(index) for index in range(3)]
    for item in records:
        await spool.append(item)
    await spool.close()
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    last = frame_size(records[-1])
    data[len(data) - last // 2] ^= 0x01
    segment.write_bytes(bytes(data))

    spool = Spool(tmp_path, max_bytes=1 << 24)
    report = spool.open()
    assert report.records == 2
    assert report.corrupt_bytes == last
    sink = Sink()
    await spool.drain(sink)
    assert sink.sent == records[:2]
    await spool.close()


async def test_corrupt_frame_mid_segment_loses_only_that_record(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    records = [record(index) for index in range(5)]
    for item in records:
        await spool.append(item)
    await spool.close()
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    start = sum(frame_size(item) for item in records[:2])
    data[start + frame_size(records[2]) - 3] ^= 0x40
    segment.write_bytes(bytes(data))

    spool = Spool(tmp_path, max_bytes=1 << 24)
    report = spool.open()
    assert report.records == 4
    assert report.corrupt_bytes == frame_size(records[2])
    sink = Sink()
    assert await spool.drain(sink) == 4
    assert sink.sent == records[:2] + records[3:]
    await spool.close()


async def test_size_limit_refuses_with_spool_full_until_drained(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    records = [record(index) for index in range(4)]
    spool = open_spool(tmp_path, registry, max_bytes=3 * frame_size(records[0]))
    for item in records[:3]:
        await spool.append(item)
    assert sample(registry, "aha_siem_ingest_spool_full") == 0
    with pytest.raises(SpoolFull, match="size limit"):
        await spool.append(records[3])
    assert sample(registry, "aha_siem_ingest_spool_full") == 1
    assert spool.full
    assert spool.pending_records == 3

    sink = Sink()
    assert await spool.drain(sink) == 3
    await spool.append(records[3])
    assert sample(registry, "aha_siem_ingest_spool_full") == 0
    assert not spool.full
    await spool.drain(sink)
    assert sink.sent == records
    await spool.close()


class DiskFull:
    """Fault injection: the next spool frame write is cut short and then fails with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str, code: int) -> None:
        self.where = where
        self.code = code
        self.state = "armed"
        self.fd = -1
        self._write = os.write
        self._fsync = os.fsync
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def write(self, fd: int, data: Any) -> int:
        if (
            self.where == "write"
            and self.state == "armed"
            and bytes(data[:4]) == spool_module.MAGIC
        ):
            self.state, self.fd = "short", fd
            return self._write(fd, data[: len(data) // 2])
        if self.state == "short" and fd == self.fd:
            self.state = "spent"
            raise OSError(self.code, os.strerror(self.code))
        return self._write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.where == "fsync" and self.state == "armed":
            self.state = "spent"
            raise OSError(self.code, os.strerror(self.code))
        self._fsync(fd)


@pytest.mark.parametrize(
    ("where", "segment_bytes"),
    [("write", 1 << 20), ("fsync", 1 << 20), ("write", 200)],
    ids=["short-write", "fsync", "short-write-new-segment"],
)
async def test_disk_full_raises_spool_full_and_leaves_no_torn_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, segment_bytes: int
) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry, segment_bytes=segment_bytes)
    records = [record(index) for index in range(6)]
    for item in records[:3]:
        await spool.append(item)
    files_before = segment_files(tmp_path)
    fault = DiskFull(monkeypatch, where, errno.ENOSPC)
    with pytest.raises(SpoolFull, match="ENOSPC"):
        await spool.append(records[3])
    assert fault.state == "spent"
    assert sample(registry, "aha_siem_ingest_spool_full") == 1
    assert segment_files(tmp_path) == files_before
    monkeypatch.undo()

    for item in records[4:]:
        await spool.append(item)
    assert sample(registry, "aha_siem_ingest_spool_full") == 0
    await spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 24, segment_bytes=segment_bytes)
    report = spool.open()
    assert report.corrupt_bytes == 0
    assert report.records == 5
    sink = Sink()
    assert await spool.drain(sink) == 5
    assert sink.sent == records[:3] + records[4:]
    await spool.close()


async def test_other_write_errors_propagate_and_are_not_spool_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = CollectorRegistry()
    spool = open_spool(tmp_path, registry)
    await spool.append(record(0))
    DiskFull(monkeypatch, "fsync", errno.EIO)
    with pytest.raises(OSError, match="Input/output error") as raised:
        await spool.append(record(1))
    assert not isinstance(raised.value, SpoolFull)
    assert sample(registry, "aha_siem_ingest_spool_full") == 0
    monkeypatch.undo()
    await spool.append(record(2))
    sink = Sink()
    await spool.drain(sink)
    assert sink.sent == [record(0), record(2)]
    await spool.close()


async def test_concurrent_appends_share_fsyncs_and_keep_call_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = open_spool(tmp_path)
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    records = [record(index, size=index % 50) for index in range(200)]
    await asyncio.gather(*(spool.append(item) for item in records))
    monkeypatch.undo()
    assert spool.pending_records == 200
    assert fsyncs <= 20
    sink = Sink()
    assert await spool.drain(sink) == 200
    assert sink.sent == records
    await spool.close()


async def test_a_second_spool_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    with pytest.raises(SpoolInUse):
        Spool(tmp_path, max_bytes=1 << 20).open()
    await spool.close()
    again = open_spool(tmp_path)
    await again.close()


_CRASH_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from forwarder.ingest.spool import Spool, SpoolRecord

    async def main() -> None:
        spool = Spool(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=4096)
        spool.open()

        async def one(index: int) -> None:
            value = str(index).encode() + b":" + b"v" * 200
            await spool.append(SpoolRecord("aha.audit.raw", str(index).encode(), value, ()))
            print(index, flush=True)

        index = 0
        while True:
            await asyncio.gather(*(one(index + offset) for offset in range(4)))
            index += 4

    asyncio.run(main())
    """
)


async def test_acknowledged_appends_survive_sigkill(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASH_SCRIPT,
        str(tmp_path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    printed: list[int] = []
    try:
        while len(printed) < 300:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
            assert line, "the appending process ended early"
            printed.append(int(line))
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        rest, errors = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == -signal.SIGKILL, errors.decode()
    # Lines already in the pipe were printed before the kill: those appends returned too.
    printed += [int(line) for line in rest.split()]

    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=4096)
    report = spool.open()
    sink = Sink()
    await spool.drain(sink)
    found = [int(item.key) for item in sink.sent]
    assert report.records == len(found)
    assert found == list(range(len(found))), "appends come back in order, without gaps"
    assert set(printed) <= set(found), "every acknowledged append is on disk"
    await spool.close()


_records = st.builds(
    SpoolRecord,
    topic=st.text(max_size=40),
    key=st.binary(max_size=64),
    value=st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=4096)),
    headers=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=64)), max_size=5).map(
        tuple
    ),
)


@settings(max_examples=40)
@given(records=st.lists(_records, max_size=25), segment_bytes=st.integers(64, 16384))
async def test_any_records_round_trip_through_append_drain_and_reopen(
    records: list[SpoolRecord], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        spool = open_spool(directory, segment_bytes=segment_bytes)
        await asyncio.gather(*(spool.append(item) for item in records))
        sink = Sink()
        assert await spool.drain(sink, batch=3) == len(records)
        assert sink.sent == records

        for item in records:
            await spool.append(item)
        await spool.close()
        spool = Spool(directory, max_bytes=1 << 24, segment_bytes=segment_bytes)
        report = spool.open()
        assert (report.records, report.corrupt_bytes) == (len(records), 0)
        after_reopen = Sink()
        assert await spool.drain(after_reopen, batch=3) == len(records)
        assert after_reopen.sent == records
        assert segment_files(directory) == []
        await spool.close()
