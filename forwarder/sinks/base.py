"""What every sink implements, the errors it raises, and delivery with retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
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


class SinkError(Exception):
    """A delivery that did not succeed; `retriable` says whether trying again can help.

    `failure` is its class in the project's taxonomy (forwarder/failures.py): by default
    TRANSIENT when retriable, RECORD when not. DESTINATION is retried like TRANSIENT but logged
    as an error; UNRECOGNIZED is retried at most `retry.max_unrecognized_attempts` times.

    `request_ids` maps positions of the batch given to `send_batch` to the destination's id of
    the request that carried them (Azure's `x-ms-client-request-id`): a dead-lettered event
    keeps it, to be found in the destination's own logs.
    """

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        retry_after: float | None = None,
        reason: str | None = None,
        failure: Failure | None = None,
        request_ids: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after
        self.reason = reason or ("unavailable" if retriable else "rejected")
        self.failure = failure or (Failure.TRANSIENT if retriable else Failure.RECORD)
        self.attempts = 1
        self.request_ids = dict(request_ids or {})


class PartialFailure(SinkError):
    """Some events of a batch were not taken; the rest were.

    `retry` holds the indexes (into the batch given to `send_batch`) worth sending again,
    `rejected` maps the indexes that never can be taken to the reason. `unrecognized` maps the
    indexes of `retry` whose answer the sink could not interpret to what it said: they are
    retried a bounded number of times only.
    """

    def __init__(
        self,
        message: str,
        *,
        retry: Sequence[int] = (),
        rejected: Mapping[int, str] | None = None,
        retry_after: float | None = None,
        unrecognized: Mapping[int, str] | None = None,
        failure: Failure | None = None,
        request_ids: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(
            message,
            retriable=bool(retry),
            retry_after=retry_after,
            reason="partial",
            failure=failure,
            request_ids=request_ids,
        )
        self.retry = tuple(retry)
        self.rejected = dict(rejected or {})
        self.unrecognized = {
            index: reason for index, reason in (unrecognized or {}).items() if index in self.retry
        }


@dataclass(frozen=True)
class Ok:
    """The destination took everything."""


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
    """Trying again cannot help: the events go to the DLQ."""

    reason: str


Verdict = Ok | Retry | Reject


def raise_for(verdict: Verdict, message: str, request_ids: Mapping[int, str] | None = None) -> None:
    """Turn a classifier's verdict into the SinkError `deliver` understands (Ok returns)."""
    if isinstance(verdict, Retry):
        raise SinkError(
            f"{message}: {verdict.reason}",
            retriable=True,
            retry_after=verdict.after,
            failure=verdict.failure,
            request_ids=request_ids,
        )
    if isinstance(verdict, Reject):
        raise SinkError(
            f"{message}: {verdict.reason}",
            retriable=False,
            reason="rejected",
            request_ids=request_ids,
        )


def partial_failure(
    verdicts: Mapping[int, Verdict], message: str, request_ids: Mapping[int, str] | None = None
) -> PartialFailure | None:
    """The PartialFailure for per-event verdicts (by index in the batch), or None if all are Ok."""
    retry = sorted(index for index, verdict in verdicts.items() if isinstance(verdict, Retry))
    rejected = {
        index: verdict.reason
        for index, verdict in sorted(verdicts.items())
        if isinstance(verdict, Reject)
    }
    if not retry and not rejected:
        return None
    retried = [verdict for verdict in verdicts.values() if isinstance(verdict, Retry)]
    waits = [verdict.after for verdict in retried if verdict.after]
    unrecognized = {
        index: verdict.reason
        for index, verdict in sorted(verdicts.items())
        if isinstance(verdict, Retry) and verdict.failure is Failure.UNRECOGNIZED
    }
    first = next(iter(rejected.values()), None)
    if first is None:
        verdict = verdicts[retry[0]]
        first = verdict.reason if isinstance(verdict, Retry) else ""
    return PartialFailure(
        f"{message}: {len(retry)} of {len(verdicts)} to retry, {len(rejected)} rejected; "
        f"first: {first}",
        retry=retry,
        rejected=rejected,
        retry_after=max(waits) if waits else None,
        unrecognized=unrecognized,
        failure=_worst(verdict.failure for verdict in retried) if retry else None,
        request_ids=request_ids,
    )


def _worst(failures: Iterable[Failure]) -> Failure:
    """The class a batch's retried events are reported under: a person's job first."""
    found = set(failures)
    for failure in (Failure.DESTINATION, Failure.UNRECOGNIZED):
        if failure in found:
            return failure
    return Failure.TRANSIENT


def settle_batch(
    whole: Verdict | None,
    verdicts: Mapping[int, Verdict],
    *,
    sink: str,
    request: str,
    batch: str,
    request_ids: Mapping[int, str] | None = None,
) -> None:
    """End a batch sent as one request (maybe split): return when every event was delivered.

    `whole` is the failure of the request itself, raised as a SinkError named by `request`;
    otherwise the per-event `verdicts` become a PartialFailure named by `batch`, its rejections
    logged with their reasons. `request_ids` (by index in the batch) go with the error.
    """
    if whole is not None:
        raise_for(whole, request, request_ids)
        return
    failure = partial_failure(verdicts, batch, request_ids)
    if failure is None:
        return
    if failure.rejected:
        log.warning(
            "events rejected by the destination",
            extra={
                "sink": sink,
                "rejected": len(failure.rejected),
                "reasons": sorted({reason.split(":")[0] for reason in failure.rejected.values()}),
            },
        )
    raise failure


class Sink(Protocol):
    """A destination for normalized events."""

    name: str

    async def start(self) -> None:
        """Open connections and files."""

    async def healthcheck(self) -> None:
        """Raise SinkError when the destination cannot take events."""

    def prepare(self, doc: dict[str, Any], payload: bytes) -> bytes:
        """The bytes `send_batch` takes for one event (`payload` is it in the sink's format)."""

    async def send_batch(self, events: Sequence[bytes]) -> None:
        """Deliver every event or raise SinkError (PartialFailure naming the failed ones)."""

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


def _only_unrecognized(error: SinkError) -> bool:
    """Whether every event `error` retries is retried for an answer not understood."""
    if isinstance(error, PartialFailure):
        return len(error.unrecognized) == len(error.retry)
    return error.failure is Failure.UNRECOGNIZED


class _Retryable(Exception):
    """Carries a retriable failure out of one attempt to tenacity."""

    def __init__(self, error: SinkError) -> None:
        super().__init__(str(error))
        self.error = error


async def deliver(
    sink: Sink,
    events: Sequence[bytes],
    metrics: SinkMetrics,
    retry: RetryConfig | None = None,
) -> Outcome:
    """Send one batch, retrying what can succeed until the destination acknowledges it.

    Returns which events were delivered and which were rejected (to be dead-lettered): a
    rejection, a partial failure's rejected items, retries exhausted under `max_attempts`, or
    `max_unrecognized_attempts` answers the sink could not interpret (whatever `max_attempts`
    says: an answer nobody understands must not hold back the events behind it for ever).
    """
    retry = retry or RetryConfig()
    outcome = Outcome()
    pending = list(range(len(events)))
    # Per event: the attempts whose answer about it could not be interpreted.
    unread: dict[int, int] = {}
    backoff = wait_exponential_jitter(
        multiplier=retry.initial_backoff_seconds,
        max=retry.max_backoff_seconds,
        jitter=retry.initial_backoff_seconds,
    )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.error.retry_after is not None:
            # Honour the destination's Retry-After, but not an absurd one.
            return min(error.error.retry_after, _LONGEST_RETRY_AFTER)
        return float(backoff(state))

    def before_sleep(state: RetryCallState) -> None:
        metrics.sink_retries.labels(sink.name).inc()
        metrics.sink_up.labels(sink.name).set(0)
        error = state.outcome.exception() if state.outcome else None
        failure = error.error.failure if isinstance(error, _Retryable) else Failure.TRANSIENT
        if isinstance(error, _Retryable) and _only_unrecognized(error.error):
            return  # logged with the answer when it came
        extra = {
            "sink": sink.name,
            "attempt": state.attempt_number,
            "events": len(pending),
            "failure": str(failure),
            "error": str(error),
        }
        if failure is Failure.DESTINATION:
            # Configuration or credentials: nothing changes until a person acts, and nothing is
            # dropped meanwhile (the sink is reported down).
            log.error("sink destination refuses the sink's settings, events wait", extra=extra)
        else:
            log.warning("sink delivery failed, retrying", extra=extra)

    def not_understood(indexes: Sequence[int], answers: Mapping[int, str], attempt: int) -> None:
        """Count one answer not understood about `indexes`; dead-letter the events that had
        `max_unrecognized_attempts` of them and drop them from `pending`."""
        nonlocal pending
        metrics.sink_unrecognized.labels(sink.name).inc()
        for index in indexes:
            unread[index] = unread.get(index, 0) + 1
        spent = [index for index in indexes if unread[index] >= retry.max_unrecognized_attempts]
        log.warning(
            "sink could not interpret the destination's answer",
            extra={
                "sink": sink.name,
                "attempt": attempt,
                "events": len(indexes),
                "unrecognized_attempts": max(unread[index] for index in indexes),
                "max_unrecognized_attempts": retry.max_unrecognized_attempts,
                "answer": answers[indexes[0]],
            },
        )
        if not spent:
            return
        log.error(
            "sink could not interpret the destination's answers, dead-lettering",
            extra={"sink": sink.name, "events": len(spent), "answer": answers[spent[0]]},
        )
        for index in spent:
            outcome.rejected[index] = (
                f"{UNRECOGNIZED_ANSWER}: the destination's answer could not be understood "
                f"({unread[index]} attempts): {answers[index]}"
            )
            outcome.unrecognized.add(index)
        gone = set(spent)
        pending = [index for index in pending if index not in gone]

    def keep_request_ids(error: SinkError) -> None:
        """Remember which request of the destination last carried each event of `error`."""
        for position, request_id in error.request_ids.items():
            if 0 <= position < len(pending):
                outcome.request_ids[pending[position]] = request_id

    started = time.perf_counter()
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(lambda error: isinstance(error, _Retryable)),
            wait=wait,
            stop=stop_never
            if retry.max_attempts is None
            else stop_after_attempt(retry.max_attempts),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                outcome.attempts = attempt.retry_state.attempt_number
                batch = [events[index] for index in pending]
                try:
                    await sink.send_batch(batch)
                except PartialFailure as error:
                    keep_request_ids(error)
                    for position, reason in error.rejected.items():
                        outcome.rejected[pending[position]] = reason
                    retried = {pending[position] for position in error.retry}
                    unrecognized = {
                        pending[position]: answer for position, answer in error.unrecognized.items()
                    }
                    outcome.delivered.extend(
                        index
                        for index in pending
                        if index not in retried and index not in outcome.rejected
                    )
                    pending = [index for index in pending if index in retried]
                    if unrecognized:
                        not_understood(list(unrecognized), unrecognized, outcome.attempts)
                    if pending:
                        raise _Retryable(error) from None
                except SinkError as error:
                    keep_request_ids(error)
                    if not error.retriable:
                        for index in pending:
                            outcome.rejected[index] = str(error)
                        pending = []
                    elif error.failure is Failure.UNRECOGNIZED:
                        not_understood(
                            pending, dict.fromkeys(pending, str(error)), outcome.attempts
                        )
                        if pending:
                            raise _Retryable(error) from None
                    else:
                        raise _Retryable(error) from None
                else:
                    outcome.delivered.extend(pending)
                    pending = []
    except _Retryable as exhausted:
        log.error(
            "sink retries exhausted, dead-lettering",
            extra={"sink": sink.name, "events": len(pending), "attempts": outcome.attempts},
        )
        for index in pending:
            outcome.rejected[index] = f"retries exhausted: {exhausted.error}"
            outcome.exhausted.add(index)
    metrics.sink_batch_duration.labels(sink.name).observe(time.perf_counter() - started)
    if outcome.delivered:
        metrics.sink_events.labels(sink.name).inc(len(outcome.delivered))
        metrics.sink_up.labels(sink.name).set(1)
    return outcome
