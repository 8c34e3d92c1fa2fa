"""The Sentinel rows: the columns the shipped table and DCR declare, each within Azure's 64 KB."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarder.formats import encoder_for
from forwarder.sinks.ids import event_key
from forwarder.sinks.sentinel.rows import (
    FIELD_MAX_BYTES,
    MARK,
    TRUNCATED_TAG,
    cut_text,
    fit_event,
    row,
    row_key,
)
from tests.helpers import normalized_sample, sample_paths

ROOT = Path(__file__).resolve().parents[3]
SENTINEL = ROOT / "siem" / "sentinel"
DOCS = ROOT / "docs" / "sinks" / "sentinel.md"

SAMPLES = [normalized_sample(path) for path in sample_paths()]


def columns_of(data: bytes) -> list[str]:
    return list(orjson.loads(data))


def declared(columns: list[dict[str, str]]) -> dict[str, str]:
    return {column["name"]: column["type"] for column in columns}


def test_the_shipped_table_and_dcr_declare_exactly_the_columns_the_sink_sends() -> None:
    table = orjson.loads((SENTINEL / "table.json").read_bytes())["properties"]["schema"]
    dcr = orjson.loads((SENTINEL / "dcr.json").read_bytes())["properties"]
    (stream,) = dcr["streamDeclarations"].values()
    types = {
        "EventKey": "string",
        "TimeGenerated": "datetime",
        "EventTime": "datetime",
        "EventAction": "string",
        "Message": "string",
        "Event": "dynamic",
    }
    for doc in SAMPLES:
        assert set(columns_of(row(doc, orjson.dumps(doc)))) == set(types)
    assert declared(table["columns"]) == types
    assert declared(stream["columns"]) == types
    assert dcr["dataFlows"][0]["outputStream"] == f"Custom-{table['name']}"
    # The docs set up the same columns (the az command and the embedded rule).
    text = DOCS.read_text()
    command = re.search(r"--columns ([^\n]+)", text)
    assert command is not None
    assert dict(item.split("=") for item in command.group(1).split()) == types
    for name in types:
        assert f'{{"name": "{name}", "type": "{types[name]}"}}' in text


@pytest.mark.parametrize("doc", SAMPLES, ids=[path.stem for path in sample_paths()])
def test_a_sample_row_carries_its_event_whole(doc: dict[str, Any]) -> None:
    payload = orjson.dumps(doc)
    data = row(doc, payload)
    assert data.endswith(b',"Event":' + payload + b"}")
    columns = orjson.loads(data)
    assert columns["EventTime"] == columns["TimeGenerated"] == doc["@timestamp"]
    assert row_key(data) == columns["EventKey"] == event_key(doc)


def test_an_event_without_a_time_gets_the_time_of_sending_and_no_event_time() -> None:
    doc = {k: v for k, v in SAMPLES[0].items() if k != "@timestamp"}
    columns = orjson.loads(row(doc, orjson.dumps(doc)))
    assert columns["EventTime"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", columns["TimeGenerated"])


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 100, "short"),
        ("a" * 100, 100, "a" * 100),
        ("a" * 101, 100, "a" * (100 - len(MARK.encode())) + MARK),
        # A character is never split: the cut falls before the é whose bytes would cross it.
        ("é" * 60, 100, "é" * ((100 - len(MARK.encode())) // 2) + MARK),
    ],
)
def test_cut_text_keeps_whole_characters_within_the_limit(
    text: str, limit: int, expected: str
) -> None:
    assert cut_text(text, limit) == expected
    assert len(cut_text(text, limit).encode()) <= limit


def test_an_event_that_fits_is_left_byte_for_byte() -> None:
    payload = encoder_for("ocsf")(SAMPLES[0])
    assert fit_event(payload, "ocsf") is payload


def test_an_event_of_many_small_fields_becomes_a_stub_that_says_where_the_event_is() -> None:
    doc = orjson.loads(orjson.dumps(SAMPLES[0]))
    doc["aha"]["audit"]["changes"] = [
        {"field_name": f"Field {n}", "value": "v"} for n in range(5_000)
    ]
    fitted = orjson.loads(fit_event(orjson.dumps(doc), "ecs"))
    assert fitted["tags"] == [TRUNCATED_TAG]
    assert "EventKey" in fitted["message"]


def test_cut_events_keep_their_existing_tags_and_the_limit() -> None:
    doc = orjson.loads(orjson.dumps(SAMPLES[0]))
    doc["tags"] = ["from-aha"]
    doc["message"] = "m" * (2 * FIELD_MAX_BYTES)
    fitted = fit_event(orjson.dumps(doc), "ecs")
    assert len(fitted) <= FIELD_MAX_BYTES
    assert orjson.loads(fitted)["tags"] == ["from-aha", TRUNCATED_TAG]
