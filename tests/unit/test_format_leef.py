"""LEEF 2.0 encoder: golden files for every sample, and a parser written from IBM's LEEF guide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.formats import encoder_for
from forwarder.formats.options import IAM_RECORD_TYPES, FormatsConfig, LeefOptions
from tests.golden import assert_golden
from tests.helpers import HOSTILE, SAMPLES, hostile_paths, sample_paths
from tests.unit.test_format_cef import (
    TRICKY,
    clean,
    event_with,
    normalized,
    raw_controls,
    sample_id,
    texts,
)


def parse_leef(line: str) -> tuple[list[str], str, list[tuple[str, str]]]:
    """(header fields, delimiter, attribute pairs) of one LEEF 2.0 line, per the LEEF guide:
    `LEEF:2.0|Vendor|Product|Version|EventID|DelimiterCharacter|` then key=value pairs."""
    assert "\n" not in line and "\r" not in line
    version, vendor, product, product_version, event_id, delimiter, attributes = line.split("|", 6)
    assert version == "LEEF:2.0"
    if len(delimiter) > 1:
        # "the hex value can be represented by the prefix 0x or x, followed by 1-4 characters"
        assert delimiter[:1] == "x" or delimiter[:2] == "0x", delimiter
        delimiter = chr(int(delimiter.split("x", 1)[1], 16))
    pairs = []
    for attribute in attributes.split(delimiter):
        key, sep, value = attribute.partition("=")
        assert sep, f"attribute without '=': {attribute!r}"
        assert key.isalnum(), f"bad key {key!r}"
        pairs.append((key, value))
    return [vendor, product, product_version, event_id], delimiter, pairs


def encode(event: dict[str, Any], options: FormatsConfig | None = None) -> str:
    return encoder_for("leef", options)(event).decode("utf-8")


@pytest.mark.parametrize("path", sample_paths(), ids=sample_id)
def test_every_sample_matches_its_golden_file(path: Path) -> None:
    line = encode(normalized(path))
    assert_golden(f"leef/{sample_id(path)}.leef", line + "\n")
    header, delimiter, pairs = parse_leef(line)
    assert header[:2] == ["Aha!", "Aha! Roadmaps"] and delimiter == "\t"
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), keys


@pytest.mark.parametrize("path", hostile_paths(), ids=sample_id)
def test_every_hostile_body_matches_its_golden_file(path: Path) -> None:
    line = encode(normalized(path))
    assert_golden(f"leef/{sample_id(path)}.leef", line + "\n")
    parse_leef(line)
    assert raw_controls(line.encode()) == set()


def test_a_bidi_override_or_line_separator_in_a_name_arrives_as_replacement_characters() -> None:
    bidi = dict(parse_leef(encode(normalized(HOSTILE / "bidi_name.json")))[2])
    assert bidi["userDisplayName"] == "Zo\u00eb \ufffdevil\ufffd"
    separators = dict(parse_leef(encode(normalized(HOSTILE / "separators_in_every_field.json")))[2])
    assert separators["userDisplayName"] == "Line\ufffdSeparator\ufffdPara\ufffdNel"
    assert separators["usrName"] == "line\ufffdsep@example.com"


def test_feature_update_reads_as_the_docs_say() -> None:
    header, _, pairs = parse_leef(encode(normalized(SAMPLES / "feature_update_status.json")))
    assert header == ["Aha!", "Aha! Roadmaps", "1", "feature-update"]
    assert dict(pairs) == {
        "devTime": "Nov 27 2026 14:05:12.417 GMT",
        "devTimeFormat": "MMM dd yyyy HH:mm:ss.SSS z",
        "sev": "3",
        "cat": "configuration",
        "usrName": "priya.menon@example.com",
        "url": "https://acme.aha.io/features/DEMO-28",
        "eventId": "7712852070579044363",
        "action": "update",
        "outcome": "success",
        "userId": "6514078897796815681",
        "userDisplayName": "Priya Menon",
        "account": "acme",
        "recordType": "feature",
        "recordId": "7712852070702501001",
        "changedFields": "Workflow status",
        "changes": "Workflow status=Under consideration \u2192 Ready to develop",
        "msg": "updated feature DEMO-28 Language options",
    }


@pytest.mark.parametrize(
    ("dev_time_format", "dev_time", "has_format"),
    [
        ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2026-11-27T14:10:13.052+0000", True),
        ("epoch_ms", "1795788613052", False),  # "an epoch value of 10 or 13 digits" needs no format
    ],
)
def test_dev_time_formats(dev_time_format: Any, dev_time: str, has_format: bool) -> None:
    options = FormatsConfig(leef=LeefOptions(dev_time_format=dev_time_format))
    attributes = dict(parse_leef(encode(event_with("x"), options))[2])
    assert attributes["devTime"] == dev_time
    assert ("devTimeFormat" in attributes) is has_format


def test_day_and_month_are_written_the_java_way_whatever_the_locale() -> None:
    event = event_with("x")
    event["@timestamp"] = "2027-01-05T03:04:05Z"
    assert dict(parse_leef(encode(event))[2])["devTime"] == "Jan 05 2027 03:04:05.000 GMT"


@pytest.mark.parametrize(
    ("configured", "header_field", "delimiter"),
    [
        ("\t", "x09", "\t"),
        ("^", "^", "^"),
        ("x5E", "^", "^"),
        ("0x7c", "x7C", "|"),
        ("¦", "xA6", "¦"),
    ],
)
def test_delimiter_forms(configured: str, header_field: str, delimiter: str) -> None:
    line = encode(event_with("x"), FormatsConfig(leef=LeefOptions(delimiter=configured)))
    assert line.split("|")[5] == header_field
    _, parsed, pairs = parse_leef(line)
    assert parsed == delimiter and dict(pairs)["msg"] == "x"


@pytest.mark.parametrize("bad", ["", "ab", "=", " ", "\n", "a", "7", ":", "x110000"])
def test_delimiters_that_would_break_the_line_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        LeefOptions(delimiter=bad)


def test_header_options_cannot_hold_a_pipe() -> None:
    with pytest.raises(ValueError):
        LeefOptions(vendor="A|B")


def test_unknown_event_types_render() -> None:
    header, _, pairs = parse_leef(encode(normalized(SAMPLES / "security_event_unknown_type.json")))
    assert header[3] == "security-user.login_failed"
    attributes = dict(pairs)
    assert attributes["action"] == "user.login_failed" and "recordType" not in attributes


def test_severity_follows_the_rules() -> None:
    destroy = dict(parse_leef(encode(normalized(SAMPLES / "release_destroy.json")))[2])
    assert destroy["sev"] == "6"
    with pytest.raises(ValueError):
        LeefOptions(default_severity=0)  # LEEF sev is 1-10


# ---- Escaping: LEEF has no escapes, so what a position cannot hold becomes a space ----


def leef_value(value: str, limit: int, delimiter: str) -> str:
    """What the docs promise a value becomes: cut with an ellipsis, delimiter/CR/LF as spaces,
    other control characters as U+FFFD."""
    value = value if len(value) <= limit else value[: limit - 1] + "\u2026"
    return clean(value.replace(delimiter, " ").replace("\r", " ").replace("\n", " "))


def expected_attributes(text: str, delimiter: str) -> dict[str, str]:
    composite = {
        "changedFields": text,
        "changes": f"{text}={text}" if text else "",
        "contributors": f"{text} <{text}>" if text else "",
        "associatedRecord": f"{text}:{text}" if text else "",
    }
    expected = {
        "cat": f"{text},{text}",
        "usrName": text,
        "url": text,
        "eventId": text,
        "action": text,
        "outcome": text,
        "userId": text,
        "userDisplayName": text,
        "account": text,
        "recordType": text,
        "recordId": text,
        **composite,
        "msg": text,
    }
    out = {
        "devTime": "Nov 27 2026 14:10:13.052 GMT",
        "devTimeFormat": "MMM dd yyyy HH:mm:ss.SSS z",
        # The text is also the record type: an IAM record type raises the severity.
        "sev": "8" if text in IAM_RECORD_TYPES else "3",
    }
    for key, value in expected.items():
        if value:
            out[key] = leef_value(value, 255 if key == "usrName" else 4000, delimiter)
    return out


def check_round_trip(text: str, delimiter: str) -> None:
    line = encode(event_with(text), FormatsConfig(leef=LeefOptions(delimiter=delimiter)))
    header, parsed_delimiter, pairs = parse_leef(line)
    assert parsed_delimiter == delimiter
    event_id = text or "unknown"
    event_id = event_id if len(event_id) <= 255 else event_id[:254] + "\u2026"
    assert header[3] == clean(event_id.replace("|", " ").replace("\r", " ").replace("\n", " "))
    assert raw_controls(line.encode(), allowed="\t" + delimiter) == set()
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key appears twice: {keys}"
    assert dict(pairs) == expected_attributes(text, delimiter)


@pytest.mark.parametrize("text", [*TRICKY, "a\tb", "a^b", "key=value\tsev=10"])
@pytest.mark.parametrize("delimiter", ["\t", "^", "|"])
def test_tricky_values_round_trip(text: str, delimiter: str) -> None:
    check_round_trip(text, delimiter)


def test_a_10_kb_description_is_cut() -> None:
    description = "d\u00e9scription\t|\n" * 800
    attributes = dict(parse_leef(encode(event_with(description)))[2])
    assert len(attributes["msg"]) == 4000 and attributes["msg"].endswith("\u2026")
    assert len(attributes["usrName"]) == 255


@given(texts, st.sampled_from(["\t", "^", "|", "#", "\u00a6", "\x1f"]))
def test_any_text_round_trips_without_injecting_an_attribute(text: str, delimiter: str) -> None:
    check_round_trip(text, delimiter)


def test_nul_and_escape_sequences_arrive_as_replacement_characters() -> None:
    text = "nul\x00 esc\x1b[31m bel\x07 del\x7f csi\x9b"
    header, _, pairs = parse_leef(encode(event_with(text)))
    expected = "nul\ufffd esc\ufffd[31m bel\ufffd del\ufffd csi\ufffd"
    assert header[3] == expected  # EventID
    attributes = dict(pairs)
    assert attributes["msg"] == expected and attributes["usrName"] == expected
    assert attributes["changes"] == f"{expected}={expected}"


def test_header_options_with_control_characters_are_replaced_too() -> None:
    options = FormatsConfig(leef=LeefOptions(vendor="Aha!\x1b[0m", product="A\x00B"))
    line = encoder_for("leef", options)(event_with("x"))
    assert parse_leef(line.decode())[0][:2] == ["Aha!\ufffd[0m", "A\ufffdB"]


def test_a_control_character_delimiter_is_the_only_raw_control() -> None:
    options = FormatsConfig(leef=LeefOptions(delimiter="x1F"))
    line = encoder_for("leef", options)(event_with("a\x1fb\x00c\x1ed\te"))
    assert line.split(b"|")[5] == b"x1F"
    _, delimiter, pairs = parse_leef(line.decode())
    assert delimiter == "\x1f"
    # The delimiter in a value is a space, as any delimiter is; other controls are U+FFFD.
    assert dict(pairs)["msg"] == "a b\ufffdc\ufffdd\te"


@given(texts, st.sampled_from(["\t", "^"]))
def test_no_control_octet_but_tab_is_ever_written(text: str, delimiter: str) -> None:
    line = encoder_for("leef", FormatsConfig(leef=LeefOptions(delimiter=delimiter)))(
        event_with(text)
    )
    assert not any((octet < 0x20 and octet != 0x09) or octet == 0x7F for octet in line), line
    assert raw_controls(line) == set()
