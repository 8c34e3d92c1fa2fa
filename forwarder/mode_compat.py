"""Every use of a private name of mode (mode-streaming), each with the upstream behaviour it corrects.

tests/unit/test_mode_compat.py fails when mode changes under these names.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("forwarder.worker")

StopStep = Callable[[float], Awaitable[int]]


class StepBeforeStop:
    """A mixin for a `mode.Worker` (Faust's worker) that runs a step when a signal asks it to stop.

    mode's private `Worker._stop_on_signal` stops the whole service tree at once, the consumer
    first, so nothing can still flow through the agents after SIGTERM. The step runs before it,
    while the agents still consume (window mode ships its held groups through them), for at
    most `grace_seconds`; mode's own stop follows. Put it before the worker class in the bases.
    """

    before_stop_step: StopStep | None = None
    grace_seconds: float = 0.0

    async def _stop_on_signal(self, signal: signal.Signals) -> None:
        step = self.before_stop_step
        if step is not None and self.grace_seconds > 0:
            try:
                await step(self.grace_seconds)
            except Exception:
                log.exception("the step before stopping failed; stopping anyway")
        parent: Any = super()
        await parent._stop_on_signal(signal)
