"""What every sink implements, what it reports, and delivery with retries.

A sink's `send_batch` reports what happened to each event as a verdict (`BatchResult`); it
raises only for a bug. Everything every sink shares lives here, once: back-off and Retry-After,
the bound on answers nobody understands, dead-lettering, and halving a request the destination
found too large (docs/decisions/0010-sink-failures.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from forwarder.failures import Failure
from forwarder.metrics import SinkMetrics
from forwarder.sinks.config import RetryConfig

log = logging.getLogger("forwarder.sinks")

_LONGEST_RETRY_AFTER = 600.0

UNRECOGNIZED_ANSWER = "unrecognized_answer"
"""Dead-letter reason of events whose answers the sink could not interpret, attempt after attempt."""


@dataclass(frozen=True)
class Ok:
    """The destination took the event."""


@dataclass(frozen=True)
class Retry:
    """Worth trying again, after `after` seconds when the destination said so.

    `failure` says why: TRANSIENT (as long as it takes), DESTINATION (as long as it takes, logged
    as an error: an operator must act) or UNRECOGNIZED (an answer the sink could not interpret:
    a bounded number of times, then the DLQ).
    """

    reason: str
    after: float | None = None
    failure: Failure = Failure.TRANSIENT


@dataclass(frozen=True)
class Reject:
    """Trying again cannot help: the event goes to the DLQ."""

    reason: str
    failure: Failure = field(default=Failure.RECORD, init=False)


@dataclass(frozen=True)
class TooLarge:
    """The request was larger than the destination takes (an HTTP 413): the framework sends
    its events again in halves, down to one event, which is then a RECORD failure."""

    reason: str
    failure: Failure = field(default=Failure.RECORD, init=False)


Verdict = Ok | Retry | Reject | TooLarge

OK = Ok()


@dataclass(frozen=True)
class BatchResult:
    """What became of a batch given to `send_batch`: one verdict per position (absent means
    `whole`), and the destination's id of the request that carried each position, where it has
    one (Azure's `x-ms-client-request-id`: a dead-lettered event keeps it)."""

    whole: Verdict = OK
    items: Mapping[int, Verdict] = field(default_factory=dict)
    request_ids: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, verdict: Verdict, request_ids: Mapping[int, str] | None = None) -> BatchResult:
        """One verdict for the whole request."""
        return cls(verdict, {}, dict(request_ids or {}))

    @classmethod
    def each(
        cls, verdicts: Mapping[int, Verdict], request_ids: Mapping[int, str] | None = None
    ) -> BatchResult:
        """One verdict per position; a position left out was delivered."""
        return cls(OK, dict(verdicts), dict(request_ids or {}))

    def verdict(self, position: int) -> Verdict:
        """The verdict on the event at `position` of the batch."""
        return self.items.get(position, self.whole)

    def verdicts(self, size: int) -> list[Verdict]:
        """The verdict on each of the `size` events of the batch, in order."""
        return [self.verdict(position) for position in range(size)]

    @property
    def delivered(self) -> bool:
        """Whether every event was taken."""
        return isinstance(self.whole, Ok) and all(isinstance(v, Ok) for v in self.items.values())


DELIVERED = BatchResult()
"""The result of a batch the destination took whole."""


def about(verdict: Verdict, where: str) -> Verdict:
    """The verdict with `where` (the request, the destination) leading its reason."""
    if isinstance(verdict, Ok):
        return verdict
    return dataclasses.replace(verdict, reason=f"{where}: {verdict.reason}")


class SinkError(Exception):
    """The destination cannot be reached or used: raised by `start` and `healthcheck` only,
    which have no batch to report on (`send_batch` returns verdicts instead)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Sink(Protocol):
    """A destination for normalized events."""

    name: str

    async def start(self) -> None:
        """Open connections and files (raises SinkError or OSError when it cannot)."""

    async def healthcheck(self) -> None:
        """Raise SinkError when the destination cannot take events."""

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The bytes `send_batch` takes for one event (`payload` is it in the sink's format)."""

    async def send_batch(self, events: Sequence[bytes]) -> BatchResult:
        """Send the events once and say what became of each; raise only for a bug."""

    async def close(self) -> None:
        """Flush and release resources."""


@dataclass
class Outcome:
    """What became of a batch: delivered indexes and the rejected ones with their reason."""

    delivered: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    exhausted: set[int] = field(default_factory=set)  # rejected because retries ran out
    # Rejected because the destination's answers about them could not be understood.
    unrecognized: set[int] = field(default_factory=set)
    attempts: int = 0
    # The destination's id of the last failed request that carried each event, when it has one.
    request_ids: dict[int, str] = field(default_factory=dict)

    def dead_letter_reason(self, index: int) -> str:
        """The reason label of a rejected event: rejected, retries_exhausted, unrecognized_answer."""
        if index in self.unrecognized:
            return UNRECOGNIZED_ANSWER
        if index in self.exhausted:
            return "retries_exhausted"
        return "rejected"


class _Pending(Exception):
    """Events are left to send again: carries the attempt's retries out to tenacity."""

    def __init__(self, retries: Sequence[Retry], events: int) -> None:
        first = retries[0].reason if retries else "not sent"
        super().__init__(first)
        self.events = events
        waits = [retry.after for retry in retries if retry.after is not None]
        self.retry_after = max(waits) if waits else None
        self.failure = _worst(retry.failure for retry in retries)
        # Every retried event was retried for an answer not understood (logged when it came).
        self.only_unrecognized = bool(retries) and all(
            retry.failure is Failure.UNRECOGNIZED for retry in retries
        )


def _worst(failures: Iterable[Failure]) -> Failure:
    """The class retried events are reported under: a person's job first."""
    found = set(failures)
    for failure in (Failure.DESTINATION, Failure.UNRECOGNIZED):
        if failure in found:
            return failure
    return Failure.TRANSIENT


async def deliver(
    sink: Sink,
    events: Sequence[bytes],
    metrics: SinkMetrics,
    retry: RetryConfig | None = None,
) -> Outcome:
    """Send one batch, retrying what can succeed until the destination acknowledges it.

    Returns which events were delivered and which were rejected (to be dead-lettered): a
    `Reject`, an event too large for the destination even alone, retries exhausted under
    `max_attempts`, or `max_unrecognized_attempts` answers the sink could not interpret
    (whatever `max_attempts` says: an answer nobody understands must not hold back the events
    behind it for ever).

    A request answered `TooLarge` is sent again at once in two halves, each its own request,
    down to one event; the halves stay apart in later attempts, so a half that was taken is
    never sent again.
    """
    retry = retry or RetryConfig()
    outcome = Outcome()
    # The events still to send, as the requests they go in (split when one was too large).
    pending: list[list[int]] = [list(range(len(events)))] if events else []
    # Per event: the attempts whose answer about it could not be interpreted.
    unread: dict[int, int] = {}
    backoff = wait_exponential_jitter(
        multiplier=retry.initial_backoff_seconds,
        max=retry.max_backoff_seconds,
        jitter=retry.initial_backoff_seconds,
    )

    def waiting() -> int:
        return sum(map(len, pending))

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Pending) and error.retry_after is not None:
            # Honour the destination's Retry-After, but not an absurd one.
            return min(error.retry_after, _LONGEST_RETRY_AFTER)
        return float(backoff(state))

    def before_sleep(state: RetryCallState) -> None:
        metrics.sink_retries.labels(sink.name).inc()
        metrics.sink_up.labels(sink.name).set(0)
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, _Pending) or error.only_unrecognized:
            return  # logged with the answer when it came
        extra = {
            "sink": sink.name,
            "attempt": state.attempt_number,
            "events": error.events,
            "failure": str(error.failure),
            "error": str(error),
        }
        if error.failure is Failure.DESTINATION:
            # Configuration or credentials: nothing changes until a person acts, and nothing is
            # dropped meanwhile (the sink is reported down).
            log.error("sink destination refuses the sink's settings, events wait", extra=extra)
        else:
            log.warning("sink delivery failed, retrying", extra=extra)

    def not_understood(answers: Mapping[int, str], attempt: int) -> set[int]:
        """Count one answer not understood about the events of `answers`; return the ones that
        had `max_unrecognized_attempts` of them, now dead-lettered."""
        metrics.sink_unrecognized.labels(sink.name).inc()
        for index in answers:
            unread[index] = unread.get(index, 0) + 1
        first = next(iter(answers))
        log.warning(
            "sink could not interpret the destination's answer",
            extra={
                "sink": sink.name,
                "attempt": attempt,
                "events": len(answers),
                "unrecognized_attempts": max(unread[index] for index in answers),
                "max_unrecognized_attempts": retry.max_unrecognized_attempts,
                "answer": answers[first],
            },
        )
        spent = {index for index in answers if unread[index] >= retry.max_unrecognized_attempts}
        if not spent:
            return spent
        log.error(
            "sink could not interpret the destination's answers, dead-lettering",
            extra={"sink": sink.name, "events": len(spent), "answer": answers[min(spent)]},
        )
        for index in sorted(spent):
            outcome.rejected[index] = (
                f"{UNRECOGNIZED_ANSWER}: the destination's answer could not be understood "
                f"({unread[index]} attempts): {answers[index]}"
            )
            outcome.unrecognized.add(index)
        return spent

    async def attempt_once(attempt: int) -> None:
        """Send every pending request once (halving those too large); raise _Pending when
        events are left for another attempt."""
        nonlocal pending
        requests, pending = deque(pending), []
        retried: list[Retry] = []
        unrecognized: dict[int, str] = {}
        while requests:
            group = requests.popleft()
            result = await sink.send_batch([events[index] for index in group])
            for position, request_id in result.request_ids.items():
                if 0 <= position < len(group):
                    outcome.request_ids[group[position]] = request_id
            again: list[int] = []
            too_large: list[int] = []
            large_reason = ""
            for position, index in enumerate(group):
                verdict = result.verdict(position)
                if isinstance(verdict, Ok):
                    outcome.delivered.append(index)
                elif isinstance(verdict, Reject):
                    outcome.rejected[index] = verdict.reason
                elif isinstance(verdict, TooLarge):
                    too_large.append(index)
                    large_reason = verdict.reason
                else:
                    again.append(index)
                    retried.append(verdict)
                    if verdict.failure is Failure.UNRECOGNIZED:
                        unrecognized[index] = verdict.reason
            if too_large:
                if len(group) == 1:
                    outcome.rejected[group[0]] = (
                        f"too large for the destination, even alone: {large_reason}"
                    )
                else:
                    halves = _halves(too_large)
                    log.info(
                        "request too large for the destination, sending it in halves",
                        extra={
                            "sink": sink.name,
                            "events": len(too_large),
                            "halves": [len(half) for half in halves],
                            "error": large_reason,
                        },
                    )
                    requests.extendleft(reversed(halves))
            if again:
                pending.append(again)
            if isinstance(result.whole, Retry) and len(again) == len(group):
                # The destination is down or busy: the other requests wait for the back-off.
                pending.extend(requests)
                requests.clear()
        if unrecognized:
            spent = not_understood(unrecognized, attempt)
            if spent:
                pending = [
                    kept for group in pending if (kept := [i for i in group if i not in spent])
                ]
        if pending:
            raise _Pending(retried, waiting())

    started = time.perf_counter()
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_Pending),
            wait=wait,
            stop=stop_never
            if retry.max_attempts is None
            else stop_after_attempt(retry.max_attempts),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                outcome.attempts = attempt.retry_state.attempt_number
                await attempt_once(outcome.attempts)
    except _Pending as exhausted:
        left = sorted(index for group in pending for index in group)
        log.error(
            "sink retries exhausted, dead-lettering",
            extra={"sink": sink.name, "events": len(left), "attempts": outcome.attempts},
        )
        for index in left:
            outcome.rejected[index] = f"retries exhausted: {exhausted}"
            outcome.exhausted.add(index)
    metrics.sink_batch_duration.labels(sink.name).observe(time.perf_counter() - started)
    if outcome.delivered:
        metrics.sink_events.labels(sink.name).inc(len(outcome.delivered))
        metrics.sink_up.labels(sink.name).set(1)
    return outcome


def _halves(indexes: list[int]) -> list[list[int]]:
    middle = len(indexes) // 2
    return [indexes[:middle], indexes[middle:]] if middle else [indexes]
