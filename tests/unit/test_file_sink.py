from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.sinks.file.config import FileSinkConfig
from forwarder.sinks import SinkError, create_sink
from forwarder.sinks.file import FileSink


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
    with pytest.raises(SinkError) as raised:
        await sink.send_batch([b'{"lost":2}'])
    assert raised.value.retriable
    assert path.read_bytes() == b'{"kept":1}\n'
    await sink.send_batch([b'{"retried":2}'])
    await sink.close()
    assert path.read_bytes() == b'{"kept":1}\n{"retried":2}\n'
