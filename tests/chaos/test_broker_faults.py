"""The broker stopped or SIGKILLed under a steady load, then started again on the same data.

While it is away the ingest must keep answering 202 from its spool (within Aha!'s 5 s), and
once it is back every accepted webhook must reach the file sink within 60 s, with no process
restarted by hand: the spool drains, the worker and its sink processes reconnect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.harness import Broker, Delivered, Load, Pipeline, check_no_loss, log, running

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

RATE = 50  # webhooks a second
RECOVERY_BOUND = 60  # seconds from the broker's return until every accepted id is delivered


def broker_outage(
    scenario: str,
    broker: Broker,
    tmp: Path,
    take_down: Callable[[Broker], None],
    down_seconds: float,
) -> None:
    with running(Pipeline(tmp, broker)) as pipeline, Load(pipeline.webhook_url, RATE) as load:
        delivered = Delivered(pipeline.events_file).start()
        began = time.monotonic()
        load.start()
        load.wait_accepted(5 * RATE)
        take_down(broker)
        went = time.monotonic()
        log(f"broker down ({scenario}) after {len(load.accepted())} accepted")
        time.sleep(down_seconds)
        start_seconds = broker.start()
        back = time.monotonic()
        log(f"broker back after {back - went:.1f} s (start took {start_seconds:.1f} s)")
        time.sleep(10)
        load.stop()
        report = check_no_loss(
            scenario,
            load,
            delivered,
            within=max(1.0, RECOVERY_BOUND - (time.monotonic() - back)),
            began=began,
            pipeline=pipeline,
            notes=[f"broker down {back - went:.1f} s (its start took {start_seconds:.1f} s)"],
        )
        delivered.close()
    assert set(report.outcomes) == {"202"}, f"webhooks refused while spooling: {report.outcomes}"
    assert load.slow_answers() == 0, "every answer within Aha!'s 5 s"


# In `make test`: this is the scenario that wedged the spool drain until a restart by hand.
def test_broker_stopped_for_20_s_under_load(broker: Broker, tmp_path: Path) -> None:
    """`broker stop` (SIGTERM, a clean shutdown) at 50 webhooks/s, 20 s down, `broker start`:
    every webhook answered 202, all in the file sink within 60 s of the broker's return."""
    broker_outage("broker stop/start, 20 s down", broker, tmp_path, Broker.stop, 20)


@pytest.mark.chaos_slow
def test_broker_sigkilled_under_load(broker: Broker, tmp_path: Path) -> None:
    """SIGKILL of the broker at 50 webhooks/s (produces in flight, unflushed log), 10 s down,
    `broker start` (log recovery): as above."""
    broker_outage("broker SIGKILL, 10 s down", broker, tmp_path, Broker.kill, 10)
