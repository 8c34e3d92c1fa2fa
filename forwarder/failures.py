"""The failure taxonomy: what every drained queue does with a failure (docs/decisions/0008).

Every place that drains a queue in order (the ingest's direct produce and spool drain, the
normalize agent's produce, each sink, replay, backfill) puts each failure in one of these
classes and acts on the class, never on the error alone. The rule behind them: one record or
one answer that will never succeed must not hold back the records behind it, and nothing may
need a restart by hand to resume.
"""

from __future__ import annotations

import enum

from aiokafka import errors as kafka_errors


class Failure(enum.StrEnum):
    """What a failure means for the queue that met it."""

    TRANSIENT = "transient"
    """The destination is down, slow or busy: retry with back-off, as long as it takes."""
    CLIENT_BROKEN = "client_broken"
    """Our client's state is wrong (an idempotent producer out of sequence, fenced, with an
    unknown producer id): recreate the client, then retry. Retrying the same client never helps."""
    RECORD = "record"
    """Permanent for this record (too large, malformed, refused by the destination's rules): set
    it aside (quarantine or DLQ) with the error, count it, alert, and go on with the next."""
    DESTINATION = "destination"
    """Permanent for the destination until a person acts (credentials, privileges, a missing
    topic or index): retry with back-off and alert; never drop the records."""
    UNRECOGNIZED = "unrecognized"
    """An answer the client cannot interpret (a malformed or abbreviated reply): retried a
    bounded number of times, logged each time, then handled as RECORD: never looped silently."""


# The idempotent producer's sequence and epoch live in the client: after a broker restart with
# produces in flight they can fall out of step for good (seen: error 45 on every retry).
_CLIENT_BROKEN: tuple[type[BaseException], ...] = (
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.UnknownProducerId,
    kafka_errors.InvalidProducerIdMapping,
    kafka_errors.ProducerFenced,
    kafka_errors.IllegalStateError,
    kafka_errors.ProducerClosed,
)

# Larger than the producer's max_request_size or the topic's max.message.bytes (a record, or the
# batch of records it went in: RecordListTooLargeError, error 18). Named by what the installed
# aiokafka defines, so that a release without one of them still imports.
TOO_LARGE_NAMES = ("MessageSizeTooLargeError", "RecordListTooLargeError", "RecordTooLargeError")
TOO_LARGE: tuple[type[BaseException], ...] = tuple(
    getattr(kafka_errors, name) for name in TOO_LARGE_NAMES if hasattr(kafka_errors, name)
)

# The broker refuses this record whatever is retried: its size, its topic name, its bytes.
_RECORD: tuple[type[BaseException], ...] = (
    *TOO_LARGE,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
    kafka_errors.UnsupportedForMessageFormatError,
)

# A person has to change the cluster's ACLs or the client's credentials.
_DESTINATION: tuple[type[BaseException], ...] = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.TransactionalIdAuthorizationFailed,
)


def classify_kafka(error: BaseException) -> Failure:
    """The class of an exception raised by an aiokafka produce (or our wrapper around it)."""
    if isinstance(error, _RECORD):
        return Failure.RECORD
    if isinstance(error, _CLIENT_BROKEN):
        return Failure.CLIENT_BROKEN
    if isinstance(error, _DESTINATION):
        return Failure.DESTINATION
    if isinstance(error, kafka_errors.KafkaError) and not error.retriable:
        if isinstance(error, kafka_errors.KafkaTimeoutError):
            # The batch expired in the accumulator: the cluster was slow or away.
            return Failure.TRANSIENT
        # Another non-retriable broker error: a fresh client costs little and rules out ours.
        return Failure.CLIENT_BROKEN
    return Failure.TRANSIENT
