"""Syslog framing and size limits: RFC 6587 frames, UDP datagrams, UTF-8-safe truncation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.sinks.syslog.framing import Framing, Oversize, cut_utf8, fit, frame, frame_batch
from forwarder.sinks.syslog.transport import chunks

MESSAGE = "<133>1 - host aha-siem - - - CEF:0|Aha!|é→😀".encode()


def read_octet_counted(stream: bytes) -> list[bytes]:
    """Split a TCP stream into messages the way RFC 6587 §3.4.1 tells a receiver to."""
    messages = []
    while stream:
        match = re.match(rb"([1-9][0-9]*) ", stream)
        assert match, stream[:40]
        start = match.end()
        end = start + int(match.group(1))
        assert end <= len(stream), "frame runs past the end of the stream"
        messages.append(stream[start:end])
        stream = stream[end:]
    return messages


@pytest.mark.parametrize(
    ("framing", "expected"),
    [
        ("octet-counting", b"%d %s" % (len(MESSAGE), MESSAGE)),
        ("non-transparent", MESSAGE + b"\n"),
        ("datagram", MESSAGE),
    ],
)
def test_frame(framing: Framing, expected: bytes) -> None:
    assert frame(MESSAGE, framing) == expected


def test_octet_count_is_in_octets_not_characters() -> None:
    framed = frame(MESSAGE, "octet-counting")
    assert len(MESSAGE) > len(MESSAGE.decode())
    assert read_octet_counted(framed) == [MESSAGE]


@pytest.mark.parametrize(
    ("message", "framing", "limit", "oversize", "expected"),
    [
        (b"x" * 480, "datagram", 480, "reject", b"x" * 480),
        (b"x" * 481, "datagram", 480, "truncate", b"x" * 480),
        (b"x" * 481, "datagram", 480, "reject", "over max_message_bytes (480)"),
        (b"x" * 481, "octet-counting", 480, "reject", "message of 481 octets"),
        (b"a" * 479 + "é".encode(), "datagram", 480, "truncate", b"a" * 479),
        (b"a\nb", "non-transparent", 480, "reject", "contains LF"),
        (b"a\nb", "octet-counting", 480, "reject", b"a\nb"),
        (b"a\nb", "datagram", 480, "reject", b"a\nb"),
        (b"a\rb", "non-transparent", 480, "reject", b"a\rb"),
        # Truncation cannot make room for an LF: the cut message is still refused.
        (b"a\n" + b"b" * 500, "non-transparent", 480, "truncate", "contains LF"),
    ],
)
def test_fit(
    message: bytes, framing: Framing, limit: int, oversize: Oversize, expected: bytes | str
) -> None:
    result = fit(message, framing, limit, oversize)
    if isinstance(expected, bytes):
        assert result == expected
    else:
        assert isinstance(result, str)
        assert expected in result


@given(st.text(min_size=0, max_size=200), st.integers(min_value=0, max_value=900))
def test_cut_keeps_the_longest_whole_utf8_prefix(text: str, limit: int) -> None:
    encoded = text.encode()
    cut = cut_utf8(encoded, limit)
    assert len(cut) <= limit
    assert encoded.startswith(cut)
    decoded = cut.decode()  # whole characters only
    if len(encoded) > limit:
        # One more character would not fit.
        assert len(text[: len(decoded) + 1].encode()) > limit
    else:
        assert cut == encoded


def test_a_batch_keeps_order_and_names_what_it_refused() -> None:
    messages = [b"first", b"x" * 600, b"third\nline", b"fourth"]
    framed = frame_batch(messages, "non-transparent", 500, "reject")
    assert framed.frames == [b"first\n", b"fourth\n"]
    assert framed.indexes == [0, 3]
    assert set(framed.rejected) == {1, 2}
    assert framed.truncated == 0


def test_a_truncated_batch_counts_what_it_cut() -> None:
    framed = frame_batch([b"x" * 600, b"y"], "octet-counting", 500, "truncate")
    assert read_octet_counted(b"".join(framed.frames)) == [b"x" * 500, b"y"]
    assert framed.truncated == 1
    assert framed.rejected == {}


@given(st.lists(st.binary(min_size=1, max_size=5000), max_size=60))
def test_writes_join_whole_frames_in_order(frames: list[bytes]) -> None:
    octet_counted = [frame(message, "octet-counting") for message in frames]
    writes = list(chunks(octet_counted, size=4096))
    assert read_octet_counted(b"".join(writes)) == frames
    # Every write ends on a frame boundary, so a write cut short never leaves half a frame queued.
    position = 0
    boundaries = set()
    for framed in octet_counted:
        position += len(framed)
        boundaries.add(position)
    position = 0
    for write in writes:
        position += len(write)
        assert position in boundaries
