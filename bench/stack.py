"""The processes the long benchmarks run: the chaos suite's pipeline on the bench's broker and
topics, and what /proc says about a process's memory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from forwarder.config import parse
from tests.chaos.harness import Broker, Pipeline

PARTITIONS = 8


class SharedBroker(Broker):
    """The broker the bench was given, as the chaos pipeline wants one: never started or
    stopped from here (its pid and log are unknown)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.proxy = None
        self.state_dir = Path("/nonexistent")

    @property
    def bootstrap(self) -> str:
        """The address the bench was given."""
        return self._bootstrap


def pipeline(
    tmp: Path, bootstrap: str, prefix: str, sinks: list[dict[str, Any]], dedupe: dict[str, Any]
) -> Pipeline:
    """The chaos suite's pipeline, on the bench's topics (all named `prefix.*`, deleted at the
    end of the bench) and the default 8 partitions, logging warnings only."""
    made = Pipeline(tmp, SharedBroker(bootstrap), sinks=sinks)
    tree = made.tree
    tree["log_level"] = "warning"
    tree["topics"] = {
        "raw": f"{prefix}.raw",
        "invalid": f"{prefix}.invalid",
        "events": f"{prefix}.events",
        "dlq_prefix": f"{prefix}.dlq.",
        "partitions": PARTITIONS,
    }
    tree["worker"]["app_id"] = f"{prefix}.app"
    tree["dedupe"] = dedupe
    made.config = parse(tree)
    made.worker_config.write_text(yaml.safe_dump(tree))
    made.ingest_config.write_text(yaml.safe_dump(tree))
    return made


def memory_kib(pid: int | None) -> dict[str, int] | None:
    """VmRSS and RssAnon of a process in KiB (Linux /proc), None when it is gone."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = dict(re.findall(r"^(VmRSS|RssAnon):\s+(\d+) kB$", text, re.M))
    if "VmRSS" not in found:
        return None
    return {name: int(value) for name, value in found.items()}


def mib(kib: int | None) -> str:
    """KiB as MiB with one decimal, or a dash."""
    return "-" if kib is None else f"{kib / 1024:.1f}"
