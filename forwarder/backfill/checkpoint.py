"""How far a backfill got: written after every page Kafka acknowledged, read to resume."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import orjson

from forwarder.records import iso_millis, utc_now_iso


@dataclass
class Checkpoint:
    """A backfill of one account and range: the slice and page to fetch next, and the counts."""

    account: str
    topic: str
    since: str
    until: str
    slice_start: str
    page: int = 1
    pages: int = 0
    audits: int = 0
    injected: int = 0
    skipped: int = 0
    updated_at: str = ""

    @classmethod
    def new(cls, account: str, topic: str, since: datetime, until: datetime) -> Checkpoint:
        """A checkpoint at the start of a range."""
        start = iso_millis(since)
        return cls(account, topic, start, iso_millis(until), start)


def checkpoint_path(
    directory: Path, account: str, topic: str, since: datetime, until: datetime
) -> Path:
    """The file of one backfill: the same command line finds the same file."""
    digest = hashlib.sha256(
        f"{account}\n{topic}\n{iso_millis(since)}\n{iso_millis(until)}".encode()
    ).hexdigest()[:16]
    return directory / f"{account}-{digest}.json"


def load(path: Path) -> Checkpoint | None:
    """The checkpoint in `path`, or None when there is none (a torn file counts as none)."""
    try:
        data = orjson.loads(path.read_bytes())
        return Checkpoint(**data)
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, TypeError):
        # Writes are atomic (rename), so only a hand-edited file can be broken; start over.
        return None


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically and durably: a crash leaves the old or the new checkpoint, never half."""
    checkpoint.updated_at = utc_now_iso()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(orjson.dumps(asdict(checkpoint), option=orjson.OPT_INDENT_2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def remove(path: Path) -> None:
    """Forget a finished backfill."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename itself is durable only once the folder is synced.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
