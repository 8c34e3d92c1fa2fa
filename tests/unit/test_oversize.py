from __future__ import annotations

import orjson
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from forwarder import records
from forwarder.core.normalize import normalize_raw
from forwarder.core.oversize import TRUNCATED_TAG, fit_event
from tests.helpers import SAMPLES, sample_provenance


def huge_event(include_original: bool) -> bytes:
    body = orjson.loads((SAMPLES / "note_rich_text.json").read_bytes())
    body["audit"]["changes"][0]["value"] = "<p>" + "a &amp; b <b>x</b> " * 50_000 + "</p>"
    raw = orjson.dumps(body)
    doc = normalize_raw(
        raw,
        sample_provenance(raw),
        now="2026-01-01T00:00:00.000Z",
        include_original=include_original,
    )
    return orjson.dumps(doc)


def test_an_event_that_fits_is_left_alone() -> None:
    value = b'{"event":{"id":"1"}}'
    assert fit_event(b"k", value, [], 1 << 20) is value


def test_an_event_too_large_for_the_topic_keeps_the_audit_and_fits() -> None:
    value = huge_event(include_original=True)
    limit = 1 << 20
    headers = [("received-at", b"2026-01-01T00:00:00.000Z")]
    assert len(value) > limit
    fitted = fit_event(b"note:1", value, headers, limit)
    assert fitted is not None
    assert records.record_bytes(b"note:1", fitted, headers) <= limit
    original, kept = orjson.loads(value), orjson.loads(fitted)
    assert "original" not in kept["event"]
    assert TRUNCATED_TAG in kept["tags"]
    # Who did what to which record is all still there.
    assert kept["user"] == original["user"]
    assert kept["aha"]["audit"]["id"] == original["aha"]["audit"]["id"]
    assert kept["event"]["action"] == original["event"]["action"]


def test_record_size_is_the_bound_the_producer_applies() -> None:
    # The producer refuses a record above max_request_size by this bound (aiokafka's own).
    for key, value, headers in [
        (b"", b"", []),
        (b"k" * 300, b"x" * 70_000, [("received-at", b"2026"), ("error", b"y" * 5000)]),
        (b"note:1", b"v" * 127, [("a", b"")]),
    ]:
        expected = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        assert records.record_bytes(key, value, headers) == expected
