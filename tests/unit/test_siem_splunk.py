"""The Splunk add-on in siem/splunk/: every sourcetype the HEC sink sends has a stanza, the
stanzas' extractions and timestamp settings read the real encoders' output, and every CIM
Change field siem/README.md promises is computed from fields that real events carry.

Splunk itself is not run: the .conf files are parsed strictly, the REPORT regular expressions
are applied with Python's `re` (they use only syntax PCRE and Python share), JSON is flattened
the way Splunk's KV_MODE=json names fields (`a.b`, `a{}.b` for arrays), and the EVAL and
FIELDALIAS expressions are read for the fields they use.
"""

from __future__ import annotations

import configparser
import fnmatch
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

import forwarder
from forwarder.formats import encoder_for
from forwarder.sinks.splunk_hec.config import HEC_FORMATS, SplunkHecSinkConfig
from tests.event_bodies import normalized_events

APP = Path(__file__).resolve().parents[2] / "siem" / "splunk"
README = APP.parent / "README.md"
SOURCETYPES = {f"aha:audit:{name}": name for name in HEC_FORMATS}
# The fields the CIM Change data model's searches and dashboards use, at the least.
CIM_REQUIRED = {
    "action",
    "change_type",
    "object",
    "object_category",
    "object_id",
    "object_attrs",
    "user",
    "src",
    "dest",
    "dvc",
    "status",
    "result",
    "vendor_product",
}
# CIM's values of `action` in the Change data model.
CIM_ACTIONS = {
    "acl_modified",
    "cleared",
    "created",
    "deleted",
    "modified",
    "read",
    "stopped",
    "updated",
}
EVAL_FUNCTIONS = {"case", "coalesce", "if", "mvindex", "split", "replace", "true", "null"}


def _conf(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, strict=True, delimiters=("=",), comment_prefixes=("#",)
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    text = (APP / "default" / name).read_text()
    parser.read_string(text, source=name)
    return parser


PROPS = _conf("props.conf")
TRANSFORMS = _conf("transforms.conf")
EVENTS = normalized_events()


def _promised() -> set[str]:
    """The CIM fields in siem/README.md's table (`| \\`field\\` | ...`) under "CIM Change"."""
    text = README.read_text()
    section = text.split("### Splunk: CIM Change fields", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """JSON as Splunk's KV_MODE=json names it: `a.b`, and `a{}.b` inside arrays."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list):
        for item in node:
            yield from _flatten(item, prefix + "{}")
    elif node is not None:
        yield prefix, node


def _report(raw: str, stanza: str) -> dict[str, list[str]]:
    """A transforms.conf REGEX/FORMAT extraction applied as Splunk does (every match)."""
    regex = re.compile(TRANSFORMS[stanza]["REGEX"])
    pairs = TRANSFORMS[stanza]["FORMAT"].split()
    fields: dict[str, list[str]] = {}
    for match in regex.finditer(raw):
        for pair in pairs:
            name, _, value = pair.partition("::")

            def group(token: str, match: re.Match[str] = match) -> str:
                return re.sub(r"\$(\d+)", lambda g: match.group(int(g.group(1))) or "", token)

            fields.setdefault(group(name), []).append(group(value))
    return fields


def _extracted(sourcetype: str, raw: str) -> dict[str, Any]:
    """The search-time fields Splunk gives `raw` in `sourcetype` before FIELDALIAS and EVAL."""
    stanza = PROPS[sourcetype]
    if stanza.get("KV_MODE") == "json":
        fields: dict[str, Any] = {}
        for name, value in _flatten(orjson.loads(raw)):
            fields.setdefault(name, []).append(value)
        return fields
    found: dict[str, Any] = {}
    for key, value in stanza.items():
        if key.startswith("REPORT-"):
            for transform in (name.strip() for name in value.split(",")):
                found.update(_report(raw, transform))
    return found


def _raw(sourcetype: str, event: dict[str, Any]) -> str:
    return encoder_for(SOURCETYPES[sourcetype])(event).decode("utf-8")


def _referenced(expression: str) -> set[str]:
    """Fields an EVAL expression reads: 'quoted' names and bare names (string literals and
    function names left out)."""
    quoted = set(re.findall(r"'([^']+)'", expression))
    rest = re.sub(r"'[^']*'", " ", re.sub(r'"(?:\\.|[^"\\])*"', " ", expression))
    bare = {
        name
        for name in re.findall(r"(?<![\w.])([A-Za-z_][\w.]*)(?![\w.])(?!\s*\()", rest)
        if name not in EVAL_FUNCTIONS
    }
    return quoted | {name for name in bare if not name.isdigit()}


def _aliases(value: str) -> list[tuple[str, str]]:
    """`"a" AS b c AS d` as [(a, b), (c, d)]."""
    return re.findall(r'"?([^"\s]+)"?\s+AS\s+(\w+)', value)


def _computed(sourcetype: str) -> dict[str, set[str]]:
    """CIM field -> the event fields it is computed from, for one stanza."""
    stanza = PROPS[sourcetype]
    fields: dict[str, set[str]] = {}
    for key, value in stanza.items():
        if key.startswith("EVAL-"):
            fields[key[len("EVAL-") :]] = _referenced(value)
        elif key.startswith("FIELDALIAS-"):
            for source, target in _aliases(value):
                fields[target] = {source}
    return fields


def test_every_sourcetype_the_hec_sink_sends_has_a_stanza() -> None:
    for name in HEC_FORMATS:
        config = SplunkHecSinkConfig.model_validate(
            {"type": "splunk_hec", "name": "s", "url": "https://h:8088", "token": "t"}
            | {"format": name}
        )
        assert config.effective_sourcetype in PROPS, config.effective_sourcetype
    assert set(PROPS.sections()) == set(SOURCETYPES)


@pytest.mark.parametrize("sourcetype", sorted(SOURCETYPES))
def test_every_promised_cim_field_is_computed_in_every_stanza(sourcetype: str) -> None:
    promised = _promised()
    assert promised >= CIM_REQUIRED, "siem/README.md leaves out CIM Change fields"
    assert promised <= set(_computed(sourcetype)), sourcetype


@pytest.mark.parametrize("sourcetype", sorted(SOURCETYPES))
def test_cim_fields_are_computed_from_fields_real_events_carry(sourcetype: str) -> None:
    seen: set[str] = set()
    for event in EVENTS.values():
        seen |= set(_extracted(sourcetype, _raw(sourcetype, event)))
    for cim, sources in _computed(sourcetype).items():
        missing = sources - seen
        assert not missing, f"{sourcetype}: {cim} reads {missing}, which no event has"


@pytest.mark.parametrize("sourcetype", sorted(SOURCETYPES))
def test_every_audit_action_maps_to_a_cim_action(sourcetype: str) -> None:
    expression = PROPS[sourcetype]["EVAL-action"]
    outputs = set(re.findall(r',"([a-z_]+)"', expression)) - {"unknown"}
    assert outputs <= CIM_ACTIONS
    if sourcetype == "aha:audit:ocsf":
        codes = {orjson.loads(_raw(sourcetype, e))["activity_id"] for e in EVENTS.values()}
        mapped = {int(code) for code in re.findall(r"activity_id==(\d+)", expression)}
        assert codes - {0, 99} <= mapped
        return
    verbs = {
        e["aha"]["audit"]["action"]
        for e in EVENTS.values()
        if isinstance((e.get("aha") or {}).get("audit"), dict)
    }
    assert verbs >= {"create", "update", "destroy"}
    for verb in ("create", "update", "destroy"):
        assert f'=="{verb}"' in expression, f"{sourcetype}: {verb} not mapped"


def _strptime(text: str, splunk_format: str) -> datetime:
    """Splunk's TIME_FORMAT as these stanzas use it, read with Python."""
    if splunk_format == "%s%3N":
        return datetime.fromtimestamp(int(text[:13]) / 1000, UTC)
    python = splunk_format.replace("%3N", "%f")
    if python.endswith("%Z") and text.rstrip().endswith("Z"):
        python = python[:-2] + "%z"
    return datetime.strptime(text, python).replace(tzinfo=UTC)


@pytest.mark.parametrize("sourcetype", sorted(SOURCETYPES))
def test_the_timestamp_settings_read_the_events_time(sourcetype: str) -> None:
    stanza = PROPS[sourcetype]
    prefix = re.compile(stanza["TIME_PREFIX"])
    lookahead = int(stanza["MAX_TIMESTAMP_LOOKAHEAD"])
    checked = 0
    for name, event in EVENTS.items():
        raw = _raw(sourcetype, event)
        match = prefix.search(raw)
        if not isinstance(event.get("@timestamp"), str):
            continue
        assert match, f"{sourcetype} {name}: no {stanza['TIME_PREFIX']}"
        window = raw[match.end() : match.end() + lookahead]
        text = window.split('"', 1)[0].split("\t", 1)[0].split(" rt", 1)[0]
        if stanza["TIME_FORMAT"] == "%s%3N":
            text = re.match(r"\d+", window).group(0)  # type: ignore[union-attr]
        expected = datetime.fromisoformat(event["@timestamp"].replace("Z", "+00:00"))
        assert _strptime(text, stanza["TIME_FORMAT"]) == expected, f"{sourcetype} {name}"
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("sourcetype", sorted(SOURCETYPES))
def test_one_event_is_one_line_whatever_aha_sends(sourcetype: str) -> None:
    stanza = PROPS[sourcetype]
    assert stanza["SHOULD_LINEMERGE"] == "false"
    breaker = re.compile(stanza["LINE_BREAKER"])
    for name, event in EVENTS.items():
        assert not breaker.search(_raw(sourcetype, event)), f"{sourcetype} {name}"


def test_cef_extraction_finds_the_encoders_fields_and_no_others() -> None:
    # The keys the CEF encoder writes (forwarder/formats/cef.py); a hostile text must never
    # make Splunk see another key or a second value.
    keys = {"rt", "act", "suser", "suid", "flexString1", "flexString1Label", "externalId"}
    keys |= {"deviceExternalId", "request", "cat", "outcome", "msg"}
    keys |= {f"cs{n}" for n in range(1, 7)} | {f"cs{n}Label" for n in range(1, 7)}
    header = {"cef_version", "cef_vendor", "cef_product", "cef_device_version"}
    header |= {"signature_id", "signature", "cef_severity"}
    for name, event in EVENTS.items():
        fields = _extracted("aha:audit:cef", _raw("aha:audit:cef", event))
        assert set(fields) - header <= keys, name
        assert all(len(values) == 1 for values in fields.values()), name
        if name.startswith("forwarder/samples/"):
            assert fields["signature_id"] == [event["event"]["action"]], name
            unescaped = fields["msg"][0].replace("\\=", "=").replace("\\\\", "\\")
            assert unescaped.split() == event["message"].split(), name


def test_leef_extraction_reads_the_encoders_attributes() -> None:
    event = EVENTS["forwarder/samples/feature_create.json"]
    fields = _extracted("aha:audit:leef", _raw("aha:audit:leef", event))
    assert fields["action"] == ["create"]
    assert fields["recordType"] == ["feature"]
    assert fields["usrName"] == ["priya.menon@example.com"]
    assert fields["changedFields"] == ["Name, Release, Assigned to user"]
    assert fields["signature_id"] == ["feature-create"]


def test_eventtype_and_tags_put_every_sourcetype_in_the_change_data_model() -> None:
    eventtypes = _conf("eventtypes.conf")
    tags = _conf("tags.conf")
    search = eventtypes["aha_audit_change"]["search"]
    pattern = re.fullmatch(r'sourcetype="([^"]+)" \((action="\w+"(?: OR action="\w+")*)\)', search)
    assert pattern, search
    assert all(fnmatch.fnmatchcase(name, pattern.group(1)) for name in SOURCETYPES)
    # Every audit is in it, in every format; an event of another kind (security) is not.
    actions = set(re.findall(r'action="(\w+)"', pattern.group(2)))
    for sourcetype in SOURCETYPES:
        for name, event in EVENTS.items():
            if name.startswith(SAMPLE):
                is_audit = (event.get("aha") or {}).get("event") == "audit"
                assert (_cim(sourcetype, event)["action"] in actions) == is_audit, name
    assert dict(tags["eventtype=aha_audit_change"]) == {"change": "enabled", "audit": "enabled"}


def test_the_app_is_shared_and_versioned_with_the_forwarder() -> None:
    app = _conf("app.conf")
    assert app["id"]["version"] == app["launcher"]["version"] == forwarder.__version__
    assert app["package"]["id"] == app["id"]["name"] == "TA-aha-siem"
    meta = (APP / "metadata" / "default.meta").read_text()
    assert "export = system" in meta


# --- the EVAL expressions, evaluated -----------------------------------------------------------
# A small evaluator for the part of Splunk's eval language the stanzas use: string and number
# literals, 'quoted' and bare field names, ==, and case, coalesce, if, mvindex, split, replace,
# true. Null is None; a multivalue field is a list.

_TOKEN = re.compile(
    r'\s*(?:("(?:\\.|[^"\\])*")|(\'[^\']+\')|(==)|([(),])|(-?\d+)|([A-Za-z_][\w.{}]*))'
)


def _tokens(text: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        assert match, f"cannot read {text[position:]!r}"
        kinds = ("string", "field", "eq", "punct", "number", "name")
        kind = next(k for k, group in zip(kinds, match.groups(), strict=True) if group)
        found.append((kind, match.group(match.lastindex or 0)))
        position = match.end()
    return found


def _single(value: Any) -> Any:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _evaluate(expression: str, fields: dict[str, Any]) -> Any:
    tokens = _tokens(expression)
    position = 0

    def take() -> tuple[str, str]:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def primary() -> Any:
        kind, text = take()
        if kind == "string":
            return text[1:-1].replace('\\"', '"')
        if kind == "number":
            return int(text)
        if kind == "field":
            return _single(fields.get(text[1:-1]))
        if position < len(tokens) and tokens[position] == ("punct", "("):
            take()
            args = []
            while tokens[position] != ("punct", ")"):
                args.append(expr())
                if tokens[position] == ("punct", ","):
                    take()
            take()
            return _call(text, args)
        return _single(fields.get(text))

    def expr() -> Any:
        left = primary()
        if position < len(tokens) and tokens[position][0] == "eq":
            take()
            right = primary()
            return None if left is None or right is None else str(left) == str(right)
        return left

    value = expr()
    assert position == len(tokens), f"unread: {tokens[position:]}"
    return value


def _call(name: str, args: list[Any]) -> Any:
    if name == "true":
        return True
    if name == "coalesce":
        return next((arg for arg in args if arg is not None), None)
    if name == "if":
        return args[1] if args[0] else args[2]
    if name == "case":
        pairs = zip(args[::2], args[1::2], strict=True)
        return next((value for test, value in pairs if test), None)
    if args[0] is None:
        return None
    if name == "mvindex":
        values = args[0] if isinstance(args[0], list) else [args[0]]
        return values[args[1]] if -len(values) <= args[1] < len(values) else None
    if name == "split":
        return _single(str(args[0]).split(args[1]))
    if name == "replace":
        return re.sub(args[1], args[2], str(args[0]))
    raise AssertionError(f"no evaluator for {name}()")


def _cim(sourcetype: str, event: dict[str, Any]) -> dict[str, Any]:
    """The CIM fields Splunk would show for `event` in `sourcetype` (FIELDALIAS, then EVAL)."""
    fields = _extracted(sourcetype, _raw(sourcetype, event))
    stanza = PROPS[sourcetype]
    result: dict[str, Any] = {}
    for key, value in stanza.items():
        if key.startswith("FIELDALIAS-"):
            for source, target in _aliases(value):
                result[target] = _single(fields.get(source))
    for key, value in stanza.items():
        if key.startswith("EVAL-"):
            result[key[len("EVAL-") :]] = _evaluate(value, fields)
    return result


SAMPLE = "forwarder/samples/"


def test_a_feature_update_reads_the_same_in_every_format() -> None:
    event = EVENTS[SAMPLE + "feature_update_status.json"]
    for sourcetype in sorted(SOURCETYPES):
        cim = _cim(sourcetype, event)
        assert cim["action"] == "modified", sourcetype
        assert cim["object"] == "DEMO-28", sourcetype
        assert cim["object_category"] == "feature", sourcetype
        assert cim["object_id"] == event["aha"]["audit"]["auditable"]["id"], sourcetype
        assert cim["object_attrs"] == "Workflow status", sourcetype
        assert cim["user"] == "priya.menon@example.com", sourcetype
        assert cim["user_name"] == "Priya Menon", sourcetype
        assert cim["dest"] == cim["src"] == cim["dvc"] == "acme.aha.io", sourcetype
        assert cim["status"] == "success", sourcetype
        assert cim["result"] == "feature-update", sourcetype
        assert cim["change_type"] == "application", sourcetype
        assert cim["vendor_product"] == "Aha! Roadmaps", sourcetype
        assert cim["description"] == event["message"], sourcetype


@pytest.mark.parametrize("sourcetype", sorted(SOURCETYPES))
def test_every_sample_gives_the_same_cim_fields_as_its_ecs_event(sourcetype: str) -> None:
    for name, event in EVENTS.items():
        if not name.startswith(SAMPLE):
            continue
        ecs, other = _cim("aha:audit:ecs", event), _cim(sourcetype, event)
        assert other == ecs, name
        assert ecs["action"] in CIM_ACTIONS | {"unknown"}
        if event.get("user") is None:
            assert ecs["user"] == "unknown", name


# Settings of props.conf and transforms.conf as Splunk's .spec files name them; a misspelt key
# would be ignored by Splunk without a word.
PROPS_SETTINGS = {
    "SHOULD_LINEMERGE",
    "LINE_BREAKER",
    "TRUNCATE",
    "TIME_PREFIX",
    "TIME_FORMAT",
    "MAX_TIMESTAMP_LOOKAHEAD",
    "TZ",
    "KV_MODE",
    "category",
    "description",
}
PROPS_CLASSES = ("REPORT-", "EVAL-", "FIELDALIAS-")


def test_every_setting_is_one_splunk_knows() -> None:
    for sourcetype in PROPS.sections():
        for key in PROPS[sourcetype]:
            assert key in PROPS_SETTINGS or key.startswith(PROPS_CLASSES), f"{sourcetype}: {key}"
            if key.startswith(PROPS_CLASSES):
                assert re.fullmatch(r"[A-Z]+-\w+", key), f"{sourcetype}: {key}"
        for key, value in PROPS[sourcetype].items():
            if key.startswith("REPORT-"):
                for transform in value.split(","):
                    assert transform.strip() in TRANSFORMS, transform
    for stanza in TRANSFORMS.sections():
        assert set(TRANSFORMS[stanza]) == {"REGEX", "FORMAT"}, stanza
        re.compile(TRANSFORMS[stanza]["REGEX"])
    assert set(_conf("eventtypes.conf")["aha_audit_change"]) == {"search", "description"}
    assert PROPS["aha:audit:ecs"]["KV_MODE"] == PROPS["aha:audit:ocsf"]["KV_MODE"] == "json"
