"""`aha-siem render`: webhook bodies in, any output format out, without Kafka."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from forwarder.core.normalize import Provenance, normalize_raw
from forwarder.formats import encoder_for
from forwarder.records import utc_now_iso


def split_bodies(data: bytes) -> Iterator[bytes]:
    """One JSON document, or NDJSON (one body per line)."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        for line in data.splitlines():
            if line.strip():
                yield line.strip()
        return
    yield data.strip()


def render(
    sources: list[Path],
    format_name: str,
    *,
    options: Any = None,
    token_id: str = "render",
    account: str | None = None,
    out: BinaryIO | None = None,
    stdin: BinaryIO | None = None,
) -> int:
    """Write one rendering per body to `out`; returns how many were rendered."""
    encode = encoder_for(format_name, options)
    out = out or sys.stdout.buffer
    count = 0
    inputs = sources or [Path("-")]
    for source in inputs:
        data = (stdin or sys.stdin.buffer).read() if str(source) == "-" else source.read_bytes()
        for body in split_bodies(data):
            now = utc_now_iso()
            provenance = Provenance(
                received_at=now,
                source="render",
                token_id=token_id,
                body_sha256=hashlib.sha256(body).hexdigest(),
                account=account,
            )
            out.write(encode(normalize_raw(body, provenance, now=now)) + b"\n")
            count += 1
    out.flush()
    return count
