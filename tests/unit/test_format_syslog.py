"""Syslog framing: golden files, and parsers written from RFC 5424, RFC 3164 and RFC 6587."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from forwarder.formats import encoder_for
from forwarder.formats.controls import json_escape
from forwarder.formats.options import FormatsConfig, SyslogOptions
from forwarder.formats.syslog import SyslogFramer, frame_3164, frame_5424, octet_count
from tests.golden import assert_golden
from tests.helpers import HOSTILE, SAMPLES, hostile_paths, sample_paths
from tests.unit.test_format_cef import (
    BIDI_CONTROLS,
    LINE_SEPARATORS,
    TRICKY,
    clean,
    event_with,
    normalized,
    parse_cef,
    raw_controls,
    read_back,
    sample_id,
    texts,
)
from tests.unit.test_format_leef import parse_leef

HOST = "forwarder.example.com"
INNER = ("syslog-cef", "syslog-leef", "syslog-json")

# ---- RFC 5424 §6, read as ABNF ----

_PRINTUSASCII = rb"[\x21-\x7e]"
_HEADER = re.compile(
    rb"<(0|[1-9][0-9]{0,2})>([1-9][0-9]{0,2}) "
    rb"(-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    rb"(?:Z|[+-][0-9]{2}:[0-9]{2})) "
    rb"(" + _PRINTUSASCII + rb"{1,255}) (" + _PRINTUSASCII + rb"{1,48}) "
    rb"(" + _PRINTUSASCII + rb"{1,128}) (" + _PRINTUSASCII + rb"{1,32}) "
)
_SD_NAME = re.compile(rb"[\x21\x23-\x3c\x3e-\x5c\x5e-\x7e]{1,32}")  # not = SP ] "


def _sd_param_value(data: bytes, i: int) -> tuple[str, int]:
    out = bytearray()
    while True:
        byte = data[i : i + 1]
        assert byte, "unterminated PARAM-VALUE"
        if byte == b"\\" and data[i + 1 : i + 2] in (b'"', b"\\", b"]"):
            out += data[i + 1 : i + 2]
            i += 2
        elif byte == b'"':
            return out.decode("utf-8"), i + 1
        else:
            assert byte != b"]", "unescaped ']' in a PARAM-VALUE"
            out += byte
            i += 1


def parse_5424(frame: bytes) -> dict[str, Any]:
    """The fields of one RFC 5424 SYSLOG-MSG; asserts on anything outside the ABNF."""
    assert b"\n" not in frame and b"\r" not in frame
    match = _HEADER.match(frame)
    assert match, frame[:120]
    pri, version, timestamp, hostname, app_name, procid, msgid = (
        group.decode("ascii") for group in match.groups()
    )
    assert int(pri) <= 191
    i = match.end()
    elements: list[tuple[str, list[tuple[str, str]]]] = []
    if frame[i : i + 1] == b"-":
        i += 1
    else:
        assert frame[i : i + 1] == b"[", "STRUCTURED-DATA is neither - nor an SD-ELEMENT"
        while frame[i : i + 1] == b"[":
            sd_id = _SD_NAME.match(frame, i + 1)
            assert sd_id, "bad SD-ID"
            i = sd_id.end()
            params: list[tuple[str, str]] = []
            while frame[i : i + 1] == b" ":
                name = _SD_NAME.match(frame, i + 1)
                assert name and frame[name.end() : name.end() + 2] == b'="', "bad SD-PARAM"
                value, i = _sd_param_value(frame, name.end() + 2)
                params.append((name.group().decode("ascii"), value))
            assert frame[i : i + 1] == b"]", "unterminated SD-ELEMENT"
            i += 1
            elements.append((sd_id.group().decode("ascii"), params))
    message = None
    if i < len(frame):
        assert frame[i : i + 1] == b" ", "no SP before MSG"
        message = frame[i + 1 :]
    return {
        "pri": int(pri),
        "version": version,
        "timestamp": timestamp,
        "hostname": hostname,
        "app_name": app_name,
        "procid": procid,
        "msgid": msgid,
        "sd": elements,
        "msg": message,
    }


# ---- RFC 3164 §4.1 ----

# §4.1.3: "The TAG is a string of ABNF alphanumeric characters that MUST NOT exceed 32
# characters"; any other character starts the CONTENT, which here starts with ": ".
_BSD = re.compile(
    rb"<([0-9]{1,3})>((?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    rb"[ 1-3][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2}) ([\x21-\x7e]+) ([A-Za-z0-9]{1,32}): "
)
PACKET_MAX = 1024  # §4.1: "The total length of the packet MUST be 1024 bytes or less."


def parse_3164(frame: bytes) -> dict[str, Any]:
    """PRI, TIMESTAMP, HOSTNAME, TAG and the rest (CONTENT) of one BSD syslog message."""
    assert b"\n" not in frame and b"\r" not in frame
    assert len(frame) <= PACKET_MAX, f"{len(frame)} octets"
    match = _BSD.match(frame)
    assert match, frame[:120]
    pri, timestamp, hostname, tag = (group.decode("ascii") for group in match.groups())
    return {
        "pri": int(pri),
        "timestamp": timestamp,
        "hostname": hostname,
        "tag": tag,
        "msg": frame[match.end() :],
    }


# ---- RFC 6587 §3.4.1 ----


def split_octet_counted(stream: bytes) -> list[bytes]:
    """The frames of an octet-counted stream: `MSG-LEN SP SYSLOG-MSG`, MSG-LEN in octets."""
    frames = []
    while stream:
        length, space, rest = stream.partition(b" ")
        assert space and length.isdigit() and not length.startswith(b"0"), stream[:20]
        frames.append(rest[: int(length)])
        assert len(frames[-1]) == int(length), "the stream ends inside a frame"
        stream = rest[int(length) :]
    return frames


def encoder(name: str, **syslog: Any) -> Any:
    return encoder_for(name, FormatsConfig(syslog=SyslogOptions(hostname=HOST, **syslog)))


# ---- Golden files ----


@pytest.mark.parametrize("path", sample_paths(), ids=sample_id)
@pytest.mark.parametrize("rfc", ["5424", "3164"])
def test_every_sample_matches_its_golden_file(path: Path, rfc: str) -> None:
    event = normalized(path)
    frames = [encoder(name, rfc=rfc)(event) for name in INNER]
    for frame in frames:
        parse_5424(frame) if rfc == "5424" else parse_3164(frame)
    assert_golden(f"syslog/{sample_id(path)}.{rfc}", b"\n".join([*frames, b""]).decode("utf-8"))


@pytest.mark.parametrize("path", hostile_paths(), ids=sample_id)
@pytest.mark.parametrize("rfc", ["5424", "3164"])
def test_every_hostile_body_matches_its_golden_file(path: Path, rfc: str) -> None:
    event = normalized(path)
    frames = [encoder(name, rfc=rfc)(event) for name in INNER]
    for frame in frames:
        parse_5424(frame) if rfc == "5424" else parse_3164(frame)
        assert raw_controls(frame) == set()
    assert_golden(f"syslog/{sample_id(path)}.{rfc}", b"\n".join([*frames, b""]).decode("utf-8"))


def test_feature_update_reads_as_the_docs_say() -> None:
    event = normalized(SAMPLES / "feature_update_status.json")
    fields = parse_5424(encoder("syslog-cef")(event))
    assert fields["pri"] == 16 * 8 + 5  # local0.notice
    assert fields["timestamp"] == "2026-11-27T14:05:12.417Z"
    assert (fields["hostname"], fields["app_name"], fields["procid"]) == (HOST, "aha-siem", "-")
    assert fields["msgid"] == "feature-update"
    assert fields["sd"] == [
        (
            "aha@32473",
            [
                ("eventId", "7712852070579044363"),
                ("recordType", "feature"),
                ("recordId", "7712852070702501001"),
                ("userId", "6514078897796815681"),
                ("orgId", "acme-prod"),
            ],
        )
    ]
    assert fields["msg"] == encoder_for("cef")(event)

    bsd = parse_3164(encoder("syslog-leef", rfc="3164")(event))
    assert bsd == {
        "pri": 133,
        "timestamp": "Nov 27 14:05:12",
        "hostname": "forwarder",  # RFC 3164: the host name without its domain
        "tag": "ahasiem",  # RFC 3164: alphanumeric, so app_name's letters and digits
        "msg": encoder_for("leef")(event),
    }


@pytest.mark.parametrize(
    ("sample", "pri"),
    [
        ("release_destroy.json", 16 * 8 + 4),  # destroy: warning
        ("feature_create.json", 16 * 8 + 5),  # notice
    ],
)
def test_priority_from_facility_and_severity_rules(sample: str, pri: int) -> None:
    event = normalized(SAMPLES / sample)
    assert parse_5424(encoder("syslog-json")(event))["pri"] == pri
    options = {"facility": "authpriv", "default_severity": "info", "severity_by_action": {}}
    assert parse_5424(encoder("syslog-json", **options)(event))["pri"] == 10 * 8 + 6


def test_iam_record_types_are_warnings() -> None:
    event = event_with("x")
    event["aha"]["audit"]["auditable"]["type"] = "role"
    assert parse_5424(encoder("syslog-cef")(event))["pri"] == 16 * 8 + 4


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"facility": "local8"}, "facility"),
        ({"facility": 24}, "facility"),
        ({"default_severity": "loud"}, "severity"),
        ({"app_name": "aha siem"}, "app_name"),
        ({"app_name": "x" * 49}, "app_name"),
        ({"hostname": "has space"}, "hostname"),
        ({"sd_id": "aha"}, "sd_id"),
        ({"sd_id": 'a"b@1'}, "sd_id"),
        ({"rfc": "5425"}, "rfc"),
    ],
)
def test_bad_options_are_rejected_naming_the_key(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SyslogOptions(**options)


def test_names_and_numbers_are_both_accepted() -> None:
    options = SyslogOptions.model_validate(
        {"facility": "LOCAL7", "default_severity": "err", "severity_by_action": {"x": "crit"}}
    )
    assert (options.facility, options.default_severity, options.severity_by_action) == (
        23,
        3,
        {"x": 2},
    )
    assert SyslogOptions.model_validate({"default_severity": "7"}).default_severity == 7


# ---- No injection: fields, lines, frames ----


def test_msgid_is_printable_ascii_and_at_most_32() -> None:
    event = event_with("x")
    event["event"]["action"] = "a b\u00e9" + "z" * 40
    assert parse_5424(encoder("syslog-cef")(event))["msgid"] == "a_b_" + "z" * 28


def test_sd_values_escape_quote_backslash_and_bracket() -> None:
    event = event_with('a"b\\c]d] [x@1 y="z"]\r\nq')
    sd = dict(parse_5424(encoder("syslog-cef")(event))["sd"][0][1])
    assert sd["eventId"] == 'a"b\\c]d] [x@1 y="z"]  q'


def test_nul_and_escape_sequences_arrive_as_replacement_characters() -> None:
    event = event_with("nul\x00 esc\x1b[31m ]bel\x07 del\x7f csi\x9b")
    fields = parse_5424(encoder("syslog-cef")(event))
    expected = "nul\ufffd esc\ufffd[31m ]bel\ufffd del\ufffd csi\ufffd"
    assert dict(fields["sd"][0][1]) == dict.fromkeys(
        ("eventId", "recordType", "recordId", "userId", "orgId"), expected
    )
    assert fields["msgid"] == "nul__esc_[31m_]bel__del__csi_"  # printable US-ASCII only
    assert dict(parse_cef(fields["msg"].decode())[1])["msg"] == expected
    for name in INNER:
        for rfc in ("5424", "3164"):
            frame = encoder(name, rfc=rfc)(event)
            assert b"\x00" not in frame and b"\x1b" not in frame, (name, rfc)


def test_structured_data_can_be_turned_off_and_is_nil_without_ids() -> None:
    event = normalized(SAMPLES / "feature_create.json")
    assert parse_5424(encoder("syslog-cef", structured_data=False)(event))["sd"] == []
    assert parse_5424(encoder("syslog-cef")({"@timestamp": "2026-01-01T00:00:00Z"}))["sd"] == []


def test_a_message_with_newlines_stays_one_frame() -> None:
    event = normalized(SAMPLES / "feature_create.json")
    frame = frame_5424(b"first\nsecond\r\nthird", event, SyslogOptions(hostname=HOST))
    assert parse_5424(frame)["msg"] == b"first second  third"
    bsd = frame_3164(b"first\nsecond", event, SyslogOptions(hostname=HOST))
    assert parse_3164(bsd)["msg"] == b"first second"


def test_the_bom_is_an_option() -> None:
    event = normalized(SAMPLES / "feature_create.json")
    assert parse_5424(encoder("syslog-cef", utf8_bom=True)(event))["msg"].startswith(
        b"\xef\xbb\xbfCEF:0|"
    )
    assert parse_5424(encoder("syslog-cef")(event))["msg"].startswith(b"CEF:0|")
    assert b"\xef\xbb\xbf" not in encoder("syslog-cef", utf8_bom=True, rfc="3164")(event)


def test_without_a_time_5424_sends_the_nilvalue_and_3164_no_header() -> None:
    event = {"event": {"action": "x"}, "message": "m"}
    assert parse_5424(encoder("syslog-cef")(event))["timestamp"] == "-"
    assert encoder("syslog-cef", rfc="3164")(event).startswith(b"<133>ahasiem: CEF:0|")


def test_3164_pads_the_day_with_a_space_and_keeps_an_ip_address_whole() -> None:
    event = normalized(SAMPLES / "feature_create.json")
    event["@timestamp"] = "2027-03-05T01:02:03.999+02:00"
    framer = SyslogFramer(SyslogOptions(rfc="3164", hostname="192.0.2.7"))
    bsd = parse_3164(framer.frame(b"m", event))
    assert (bsd["timestamp"], bsd["hostname"]) == ("Mar  4 23:02:03", "192.0.2.7")


def test_the_local_host_name_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "node-1.dc.example")
    event = normalized(SAMPLES / "feature_create.json")
    assert parse_5424(encoder_for("syslog-cef")(event))["hostname"] == "node-1.dc.example"
    options = FormatsConfig(syslog=SyslogOptions(rfc="3164"))
    assert parse_3164(encoder_for("syslog-cef", options)(event))["hostname"] == "node-1"


def test_octet_counting_counts_octets_not_characters() -> None:
    frame = "<133>1 - - - - - - \u00e9\u2192".encode()
    assert octet_count(frame) == b"%d " % len(frame) + frame
    assert octet_count(frame).startswith(b"24 ")
    assert split_octet_counted(octet_count(frame) + octet_count(b"x")) == [frame, b"x"]


def inner_name(name: str) -> str:
    return name.removeprefix("syslog-").replace("json", "ecs")


def parse_msg(name: str, msg: bytes) -> Any:
    """The MSG read in its own format: it must parse, whatever was cut to fit."""
    if name == "syslog-cef":
        header, pairs = parse_cef(msg.decode("utf-8"))
        assert read_back(msg.decode("utf-8")) == (header, dict(pairs))
        return dict(pairs)
    if name == "syslog-leef":
        return dict(parse_leef(msg.decode("utf-8"))[2])
    return orjson.loads(msg)


def assert_cut_to_fit(name: str, msg: bytes) -> None:
    """A JSON MSG made smaller to fit 1024 octets says so in its tags (CEF and LEEF have no
    place for it: a cut text ends in an ellipsis, a field left out is missing)."""
    if name == "syslog-json":
        assert orjson.loads(msg)["tags"][-1] == "truncated"


def check_frames(text: str, name: str, rfc: str) -> None:
    event = event_with(text)
    frame = encoder(name, rfc=rfc)(event)
    inner = encoder_for(inner_name(name))(event)
    if rfc == "5424":
        fields = parse_5424(frame)
        msg = fields["msg"]
        if name == "syslog-json":
            # The same document; DEL, C1, line separators and bidi controls as JSON escapes.
            assert orjson.loads(msg) == orjson.loads(inner)
        else:
            assert msg == inner  # the MSG is the encoded event, untouched
        value = text if len(text) <= 255 else text[:254] + "\u2026"
        expected = clean(value.replace("\r", " ").replace("\n", " "))
        params = dict(fields["sd"][0][1]) if fields["sd"] else {}
        assert set(params) <= {"eventId", "recordType", "recordId", "userId", "orgId"}
        assert all(found == expected for found in params.values())
    else:
        msg = parse_3164(frame)["msg"]
        header = SyslogFramer(SyslogOptions(hostname=HOST, rfc="3164")).header_3164(event)
        whole = header + (json_escape(inner) if name == "syslog-json" else inner)
        if len(whole) <= PACKET_MAX:
            assert frame == whole
        else:
            assert_cut_to_fit(name, msg)
    parse_msg(name, msg)
    # No control, line separator or bidi control anywhere: header, SD and MSG (TAB in LEEF).
    assert raw_controls(frame) == set()
    # Both TCP framings give back exactly one message per event.
    assert split_octet_counted(octet_count(frame) * 2) == [frame, frame]
    assert (frame + b"\n").split(b"\n") == [frame, b""]


@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("rfc", ["5424", "3164"])
def test_tricky_values_stay_in_their_field(text: str, rfc: str) -> None:
    for name in INNER:
        check_frames(text, name, rfc)


@given(texts, st.sampled_from(INNER), st.sampled_from(["5424", "3164"]))
@example("\x1f" * 8, "syslog-json", "3164")  # cut to 8 characters: the tag must stay whole
def test_any_text_stays_in_its_field_and_one_frame(text: str, name: str, rfc: str) -> None:
    check_frames(text, name, rfc)


@given(texts, st.sampled_from(INNER), st.sampled_from(["5424", "3164"]))
def test_no_control_octet_but_tab_is_ever_written(text: str, name: str, rfc: str) -> None:
    frame = encoder(name, rfc=rfc)(event_with(text))
    assert not any((octet < 0x20 and octet != 0x09) or octet == 0x7F for octet in frame), frame


# ---- RFC 3164: alphanumeric TAG, 1024 octets ----


@pytest.mark.parametrize(
    ("app_name", "tag"),
    [
        ("aha-siem", "ahasiem"),
        ("siem.forwarder/v2_eu", "siemforwarderv2eu"),
        ("A1", "A1"),
        ("x" * 48, "x" * 32),
    ],
)
def test_the_3164_tag_is_the_letters_and_digits_of_app_name(app_name: str, tag: str) -> None:
    event = normalized(SAMPLES / "feature_create.json")
    assert parse_3164(encoder("syslog-cef", rfc="3164", app_name=app_name)(event))["tag"] == tag
    # RFC 5424's APP-NAME keeps them.
    assert parse_5424(encoder("syslog-cef", app_name=app_name)(event))["app_name"] == app_name


def test_an_app_name_without_letters_or_digits_is_refused_for_3164() -> None:
    with pytest.raises(ValueError, match="app_name"):
        SyslogOptions(rfc="3164", app_name="-._/")
    assert SyslogOptions(app_name="-._/").app_name == "-._/"  # fine as an RFC 5424 APP-NAME


@pytest.mark.parametrize("name", INNER)
def test_a_long_event_is_made_to_fit_1024_octets_and_keeps_its_ids(name: str) -> None:
    event = normalized(SAMPLES / "feature_update_status.json")
    event["message"] = "\u00e9=\\|\t" * 3000
    frame = encoder(name, rfc="3164")(event)
    assert len(frame) <= PACKET_MAX
    bsd = parse_3164(frame)
    assert (bsd["timestamp"], bsd["tag"]) == ("Nov 27 14:05:12", "ahasiem")
    msg = parse_msg(name, bsd["msg"])
    assert_cut_to_fit(name, bsd["msg"])
    if name == "syslog-cef":
        assert msg["externalId"] == "7712852070579044363" and msg["suid"] == "6514078897796815681"
        assert msg["suser"] == "priya.menon@example.com" and msg["flexString1"] == "Priya Menon"
        assert msg["cs4"] == "Workflow status=Under consideration \u2192 Ready to develop"
        assert msg["msg"].startswith("\u00e9=\\|\t") and msg["msg"].endswith("\u2026")
    elif name == "syslog-leef":
        assert msg["eventId"] == "7712852070579044363" and msg["userDisplayName"] == "Priya Menon"
        assert msg["msg"].endswith("\u2026")
    else:
        # An ECS document of 1279 octets cannot fit with every field: the essential ones do.
        assert msg["event"]["id"] == "7712852070579044363"
        assert msg["event"]["action"] == "feature-update"
        assert msg["user"] == event["user"]
        assert msg["@timestamp"] == event["@timestamp"]
        assert msg["aha"]["audit"]["auditable"] == event["aha"]["audit"]["auditable"]
        assert msg["message"].endswith("\u2026")


def test_every_sample_fits_1024_octets_in_every_format() -> None:
    for path in [*sample_paths(), *hostile_paths()]:
        for name in INNER:
            parse_msg(name, parse_3164(encoder(name, rfc="3164")(normalized(path)))["msg"])


def test_an_event_with_many_texts_keeps_its_essential_fields() -> None:
    event = normalized(SAMPLES / "feature_update_status.json")
    event["aha"]["audit"]["contributors"] = [{"name": "n" * 80}] * 400
    for name in INNER:
        msg = parse_msg(name, parse_3164(encoder(name, rfc="3164")(event))["msg"])
        if name == "syslog-cef":
            assert "cs5" not in msg  # contributors are not among the essential fields
            assert msg["externalId"] == "7712852070579044363" and msg["suser"]
        elif name == "syslog-json":
            assert msg["tags"] == ["truncated"] and "contributors" not in msg["aha"]["audit"]


def test_the_last_resort_is_a_cut_on_a_character_boundary() -> None:
    # Not even the essential fields fit (a message that is an object of 500 members): cut.
    event = normalized(SAMPLES / "feature_update_status.json")
    event["message"] = {f"k\u00e9{n}": n for n in range(500)}
    frame = encoder("syslog-json", rfc="3164")(event)
    assert len(frame) in (PACKET_MAX, PACKET_MAX - 1)
    assert parse_3164(frame)["tag"] == "ahasiem"
    frame.decode("utf-8")
    # A message framed as it is (not encoded from an event) is cut the same way.
    framed = frame_3164("\u00e9".encode() * 600, event, SyslogOptions(hostname=HOST))
    assert len(framed) in (PACKET_MAX, PACKET_MAX - 1)
    framed.decode("utf-8")


@given(texts, st.sampled_from(INNER))
def test_any_3164_message_fits_and_parses(text: str, name: str) -> None:
    event = normalized(SAMPLES / "feature_update_status.json")
    event["message"] = text * 40
    event["user"] = {**event["user"], "name": text, "email": text}
    frame = encoder(name, rfc="3164")(event)
    parse_msg(name, parse_3164(frame)["msg"])
    assert raw_controls(frame) == set()


# ---- Unicode line separators and bidi controls ----


def test_syslog_json_escapes_separators_and_bidi_controls_and_keeps_the_text() -> None:
    event = normalized(HOSTILE / "separators_in_every_field.json")
    for rfc in ("5424", "3164"):
        frame = encoder("syslog-json", rfc=rfc)(event)
        assert raw_controls(frame) == set()
        msg = parse_5424(frame)["msg"] if rfc == "5424" else parse_3164(frame)["msg"]
        assert b"\\u2028" in msg and b"\\u0085" in msg
        # JSON escapes decode to the very text.
        assert orjson.loads(msg)["user"]["name"] == "Line\u2028Separator\u2029Para\u0085Nel"


def test_the_framer_replaces_separators_and_bidi_controls_in_any_msg() -> None:
    event = normalized(SAMPLES / "feature_create.json")
    raw = "a\u2028b\u2029c\u0085d\u202ee\u2066f\u2069".encode()
    expected = "a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf\ufffd".encode()
    assert parse_5424(frame_5424(raw, event, SyslogOptions(hostname=HOST)))["msg"] == expected
    assert parse_3164(frame_3164(raw, event, SyslogOptions(hostname=HOST)))["msg"] == expected


@given(
    st.text(st.sampled_from([*LINE_SEPARATORS, *BIDI_CONTROLS, "a", "\u00e9", " "])),
    st.sampled_from(INNER),
    st.sampled_from(["5424", "3164"]),
)
def test_no_separator_or_bidi_control_is_ever_written_raw(text: str, name: str, rfc: str) -> None:
    frame = encoder(name, rfc=rfc)(event_with(text))
    decoded = frame.decode("utf-8")
    assert not any(char in decoded for char in LINE_SEPARATORS + BIDI_CONTROLS)
