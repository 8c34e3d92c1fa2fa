"""Which producer failures are worth sending again, after aiokafka's own `retriable` flags."""

from __future__ import annotations

import asyncio

from aiokafka import errors

from forwarder.failures import TOO_LARGE as TOO_LARGE_ERRORS
from forwarder.failures import Failure, classify_kafka
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict

TOO_LARGE = "record too large"

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
    """The failure taxonomy (forwarder.failures) for one produce: too large (the framework sends
    it again alone, then to the DLQ: the broker judges a whole batch of records, so an oversized
    one fails its neighbours in the same partition too), reject a record Kafka refuses for
    good; retry the rest, authorization as a destination failure, an unknown broker error a
    bounded number of times (with a new producer each time)."""
    if error is None:
        return Ok()
    detail = _describe(error)
    if isinstance(error, TOO_LARGE_ERRORS):
        return TooLarge(f"{TOO_LARGE} ({detail})")
    if isinstance(error, _TRANSIENT + PRODUCER_STATE):
        return Retry(detail)
    if isinstance(error, errors.KafkaError) and not error.retriable:
        failure = classify_kafka(error)
        if failure is Failure.RECORD:
            return Reject(detail)
        if failure is Failure.DESTINATION:
            return Retry(f"{detail} (check the sink's credentials and ACLs)", failure=failure)
        # An error aiokafka does not know how to retry and we cannot place: never for ever.
        return Retry(detail, failure=Failure.UNRECOGNIZED)
    # Retriable Kafka errors, the network, and the client's own state (metadata changing under
    # it), not the event: trying again is the safe side.
    return Retry(detail)


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    try:
        text = str(error)
    except Exception:  # aiokafka's abstract error classes cannot print themselves
        text = ""
    return f"{name}: {text}" if text else name
