"""CEF:0 encoder: golden files for every sample and hostile body, a spec-based parser that every
output must pass, and an independent parser (cefp, from PyPI) that must read the user back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cefp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.normalize import Provenance, normalize_raw
from forwarder.formats import encoder_for
from forwarder.formats.options import CefOptions, FormatsConfig
from tests.golden import assert_golden
from tests.helpers import (
    HOSTILE,
    SAMPLES,
    body_id,
    hostile_paths,
    normalized_sample,
    sample_paths,
)

NOW = "2026-11-27T14:10:13.052Z"
STRIP = " \t\r\n\x0b\x0c"
REPLACEMENT = "\ufffd"


# Unicode line breaks other than CR and LF (U+0085 NEL is C1 as well), and the bidirectional
# embeddings, overrides and isolates.
LINE_SEPARATORS = "\u0085\u2028\u2029"
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def is_control(char: str) -> bool:
    """A character the text formats never write: C0 but TAB, LF and CR; DEL; C1; the Unicode
    line and paragraph separators; the bidirectional controls."""
    code = ord(char)
    return (
        (code < 0x20 and char not in "\t\n\r")
        or 0x7F <= code <= 0x9F
        or char in LINE_SEPARATORS
        or char in BIDI_CONTROLS
    )


def clean(value: str) -> str:
    """What the docs promise for control characters: each becomes U+FFFD."""
    return "".join(REPLACEMENT if is_control(char) else char for char in value)


def raw_controls(line: bytes, allowed: str = "\t") -> set[str]:
    """The control characters in an encoded line, as a receiver decoding its UTF-8 sees them."""
    return {char for char in line.decode("utf-8", "replace") if is_control(char)} - set(allowed)


normalized = normalized_sample
sample_id = body_id


# ---- An independent reading of the spec: "Implementing ArcSight Common Event Format". ----


def parse_cef(line: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(7 header fields, extension pairs in order) of one CEF line; raises on anything malformed."""
    assert line.startswith("CEF:"), line[:20]
    header: list[str] = []
    field: list[str] = []
    i = 4
    while len(header) < 7:
        char = line[i]
        if char == "\\":
            escaped = line[i + 1]
            assert escaped in "\\|", f"bad header escape \\{escaped!r}"
            field.append(escaped)
            i += 2
        elif char == "|":
            header.append("".join(field))
            field = []
            i += 1
        else:
            assert char not in "\r\n", "a header field spans lines"
            field.append(char)
            i += 1
    return header, parse_extension(line[i:])


def _unescape_value(raw: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\\":
            assert i + 1 < len(raw), "dangling backslash"
            out.append({"\\": "\\", "=": "=", "n": "\n", "r": "\r"}[raw[i + 1]])
            i += 2
        else:
            assert char not in "\r\n=", f"unescaped {char!r} in a value"
            out.append(char)
            i += 1
    return "".join(out)


def parse_extension(extension: str) -> list[tuple[str, str]]:
    """Pairs of an extension: a key is the word before an unescaped '=', its value runs to the
    space before the next key; the last value loses its trailing spaces (per the spec)."""
    equals: list[int] = []
    i = 0
    while i < len(extension):
        if extension[i] == "\\":
            i += 2
            continue
        if extension[i] == "=":
            equals.append(i)
        i += 1
    pairs: list[tuple[str, str]] = []
    starts = [extension.rfind(" ", 0, at) + 1 for at in equals]
    for n, at in enumerate(equals):
        key = extension[starts[n] : at]
        assert key.isalnum(), f"bad key {key!r}"
        end = starts[n + 1] - 1 if n + 1 < len(equals) else len(extension)
        raw = extension[at + 1 : end]
        if n + 1 == len(equals):
            raw = raw.rstrip(" ")
        pairs.append((key, _unescape_value(raw)))
    if equals:
        assert starts[0] == 0, "text before the first key"
    return pairs


def trimmed(value: str, limit: int) -> str:
    """What the docs promise an extension value becomes: trimmed, cut with an ellipsis, clean."""
    value = value.strip(STRIP)
    return clean(value if len(value) <= limit else value[: limit - 1] + "\u2026")


def header_value(value: str, limit: int) -> str:
    value = value.replace("\r", " ").replace("\n", " ")
    return clean(value if len(value) <= limit else value[: limit - 1] + "\u2026")


def encode(event: dict[str, Any], options: FormatsConfig | None = None) -> str:
    return encoder_for("cef", options)(event).decode("utf-8")


# ---- Golden files ----


@pytest.mark.parametrize("path", sample_paths(), ids=sample_id)
def test_every_sample_matches_its_golden_file(path: Path) -> None:
    line = encode(normalized(path))
    assert_golden(f"cef/{sample_id(path)}.cef", line + "\n")
    header, pairs = parse_cef(line)
    assert header[:3] == ["0", "Aha!", "Aha! Roadmaps"]
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), keys


@pytest.mark.parametrize("path", hostile_paths(), ids=sample_id)
def test_every_hostile_body_matches_its_golden_file(path: Path) -> None:
    line = encode(normalized(path))
    assert_golden(f"cef/{sample_id(path)}.cef", line + "\n")
    header, pairs = parse_cef(line)
    assert header[:3] == ["0", "Aha!", "Aha! Roadmaps"]
    assert raw_controls(line.encode()) == set()
    assert read_back(line) == (header, dict(pairs))


def test_feature_update_reads_as_the_docs_say() -> None:
    header, pairs = parse_cef(encode(normalized(SAMPLES / "feature_update_status.json")))
    assert header == ["0", "Aha!", "Aha! Roadmaps", "1", "feature-update", "Feature updated", "3"]
    ext = dict(pairs)
    moment = datetime(2026, 11, 27, 14, 5, 12, 417000, tzinfo=UTC)
    assert ext["rt"] == str(int(moment.timestamp() * 1000))
    assert ext["suser"] == "priya.menon@example.com"
    assert ext["suid"] == "6514078897796815681"
    assert ext["flexString1Label"] == "User display name"
    assert ext["flexString1"] == "Priya Menon"
    assert ext["act"] == "update"
    assert ext["externalId"] == "7712852070579044363"
    assert ext["deviceExternalId"] == "acme"
    assert ext["request"] == "https://acme.aha.io/features/DEMO-28"
    assert ext["cat"] == "configuration"
    assert ext["outcome"] == "success"
    assert ext["cs1Label"] == "Record type" and ext["cs1"] == "feature"
    assert ext["cs2"] == "7712852070702501001"
    assert ext["cs3"] == "Workflow status"
    assert ext["cs4"] == "Workflow status=Under consideration \u2192 Ready to develop"
    assert ext["msg"] == "updated feature DEMO-28 Language options"


def test_unknown_and_unparsed_events_still_render() -> None:
    security = dict(parse_cef(encode(normalized(SAMPLES / "security_event_unknown_type.json")))[1])
    assert security["act"] == "user.login_failed"
    assert "cs1" not in security
    raw = b"not json at all | = \\"
    unparsed = normalize_raw(raw, Provenance(), now=NOW)
    header, pairs = parse_cef(encode(unparsed))
    assert header[4] == "unparsed"
    assert dict(pairs)["msg"] == "Aha! unparsed event"


def test_collated_contributors_and_associated_record() -> None:
    ext = dict(parse_cef(encode(normalized(SAMPLES / "collation" / "collated_new_id.json")))[1])
    assert ext["cs5Label"] == "Contributors"
    assert ext["cs5"] == (
        "Priya Menon <priya.menon@example.com>, Jonas D\u00fcring <jonas.during@example.com>"
    )
    ext = dict(parse_cef(encode(normalized(SAMPLES / "comment_create_null_user.json")))[1])
    assert ext["cs6"] == "feature:7712852070702501001"
    assert "suser" not in ext and "suid" not in ext and "flexString1" not in ext


# ---- Severity rules ----


def _audit_event(action: str, record_type: str) -> dict[str, Any]:
    return {
        "@timestamp": NOW,
        "event": {"action": f"{record_type}-{action}"},
        "aha": {"event": "audit", "audit": {"action": action, "auditable": {"type": record_type}}},
    }


@pytest.mark.parametrize(
    ("action", "record_type", "severity"),
    [
        ("update", "feature", 3),
        ("destroy", "release", 6),
        ("update", "user", 8),  # the record type wins over the verb
        ("destroy", "role", 8),
        ("archive", "feature", 3),  # no rule: the default
    ],
)
def test_default_severity_rules(action: str, record_type: str, severity: int) -> None:
    header, _ = parse_cef(encode(_audit_event(action, record_type)))
    assert header[6] == str(severity)


def test_a_full_event_action_rule_beats_the_record_type() -> None:
    options = FormatsConfig(
        cef=CefOptions(severity_by_action={"user-update": 2}, default_severity=0)
    )
    assert parse_cef(encode(_audit_event("update", "user"), options))[0][6] == "2"
    assert parse_cef(encode(_audit_event("update", "feature"), options))[0][6] == "0"


def test_header_options_are_escaped_too() -> None:
    options = FormatsConfig(cef=CefOptions(device_vendor="A|B\\C", device_version="2.0"))
    header, _ = parse_cef(encode(_audit_event("update", "feature"), options))
    assert header[1:4] == ["A|B\\C", "Aha! Roadmaps", "2.0"]


def test_options_reject_out_of_range_severity_and_unknown_keys() -> None:
    with pytest.raises(ValueError):
        CefOptions(default_severity=11)
    with pytest.raises(ValueError):
        CefOptions.model_validate({"device_vendr": "x"})


# ---- Escaping: regression cases and properties ----

# Every event field the CEF encoder reads, with where its value lands.
TRICKY = [
    "a=b",
    "a|b",
    "a\\=b",
    "trailing backslash\\",
    "\\",
    "line one\r\nline two",
    "cr\ronly",
    "key=value msg=injected",
    " rt=0 suser=root",
    "nul\x00byte",
    "esc\x1b[2J\x1b]0;title\x07 bell",
    "\x08\x08\x08backspaced \x7fdel \x0bvt\x0cff\x1fus",
    "c1 \x85nel \x9b31m csi \x9f",
    "\x00",
    "tab\there",
    "\u00e9\u00e8 \u2192 \U0001f600",
    "=",
    "|",
    "\\|",
    "\\n",
    'sd "quote" ] [bracket@1 x="y"]',
    "Zo\u00eb \u202eevil\u202c",
    "line\u2028separator\u2029paragraph\u0085nel",
    "\u2066isolate\u2069 \u2067rtl\u2069 \u2068first\u2069 \u202aLRE\u202bRLE\u202c\u202dLRO",
    "\u2028",
    "\u202e",
]


def event_with(
    text: str, *, changes: list[Any] | None = None, long_id: str | None = None
) -> dict[str, Any]:
    """A normalized-looking event with `text` in every string field the encoder reads."""
    return {
        "@timestamp": NOW,
        "event": {
            "action": text,
            "id": long_id if long_id is not None else text,
            "category": [text, text],
            "outcome": text,
        },
        "message": text,
        "user": {"id": text, "name": text, "email": text},
        "organization": {"id": text, "name": text},
        "url": {"full": text},
        "aha": {
            "event": "audit",
            "audit": {
                "action": text,
                "auditable": {"type": text, "id": text},
                "associated": {"type": text, "id": text},
                "contributors": [{"id": text, "name": text, "email": text}],
                "changes": changes
                if changes is not None
                else [{"field_name": text, "value": text, "value_text": text}],
            },
        },
    }


def expected_pairs(text: str) -> dict[str, str]:
    """What a receiver must read back for `event_with(text)`, per docs/formats/cef.md."""
    change = f"{text}={text}" if text else ""
    person = f"{text} <{text}>" if text else ""
    associated = f"{text}:{text}" if text else ""
    expected = {
        "rt": "1795788613052",
        "act": trimmed(text, 63),
        "suser": trimmed(text, 1023),
        "suid": trimmed(text, 1023),
        "flexString1": trimmed(text, 1023),
        "externalId": trimmed(text, 40),
        "deviceExternalId": trimmed(text, 255),
        "request": trimmed(text, 1023),
        "cat": trimmed(f"{text},{text}", 1023),
        "outcome": trimmed(text, 63),
        "cs1": trimmed(text, 4000),
        "cs2": trimmed(text, 4000),
        "cs3": trimmed(text, 4000),
        "cs4": trimmed(change, 4000),
        "cs5": trimmed(person, 4000),
        "cs6": trimmed(associated, 4000),
        "msg": trimmed(text, 1023),
    }
    labels = dict(
        zip(
            ("cs1", "cs2", "cs3", "cs4", "cs5", "cs6"),
            (
                "Record type",
                "Record id",
                "Changed fields",
                "Changes",
                "Contributors",
                "Associated record",
            ),
            strict=True,
        )
    )
    labels["flexString1"] = "User display name"
    out: dict[str, str] = {}
    for key, value in expected.items():
        if not value:
            continue
        if key in labels:
            out[f"{key}Label"] = labels[key]
        out[key] = value
    return out


def check_round_trip(text: str) -> None:
    line = encode(event_with(text))
    assert "\n" not in line and "\r" not in line
    assert raw_controls(line.encode()) == set(), "a control character in the line"
    header, pairs = parse_cef(line)
    assert read_back(line) == (header, dict(pairs)), "the two parsers disagree"
    assert header[4] == header_value(text, 1023) or (not text and header[4] == "unknown")
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key appears twice: {keys}"
    assert dict(pairs) == expected_pairs(text)


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_values_round_trip(text: str) -> None:
    check_round_trip(text)


def test_a_10_kb_description_is_cut_with_an_ellipsis_on_a_character_boundary() -> None:
    description = ("\u00e9" * 3 + "=\\|\n") * 1500  # 10.5 K characters, multibyte, escapes
    line = encode(event_with(description))
    ext = dict(parse_cef(line)[1])
    assert ext["msg"] == description[:1022] + "\u2026"
    assert len(ext["cs4"]) == 4000 and ext["cs4"].endswith("\u2026")
    line.encode("utf-8").decode("utf-8")  # whole characters only


def test_an_escape_is_never_split_by_the_cut() -> None:
    # The 40th character of externalId is a backslash: cut before escaping keeps "\\" whole.
    event = event_with("x", long_id="a" * 38 + "\\\\" + "tail")
    assert dict(parse_cef(encode(event))[1])["externalId"] == "a" * 38 + "\\\u2026"


def test_non_string_values_are_written_as_json_text() -> None:
    changes = [{"field_name": "Estimate", "value": 5}, {"field_name": "Flags", "value": [1, None]}]
    ext = dict(parse_cef(encode(event_with("t", changes=changes)))[1])
    assert ext["cs4"] == "Estimate=5; Flags=[1,null]"


def test_nul_and_escape_sequences_arrive_as_replacement_characters() -> None:
    text = "nul\x00 esc\x1b[31m bel\x07 del\x7f csi\x9b"
    header, pairs = parse_cef(encode(event_with(text)))
    expected = "nul\ufffd esc\ufffd[31m bel\ufffd del\ufffd csi\ufffd"
    assert header[4] == expected  # Device Event Class ID
    ext = dict(pairs)
    assert ext["msg"] == expected and ext["suser"] == expected
    assert ext["cs4"] == f"{expected}={expected}"


def test_control_characters_in_header_options_are_replaced_too() -> None:
    options = FormatsConfig(cef=CefOptions(device_vendor="Aha!\x1b[0m", device_product="A\x00B"))
    line = encoder_for("cef", options)(event_with("x"))
    assert parse_cef(line.decode())[0][1:3] == ["Aha!\ufffd[0m", "A\ufffdB"]
    assert raw_controls(line) == set()


def test_tab_is_kept_and_edge_whitespace_controls_are_trimmed() -> None:
    ext = dict(parse_cef(encode(event_with("\x0b a\tb\x0cc \x0c")))[1])
    assert ext["msg"] == "a\tb\ufffdc"


def test_a_lone_surrogate_cannot_break_the_encoding() -> None:
    line = encoder_for("cef")(event_with("bad\ud800surrogate"))
    assert b"bad?surrogate" in line


def test_a_missing_or_bad_timestamp_falls_back_to_event_created_then_is_left_out() -> None:
    event = event_with("x")
    event["@timestamp"] = "yesterday"
    event["event"]["created"] = "2026-11-27T14:10:13Z"
    assert dict(parse_cef(encode(event))[1])["rt"] == "1795788613000"
    del event["event"]["created"]
    assert "rt" not in dict(parse_cef(encode(event))[1])


# Arbitrary text: any code point but surrogates, special and control characters weighted in,
# sometimes long.
texts = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(st.characters(max_codepoint=0xA0), max_size=40),
    st.text(st.sampled_from([*LINE_SEPARATORS, *BIDI_CONTROLS, "a", " ", "=", "|", "\\", "\n"])),
    st.sampled_from(TRICKY),
    st.lists(st.sampled_from([*TRICKY, "x", " ", "\u00e9"]), max_size=30).map("".join),
    st.builds(lambda s, n: s * n, st.sampled_from(TRICKY), st.integers(100, 600)),
)


@given(texts)
def test_any_text_in_any_field_round_trips_without_injecting_a_key(text: str) -> None:
    check_round_trip(text)


@given(st.dictionaries(st.sampled_from(["@timestamp", "event", "user", "aha", "url"]), texts))
def test_any_shape_of_event_still_encodes(event: dict[str, Any]) -> None:
    header, _ = parse_cef(encode(event))
    assert len(header) == 7


@given(texts)
def test_no_control_octet_but_tab_is_ever_written(text: str) -> None:
    line = encoder_for("cef")(event_with(text))
    assert not any((octet < 0x20 and octet != 0x09) or octet == 0x7F for octet in line), line
    assert raw_controls(line) == set()


# ---- Read back by an independent parser: cefp (PyPI), a character-level CEF tokenizer that
# unescapes `\|` `\\` in the header and `\=` `\\` `\n` `\r` in the extension. ----


def read_back(line: str) -> tuple[list[str], dict[str, str]]:
    """(7 header fields, extension) of a CEF line as cefp reads it."""
    parsed = cefp.parse(line)
    device = parsed["device"]
    header = [
        parsed["version"],
        device["vendor"],
        device["product"],
        device["version"],
        device["event_class_id"],
        parsed["name"],
        parsed["severity"],
    ]
    extension = dict(parsed["extension"])
    if extension:
        # The spec: trailing spaces of the last value are not preserved (cefp keeps them).
        last = next(reversed(extension))
        extension[last] = extension[last].rstrip(" ")
    return header, extension


def shown(value: str) -> str:
    """A user's name or e-mail as docs/formats/cef.md promises it in suser and flexString1."""
    return trimmed(value, 1023)


def check_user_read_back(event: dict[str, Any]) -> None:
    """The user's name and e-mail, each in its field, as an independent parser reads them."""
    line = encode(event)
    header, extension = read_back(line)
    assert header[:3] == ["0", "Aha!", "Aha! Roadmaps"]
    user = event.get("user") or {}
    name, email = (
        user.get(key) if isinstance(user.get(key), str) else "" for key in ("name", "email")
    )
    if shown(email):
        assert extension["suser"] == shown(email)
    elif shown(name):
        assert extension["suser"] == shown(name)
    else:
        assert "suser" not in extension
    if shown(name):
        assert extension["flexString1Label"] == "User display name"
        assert extension["flexString1"] == shown(name)
    else:
        assert "flexString1" not in extension and "flexString1Label" not in extension
    assert not any(is_control(char) for char in line), "a raw control in the line"


@pytest.mark.parametrize("path", [*sample_paths(), *hostile_paths()], ids=sample_id)
def test_an_independent_parser_reads_every_users_name_and_email(path: Path) -> None:
    check_user_read_back(normalized(path))


def test_names_with_cef_syntax_and_line_breaks_come_back_exactly() -> None:
    # CEF escapes `=`, `\\`, CR and LF in values: the parser gives back the very text.
    syntax = read_back(encode(normalized(HOSTILE / "cef_syntax_in_names.json")))[1]
    assert syntax["flexString1"] == "Ann | Admin = \\root\\ suser=root msg=forged"
    assert syntax["suser"] == "ann|=\\x@example.com"
    assert syntax["msg"].startswith("name with | pipes = equals")
    breaks = read_back(encode(normalized(HOSTILE / "line_breaks_in_names.json")))[1]
    assert breaks["flexString1"] == "Carl\r\nCEF:0|Evil|Corp|1|x|forged|10|"
    assert breaks["suser"] == "carl\n@example.com"


def test_a_bidi_override_in_a_name_arrives_as_replacement_characters() -> None:
    extension = read_back(encode(normalized(HOSTILE / "bidi_name.json")))[1]
    assert extension["flexString1"] == "Zo\u00eb \ufffdevil\ufffd"
    assert extension["suser"] == "zoe@example.com"
    assert (
        extension["cs4"]
        == "Name \ufffdgnp.exe\ufffd=Budget \ufffd2202\ufffd \u2192 \ufffdplan\ufffd"
    )


names = st.one_of(texts, st.sampled_from(TRICKY), st.builds("{} {}".format, texts, texts))


@given(names, names)
def test_any_name_and_email_are_read_back_by_an_independent_parser(name: str, email: str) -> None:
    event = normalized(SAMPLES / "feature_update_status.json")
    event["user"] = {**event["user"], "name": name, "email": email}
    check_user_read_back(event)
