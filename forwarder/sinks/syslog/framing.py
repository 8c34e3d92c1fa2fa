"""How syslog messages go on the wire: size limits and RFC 6587 framing (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from forwarder.formats.syslog import cut_utf8, octet_count

Framing = Literal["octet-counting", "non-transparent", "datagram"]
Oversize = Literal["reject", "truncate"]

LF = b"\n"


def frame(message: bytes, framing: Framing) -> bytes:
    """One message as it goes on the wire: octet-counted, LF-terminated, or bare (a datagram)."""
    if framing == "octet-counting":
        return octet_count(message)
    if framing == "non-transparent":
        return message + LF
    return message


def fit(message: bytes, framing: Framing, limit: int, oversize: Oversize) -> bytes | str:
    """The message to send, or the reason it cannot be sent (it then goes to the DLQ)."""
    if len(message) > limit:
        if oversize == "reject":
            return f"message of {len(message)} octets is over max_message_bytes ({limit})"
        message = cut_utf8(message, limit)
    if framing == "non-transparent" and LF in message:
        # The receiver would split it into two messages, the second without a header.
        return "message contains LF, which non-transparent framing cannot carry"
    return message


@dataclass
class Framed:
    """A batch made ready for the wire: the frames, which event each is, and what was refused."""

    frames: list[bytes] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    truncated: int = 0


def frame_batch(
    messages: Sequence[bytes], framing: Framing, limit: int, oversize: Oversize
) -> Framed:
    """Fit and frame every message of a batch, keeping batch order."""
    framed = Framed()
    for index, message in enumerate(messages):
        fitted = fit(message, framing, limit, oversize)
        if isinstance(fitted, str):
            framed.rejected[index] = fitted
            continue
        if len(fitted) != len(message):
            framed.truncated += 1
        framed.frames.append(frame(fitted, framing))
        framed.indexes.append(index)
    return framed
