"""Which producer failures are worth sending again, after aiokafka's own `retriable` flags."""

from __future__ import annotations

import asyncio

from aiokafka import errors

from forwarder.sinks.base import Ok, Reject, Retry, Verdict

TOO_LARGE = "record too large"

# Raised for the record itself: it can never be taken as it is.
TOO_LARGE_ERRORS = (errors.MessageSizeTooLargeError, errors.RecordTooLargeError)
# Not flagged retriable by aiokafka, yet they say "not now", not "never": no acknowledgement in
# time (a broker down, a topic without a leader) or a producer being restarted.
_TRANSIENT = (errors.KafkaTimeoutError, errors.ProducerClosed, asyncio.TimeoutError)
# The idempotent producer's sequence state is off (typically after the broker refused a batch):
# the event is fine, a new producer (new id, fresh sequences) takes it.
PRODUCER_STATE = (
    errors.OutOfOrderSequenceNumber,
    errors.UnknownProducerId,
    errors.InvalidProducerEpoch,
    errors.ProducerFenced,
)


def classify(error: BaseException | None) -> Verdict:
    """Ok for no error; reject a too-large record; retry what aiokafka marks retriable."""
    if error is None:
        return Ok()
    detail = _describe(error)
    if isinstance(error, TOO_LARGE_ERRORS):
        return Reject(f"{TOO_LARGE} ({detail})")
    if isinstance(error, _TRANSIENT + PRODUCER_STATE):
        return Retry(detail)
    if isinstance(error, errors.KafkaError):
        return Retry(detail) if error.retriable else Reject(detail)
    if isinstance(error, OSError):
        return Retry(detail)
    # Anything else comes from the client's own state (metadata changing under it), not from
    # the event: trying again is the safe side.
    return Retry(detail)


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    try:
        text = str(error)
    except Exception:  # aiokafka's abstract error classes cannot print themselves
        text = ""
    return f"{name}: {text}" if text else name
