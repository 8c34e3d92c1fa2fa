"""The Kafka sink's pure parts: error rules (a table), message keys, the prepared-event framing."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import errors
from pydantic import ValidationError

from forwarder.failures import TOO_LARGE as TOO_LARGE_ERRORS
from forwarder.failures import Failure
from forwarder.sinks.base import Ok, Reject, Retry, TooLarge, Verdict
from forwarder.sinks.ids import event_key
from forwarder.sinks.kafka.config import KafkaSinkConfig
from forwarder.sinks.kafka.keys import message_key, record_key
from forwarder.sinks.kafka.retry import PRODUCER_STATE, TOO_LARGE, classify
from forwarder.sinks.kafka.sink import KafkaSink, pack, unpack
from tests.helpers import SAMPLES, normalized_sample


def kind(verdict: Verdict) -> str:
    if isinstance(verdict, TooLarge):
        assert verdict.reason.startswith(TOO_LARGE)
        return "too-large"
    return type(verdict).__name__.lower()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, "ok"),
        # The framework sends it again alone, then to the DLQ (a RECORD failure).
        (errors.MessageSizeTooLargeError("too big"), "too-large"),
        (errors.RecordTooLargeError(), "too-large"),
        # Error 18: the batch of records it went in was too large for the broker.
        (errors.RecordListTooLargeError(), "too-large"),
        (errors.KafkaTimeoutError(), "retry"),
        (errors.ProducerClosed(), "retry"),
        (TimeoutError(), "retry"),
        (errors.KafkaConnectionError("refused"), "retry"),
        (errors.NotLeaderForPartitionError(), "retry"),
        (errors.LeaderNotAvailableError(), "retry"),
        (errors.NotEnoughReplicasError(), "retry"),
        (errors.UnknownTopicOrPartitionError(), "retry"),
        (errors.RequestTimedOutError(), "retry"),
        # The cluster's ACLs, not the event: it waits for an operator (alerted, never dropped).
        (errors.TopicAuthorizationFailedError(), "retry"),
        (errors.InvalidTopicError(), "reject"),
        (errors.UnsupportedForMessageFormatError(), "reject"),
        (errors.CorruptRecordException(), "reject"),
        (ConnectionResetError(104, "reset"), "retry"),
        # The producer's sequence state, not the event: a new producer sends it.
        (errors.OutOfOrderSequenceNumber(), "retry"),
        (errors.UnknownProducerId(), "retry"),
        (errors.ProducerFenced(), "retry"),
    ],
)
def test_classify(error: BaseException | None, expected: str) -> None:
    verdict = classify(error)
    assert kind(verdict) == expected
    if error is not None:
        assert type(error).__name__ in getattr(verdict, "reason", "")
    else:
        assert verdict == Ok()


def test_retriable_flag_of_aiokafka_is_followed() -> None:
    kafka_errors: list[type[errors.KafkaError]] = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.KafkaError)
    ]
    assert len(kafka_errors) > 50
    for error_type in kafka_errors:
        name = error_type.__name__
        if issubclass(error_type, TOO_LARGE_ERRORS):
            continue
        if error_type in (
            errors.KafkaTimeoutError,
            errors.ProducerClosed,
            errors.BrokerResponseError,
        ):
            continue
        if issubclass(error_type, PRODUCER_STATE):
            continue
        verdict = classify(error_type())
        if error_type.retriable:
            assert isinstance(verdict, Retry), name
            continue
        # Not retriable: dead-lettered, or retried only as the destination's fault (alerted) or
        # a bounded number of times; never a plain retry for ever.
        assert isinstance(verdict, Reject) or verdict.failure in (
            Failure.DESTINATION,
            Failure.UNRECOGNIZED,
        ), name


def test_every_too_large_error_of_the_installed_aiokafka_is_too_large() -> None:
    # Named once in forwarder.failures: the sink, the ingest and the worker agree on them.
    defined = [getattr(errors, name) for name in dir(errors) if name.endswith("TooLargeError")]
    record_errors = [error for error in defined if error is not errors.OffsetMetadataTooLargeError]
    assert set(record_errors) == set(TOO_LARGE_ERRORS)
    assert errors.RecordListTooLargeError in TOO_LARGE_ERRORS
    for error_type in record_errors:
        verdict = classify(error_type())
        assert isinstance(verdict, TooLarge) and verdict.failure is Failure.RECORD


@pytest.mark.parametrize("key", [b"feature:1", b"", None, b"\x00\xff" * 300])
@pytest.mark.parametrize("value", [b'{"a":1}', b"", b"CEF:0|x"])
def test_framing_round_trips(key: bytes | None, value: bytes) -> None:
    assert unpack(pack(key, value)) == (key, value)


def test_record_key_is_the_raw_topic_key() -> None:
    feature = normalized_sample(SAMPLES / "feature_create.json")
    auditable = feature["aha"]["audit"]["auditable"]
    assert record_key(feature) == f"feature:{auditable['id']}".encode()
    unknown = normalized_sample(SAMPLES / "security_event_unknown_type.json")
    assert record_key(unknown) != b""
    assert record_key(unknown) == record_key(dict(unknown))


def test_message_keys() -> None:
    doc = normalized_sample(SAMPLES / "feature_create.json")
    assert message_key(doc, "event") == event_key(doc).encode()
    assert message_key(doc, "record") == record_key(doc)
    assert message_key(doc, "none") is None


def sink_config(**options: Any) -> KafkaSinkConfig:
    return KafkaSinkConfig(**{"type": "kafka", "name": "copy", "topic": "siem.events", **options})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs `sasl`"),
        ({"sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"}}, "only with SASL"),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl": {"mechanism": "GSSAPI", "username": "u", "password": "p"},
            },
            "mechanism",
        ),
        ({"topic": "bad topic"}, "topic name"),
        ({"compression": "brotli"}, "compression"),
        ({"acks": 1}, "acks"),
        ({"delivery_timeout_seconds": 5}, "at least request_timeout_seconds"),
    ],
)
def test_bad_settings_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        sink_config(**options)


def test_the_sasl_password_does_not_show() -> None:
    config = sink_config(
        security_protocol="SASL_SSL",
        sasl={"mechanism": "SCRAM-SHA-512", "username": "forwarder", "password": "pw-31337"},
    )
    assert "pw-31337" not in repr(config) + str(config.model_dump())


def test_without_a_cluster_the_sink_says_so() -> None:
    with pytest.raises(ValueError, match="bootstrap_servers"):
        KafkaSink(sink_config())


def test_the_worker_fills_in_the_main_cluster() -> None:
    from forwarder.sinks import create_sink

    sink = create_sink(sink_config(), bootstrap_servers="127.0.0.1:1")
    assert isinstance(sink, KafkaSink)
    elsewhere = create_sink(sink_config(bootstrap_servers="10.0.0.9:9093"), "127.0.0.1:1")
    assert isinstance(elsewhere, KafkaSink)
    assert elsewhere._bootstrap == "10.0.0.9:9093"
    assert sink._bootstrap == "127.0.0.1:1"
