"""Chaos scenarios: faults injected into a real broker, real processes and real receivers.

Every module starts a broker of its own (scenarios stop and kill it). Scenarios marked
`chaos_slow` run only with `make chaos` (CHAOS_SLOW=1) or when `-m` names them; the
others run in `make test` too. Each scenario's numbers (answers, deliveries, duplicates) are
printed at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import REPORTS, Broker, log

SLOW_ENV = "CHAOS_SLOW"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(SLOW_ENV) == "1" or "chaos_slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason=f"slow chaos scenario: `make chaos` or {SLOW_ENV}=1")
    for item in items:
        if item.get_closest_marker("chaos_slow") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("chaos scenarios")
    for report in REPORTS:
        terminalreporter.write_line(report.render())


def start_broker(tmp: Path, *, proxied: bool) -> Iterator[Broker]:
    """A broker for one module; always stopped, with its proxy."""
    broker = Broker(tmp, proxied=proxied)
    try:
        seconds = broker.start()
        log(f"broker up on {broker.bootstrap} in {seconds:.1f} s (state {tmp})")
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Apache Kafka of this module alone."""
    yield from start_broker(tmp_path_factory.mktemp("chaos-kafka"), proxied=False)


@pytest.fixture(scope="module")
def proxied_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Apache Kafka of this module alone, with a proxied listener for the ingest."""
    yield from start_broker(tmp_path_factory.mktemp("chaos-kafka"), proxied=True)
