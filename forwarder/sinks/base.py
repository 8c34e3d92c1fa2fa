"""What every sink implements, the error it raises, and delivery with retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from forwarder.metrics import WorkerMetrics

log = logging.getLogger("forwarder.sinks")


class SinkError(Exception):
    """A delivery that did not succeed; `retriable` says whether trying again can help."""

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after
        self.attempts = 1


class Sink(Protocol):
    """A destination for normalized events."""

    name: str

    async def start(self) -> None:
        """Open connections and files."""

    async def healthcheck(self) -> None:
        """Raise SinkError when the destination cannot take events."""

    async def send_batch(self, events: Sequence[bytes]) -> None:
        """Deliver every event or raise SinkError; returns only once the destination has them."""

    async def close(self) -> None:
        """Flush and release resources."""


def _retriable(error: BaseException) -> bool:
    return isinstance(error, SinkError) and error.retriable


_backoff = wait_exponential_jitter(multiplier=0.2, max=30.0, jitter=0.5)


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, SinkError) and error.retry_after is not None:
        return error.retry_after
    return float(_backoff(state))


async def deliver(sink: Sink, events: Sequence[bytes], metrics: WorkerMetrics) -> None:
    """Send one batch, retrying retriable failures until the destination acknowledges.

    A non-retriable SinkError is raised to the caller, which dead-letters the batch.
    """

    def before_sleep(state: RetryCallState) -> None:
        metrics.sink_retries.labels(sink.name).inc()
        metrics.sink_up.labels(sink.name).set(0)
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "sink delivery failed, retrying",
            extra={"sink": sink.name, "attempt": state.attempt_number, "error": str(error)},
        )

    started = time.perf_counter()
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_retriable),
        wait=_wait,
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            try:
                await sink.send_batch(events)
            except SinkError as error:
                error.attempts = attempt.retry_state.attempt_number
                raise
    metrics.sink_batch_duration.labels(sink.name).observe(time.perf_counter() - started)
    metrics.sink_events.labels(sink.name).inc(len(events))
    metrics.sink_up.labels(sink.name).set(1)
