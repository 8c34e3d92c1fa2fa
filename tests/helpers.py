"""Shared test helpers: the sample corpus and small fakes."""

from __future__ import annotations

from pathlib import Path

import forwarder

SAMPLES = Path(forwarder.__file__).parent / "samples"
SHARED_EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "aha" / "example-ecs-event.json"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "example.yaml"


def sample_paths() -> list[Path]:
    """Every sample webhook body, collation burst included."""
    return sorted(SAMPLES.rglob("*.json"))


class RecordingWriter:
    """A Writer that keeps what it was given; `fail` makes `write` raise it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, dict[str, str]]] = []
        self.fail: Exception | None = None
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def write(
        self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> str:
        if self.fail is not None:
            raise self.fail
        self.sent.append((topic, value, key, {name: raw.decode() for name, raw in headers}))
        return "kafka"

    async def ready(self) -> bool:
        return self.started and self.fail is None
