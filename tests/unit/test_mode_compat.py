"""Fails when mode changes under the private names forwarder/mode_compat.py relies on."""

from __future__ import annotations

import inspect
import signal

import faust
import mode

from forwarder.mode_compat import StepBeforeStop


def test_the_signal_stop_is_mode_s_private_coroutine_with_the_same_signature() -> None:
    stop = mode.Worker._stop_on_signal
    assert inspect.iscoroutinefunction(stop)
    assert list(inspect.signature(stop).parameters) == ["self", "signal"]
    # Faust's worker does not override it: the mixin runs before mode's own.
    assert faust.Worker._stop_on_signal is mode.Worker._stop_on_signal
    # And mode's signal handler is what schedules it.
    assert "_stop_on_signal" in inspect.getsource(mode.Worker._schedule_shutdown)


async def test_the_step_runs_before_mode_s_own_stop_with_the_grace_it_may_take() -> None:
    calls: list[object] = []

    class Base:
        async def _stop_on_signal(self, signal: signal.Signals) -> None:
            calls.append(("stop", signal))

    class Worker(StepBeforeStop, Base):
        pass

    async def step(grace: float) -> int:
        calls.append(("step", grace))
        return 0

    worker = Worker()
    worker.before_stop_step = step
    worker.grace_seconds = 2.5
    await worker._stop_on_signal(signal.SIGTERM)
    assert calls == [("step", 2.5), ("stop", signal.SIGTERM)]


async def test_a_failing_step_does_not_keep_the_worker_from_stopping() -> None:
    stopped: list[bool] = []

    class Base:
        async def _stop_on_signal(self, signal: signal.Signals) -> None:
            stopped.append(True)

    class Worker(StepBeforeStop, Base):
        pass

    async def step(grace: float) -> int:
        raise RuntimeError("broken")

    worker = Worker()
    worker.before_stop_step = step
    worker.grace_seconds = 1.0
    await worker._stop_on_signal(signal.SIGINT)
    assert stopped == [True]
