from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from forwarder.failures import Failure
from forwarder.sinks import create_sink
from forwarder.sinks.base import Retry
from forwarder.sinks.file import FileSink
from forwarder.sinks.file.config import FileSinkConfig


def sink_at(path: Path) -> FileSink:
    sink = create_sink(FileSinkConfig(type="file", name="file", path=path))
    assert isinstance(sink, FileSink)
    return sink


async def test_batches_are_appended_as_lines(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "events.ndjson"
    sink = sink_at(path)
    await sink.start()
    await sink.healthcheck()
    await sink.send_batch([b'{"a":1}', b'{"b":2}'])
    await sink.send_batch([b'{"c":3}'])
    await sink.close()
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n{"c":3}\n'


async def test_failed_write_leaves_no_torn_line_and_is_retriable(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = sink_at(path)
    await sink.start()
    await sink.send_batch([b'{"kept":1}'])

    class FailingFile:
        def __init__(self, real) -> None:
            self.real = real

        def tell(self) -> int:
            return self.real.tell()

        def write(self, payload: bytes) -> int:
            self.real.write(payload[:5])
            self.real.flush()
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            self.real.close()

    sink._file = FailingFile(sink._file)  # type: ignore[assignment]
    result = await sink.send_batch([b'{"lost":2}'])
    assert isinstance(result.whole, Retry) and result.whole.failure is Failure.TRANSIENT
    assert "No space left on device" in result.whole.reason
    assert path.read_bytes() == b'{"kept":1}\n'
    await sink.send_batch([b'{"retried":2}'])
    await sink.close()
    assert path.read_bytes() == b'{"kept":1}\n{"retried":2}\n'


def rotating_sink(path: Path, max_bytes: int, keep: int) -> FileSink:
    config = FileSinkConfig(
        type="file", name="file", path=path, rotate_max_bytes=max_bytes, rotate_keep=keep
    )
    sink = create_sink(config)
    assert isinstance(sink, FileSink)
    return sink


def line(number: int, size: int) -> bytes:
    """A JSON line of exactly `size` bytes with its newline."""
    head = b'{"n":%d,"pad":"' % number
    return head + b"x" * (size - len(head) - 3) + b'"}'


def names_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def sizes_in(folder: Path) -> list[int]:
    return [path.stat().st_size for path in folder.iterdir()]


def numbers_in(path: Path) -> list[int]:
    return [orjson.loads(text)["n"] for text in path.read_bytes().splitlines()]


async def test_rotation_keeps_batches_whole_and_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = rotating_sink(path, max_bytes=1024, keep=3)
    await sink.start()
    # Batches of three 200-byte lines (600 bytes): a second batch would pass 1024 bytes.
    for batch in range(4):
        await sink.send_batch([line(batch * 3 + item, 200) for item in range(3)])
    await sink.close()
    assert numbers_in(path) == [9, 10, 11]
    assert numbers_in(tmp_path / "events.ndjson.1") == [6, 7, 8]
    assert numbers_in(tmp_path / "events.ndjson.2") == [3, 4, 5]
    assert numbers_in(tmp_path / "events.ndjson.3") == [0, 1, 2]
    assert max(sizes_in(tmp_path)) <= 1024


async def test_rotation_deletes_files_beyond_keep(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = rotating_sink(path, max_bytes=1024, keep=2)
    await sink.start()
    for number in range(6):
        await sink.send_batch([line(number, 700)])
    await sink.close()
    assert names_in(tmp_path) == [
        "events.ndjson",
        "events.ndjson.1",
        "events.ndjson.2",
    ]
    assert numbers_in(path) == [5]
    assert numbers_in(tmp_path / "events.ndjson.1") == [4]
    assert numbers_in(tmp_path / "events.ndjson.2") == [3]


async def test_a_batch_larger_than_the_limit_lands_whole_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = rotating_sink(path, max_bytes=1024, keep=2)
    await sink.start()
    await sink.send_batch([line(0, 100)])
    await sink.send_batch([line(number, 500) for number in range(1, 5)])
    await sink.send_batch([line(5, 100)])
    await sink.close()
    assert numbers_in(tmp_path / "events.ndjson.2") == [0]
    assert numbers_in(tmp_path / "events.ndjson.1") == [1, 2, 3, 4]
    assert numbers_in(path) == [5]


async def test_rotation_counts_what_the_file_held_before_start(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(line(0, 900) + b"\n")
    sink = rotating_sink(path, max_bytes=1024, keep=1)
    await sink.start()
    await sink.send_batch([line(1, 200)])
    await sink.close()
    assert numbers_in(tmp_path / "events.ndjson.1") == [0]
    assert numbers_in(path) == [1]


async def test_without_rotate_max_bytes_the_file_only_grows(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    sink = sink_at(path)
    await sink.start()
    for number in range(5):
        await sink.send_batch([line(number, 1000)])
    await sink.close()
    assert numbers_in(path) == [0, 1, 2, 3, 4]
    assert names_in(tmp_path) == ["events.ndjson"]


def test_rotation_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="rotate_keep"):
        FileSinkConfig(type="file", name="f", path=tmp_path / "e", rotate_keep=0)
    with pytest.raises(ValidationError, match="rotate_max_bytes"):
        FileSinkConfig(type="file", name="f", path=tmp_path / "e", rotate_max_bytes=10)
