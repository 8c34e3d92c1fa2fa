from __future__ import annotations

import calendar
from datetime import datetime
from typing import Any

import orjson
import pytest

from forwarder.formats import encoder_for
from forwarder.sinks.ids import event_key
from forwarder.sinks.splunk_hec.config import SplunkHecSinkConfig
from forwarder.sinks.splunk_hec.envelope import EnvelopeBuilder, epoch_seconds, indexed_field
from tests.helpers import SAMPLES, normalized_sample

TOKEN = "11111111-2222-3333-4444-555555555555"


def config(**overrides: Any) -> SplunkHecSinkConfig:
    return SplunkHecSinkConfig.model_validate(
        {"type": "splunk_hec", "name": "splunk", "url": "https://splunk:8088", "token": TOKEN}
        | overrides
    )


def envelope_of(doc: dict[str, Any], **overrides: Any) -> tuple[bytes, dict[str, Any]]:
    sink_config = config(**overrides)
    payload = encoder_for(sink_config.format)(doc)
    raw = EnvelopeBuilder(sink_config).build(doc, payload)
    return raw, orjson.loads(raw)


def test_ecs_envelope_carries_the_event_object_and_metadata() -> None:
    doc = normalized_sample(SAMPLES / "feature_update_status.json")
    raw, envelope = envelope_of(doc, index="aha_audit")
    when = datetime.fromisoformat(doc["@timestamp"])
    expected_seconds = calendar.timegm(when.utctimetuple()) + when.microsecond // 1000 / 1000
    assert envelope["time"] == pytest.approx(expected_seconds, abs=1e-6)
    # Epoch seconds with milliseconds as a plain decimal: HEC refuses an exponent.
    assert f'"time":{expected_seconds:.3f}'.rstrip("0").encode() in raw
    assert envelope["host"] == "acme.aha.io"
    assert envelope["source"] == "aha-siem-forwarder"
    assert envelope["sourcetype"] == "aha:audit:ecs"
    assert envelope["index"] == "aha_audit"
    assert envelope["event"] == doc
    assert envelope["fields"] == {
        "organization.id": doc["organization"]["id"],
        "event.action": doc["event"]["action"],
        "aha.audit.action": doc["aha"]["audit"]["action"],
        "aha.audit.auditable.type": doc["aha"]["audit"]["auditable"]["type"],
        "user.email": doc["user"]["email"],
        "event_key": event_key(doc),
    }


def test_cef_envelope_carries_the_line_as_a_string() -> None:
    doc = normalized_sample(SAMPLES / "feature_update_status.json")
    _, envelope = envelope_of(doc, format="cef")
    assert isinstance(envelope["event"], str) and envelope["event"].startswith("CEF:0|")
    assert envelope["event"] == encoder_for("cef")(doc).decode()
    assert envelope["sourcetype"] == "aha:audit:cef"


def test_configured_metadata_wins_and_missing_paths_are_left_out() -> None:
    doc = normalized_sample(SAMPLES / "comment_create_null_user.json")
    _, envelope = envelope_of(
        doc,
        host="aha-prod",
        source="aha",
        sourcetype="aha:custom",
        indexed_fields=["user.email", "event.category", "aha.audit.interesting", "aha.audit"],
        key_field=None,
    )
    assert (envelope["host"], envelope["source"], envelope["sourcetype"]) == (
        "aha-prod",
        "aha",
        "aha:custom",
    )
    assert "index" not in envelope  # the token's default index
    # A null user is left out, a list stays a list of strings, a bool becomes text, and an
    # object (which HEC cannot index) is left out.
    assert envelope["fields"] == {
        "event.category": doc["event"]["category"],
        "aha.audit.interesting": "true" if doc["aha"]["audit"]["interesting"] else "false",
    }


def test_no_timestamp_leaves_time_to_the_collector() -> None:
    doc = normalized_sample(SAMPLES / "feature_update_status.json")
    doc.pop("@timestamp")
    _, envelope = envelope_of(doc, indexed_fields=[], key_field=None)
    assert "time" not in envelope and "fields" not in envelope


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-27T14:05:12.417Z", 1795788312.417),
        ("2026-11-27T14:05:12Z", 1795788312.0),
        ("2026-11-27T15:05:12.417+01:00", 1795788312.417),
        ("not a time", None),
        (None, None),
        (1795788312, None),
    ],
)
def test_epoch_seconds(value: Any, expected: float | None) -> None:
    assert epoch_seconds(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x", "x"),
        (3, "3"),
        (False, "false"),
        (["a", 1, None, {"b": 2}], ["a", "1"]),
        ([], None),
        ({"a": 1}, None),
        (None, None),
    ],
)
def test_indexed_field_values_are_strings(value: Any, expected: Any) -> None:
    assert indexed_field(value) == expected
