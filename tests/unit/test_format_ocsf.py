from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.normalize import Provenance, normalize, normalize_raw
from forwarder.formats import encoder_for, format_names
from forwarder.formats.ocsf import OCSF_VERSION, encode
from tests.golden import assert_golden
from tests.helpers import SAMPLES, sample_paths, sample_provenance

NOW = "2026-11-27T14:10:13.052Z"
RECEIVED = "2026-11-27T14:10:12.990Z"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "data" / "ocsf"
PINNED = SCHEMA_DIR / OCSF_VERSION
# class_uid -> the pinned schema file of that class.
CLASSES = {3004: "entity_management", 3002: "authentication", 0: "base_event"}


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((PINNED / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@cache
def _captions() -> dict[str, Any]:
    captions: dict[str, Any] = json.loads((PINNED / "captions.json").read_text())
    return captions


def _check_node(
    value: Any, node: dict[str, Any], defs: dict[str, Any], enums: dict[str, Any], path: str
) -> list[str]:
    """What JSON Schema can't say: deprecated attributes, and captions that match their ids."""
    if not isinstance(value, dict) or "properties" not in node:
        return []
    problems = []
    for attribute, spec in enums.items():
        if attribute not in value:
            continue
        caption = value.get(spec["sibling"])
        if value[attribute] == 99:
            if not isinstance(caption, str) or not caption:
                problems.append(f"{path}{spec['sibling']}: 'Other' needs the source's own label")
        elif caption != spec["captions"].get(str(value[attribute])):
            problems.append(
                f"{path}{spec['sibling']}: {caption!r} is not the caption of "
                f"{attribute}={value[attribute]!r}"
            )
    objects = _captions()["objects"]
    for key, item in value.items():
        prop = node["properties"].get(key)
        if prop is None:
            continue  # additionalProperties: the schema validation reports it
        if prop.get("deprecated"):
            problems.append(f"{path}{key}: deprecated in OCSF {OCSF_VERSION}")
        ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
        if not ref:
            continue
        name = ref.rsplit("/", 1)[-1]
        for index, element in enumerate(item if isinstance(item, list) else [item]):
            where = f"{path}{key}[{index}]." if isinstance(item, list) else f"{path}{key}."
            problems += _check_node(element, defs[name], defs, objects.get(name, {}), where)
    return problems


def assert_valid_ocsf(event: Any) -> None:
    """Fail with every way `event` breaks the pinned OCSF schema of its class."""
    assert isinstance(event, dict), "an OCSF event is a JSON object"
    name = CLASSES.get(event.get("class_uid"))  # type: ignore[arg-type]
    assert name is not None, f"class_uid {event.get('class_uid')!r} is none the encoder may write"
    validator = _validator(name)
    problems = [
        f"{'/'.join(map(str, error.path)) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(event), key=lambda error: list(error.path))
    ]
    schema = validator.schema
    problems += _check_node(
        event, schema, schema["$defs"], _captions()["classes"][name]["attributes"], ""
    )
    class_uid, activity_id = event.get("class_uid"), event.get("activity_id")
    if (
        isinstance(class_uid, int)
        and isinstance(activity_id, int)
        and event.get("type_uid") != class_uid * 100 + activity_id
    ):
        problems.append("type_uid is not class_uid * 100 + activity_id")
    metadata = event.get("metadata", {})
    if metadata.get("version") != OCSF_VERSION:
        problems.append(f"metadata.version is not {OCSF_VERSION}")
    if metadata.get("profiles") != _captions()["profiles"]:
        problems.append("metadata.profiles differ from the profiles the schema was made with")
    if problems:
        raise AssertionError("not valid OCSF:\n" + "\n".join(problems))


_provenance = sample_provenance


def _ocsf_of(raw: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(encode(normalize_raw(raw, _provenance(raw), now=NOW)))
    return decoded


def _sample(name: str) -> dict[str, Any]:
    return _ocsf_of((SAMPLES / name).read_bytes())


def _pretty(event: Any) -> str:
    return orjson.dumps(event, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


# --- the pinned schema -----------------------------------------------------------------------


def test_the_pinned_schema_files_are_what_the_ocsf_export_compiles_to() -> None:
    pytest.importorskip("ocsf_json_schema")
    spec = importlib.util.spec_from_file_location("make_schemas", SCHEMA_DIR / "make_schemas.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VERSION == OCSF_VERSION
    for name, text in module.build().items():
        assert (PINNED / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run `.venv/bin/python tests/data/ocsf/make_schemas.py`"
        )


def _break(event: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    broken = copy.deepcopy(event)
    change(broken)
    return broken


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (lambda e: e.update(class_uid=3005), "class_uid"),
        (lambda e: e.update(class_uid=3002, type_uid=300203), "user"),
        (lambda e: e.pop("entity"), "'entity' is a required property"),
        (lambda e: e.pop("cloud"), "'cloud' is a required property"),
        (lambda e: e["metadata"].pop("product"), "'product' is a required property"),
        (lambda e: e.update(activity_id=42, type_uid=300442), "42 is not one of"),
        (lambda e: e.update(severity_id=7), "7 is not one of"),
        (lambda e: e.update(status_id=3), "3 is not one of"),
        (lambda e: e.update(time="2026-11-27T14:05:12.417Z"), "is not of type 'integer'"),
        (lambda e: e.update(resources=[{"uid": "1"}]), "'resources' was unexpected"),
        (lambda e: e["entity"].update(url="https://acme.aha.io"), "'url' was unexpected"),
        (lambda e: e["entity"].pop("uid"), "entity"),
        (lambda e: e["actor"]["user"].update(email_addr="priya"), "does not match"),
        (lambda e: e.update(type_uid=300401), "type_uid is not class_uid"),
        (lambda e: e.update(severity="High"), "'High' is not the caption of severity_id=1"),
        (lambda e: e.update(activity_name="Delete"), "not the caption of activity_id=3"),
        (lambda e: e["entity"].update(type_id=99, type=""), "needs the source's own label"),
        (lambda e: e["metadata"].update(version="1.3.0"), "metadata.version"),
        (lambda e: e["metadata"].update(extension={"name": "x"}), "deprecated"),
    ],
)
def test_the_validation_catches_a_broken_event(
    change: Callable[[dict[str, Any]], None], reported: str
) -> None:
    event = _sample("feature_update_status.json")
    assert_valid_ocsf(event)
    with pytest.raises(AssertionError) as raised:
        assert_valid_ocsf(_break(event, change))
    assert reported in str(raised.value)


# --- golden files ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sample_paths(), ids=lambda path: path.stem)
def test_every_sample_matches_its_golden_file_and_the_schema(path: Path) -> None:
    event = _ocsf_of(path.read_bytes())
    assert_valid_ocsf(event)
    assert_golden(
        f"ocsf/{path.relative_to(SAMPLES).with_suffix('').as_posix()}.json", _pretty(event)
    )


def test_the_documented_example_is_the_golden_output() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "formats" / "ocsf.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    assert example == _pretty(_sample("feature_update_status.json"))


def test_the_registry_serves_the_encoder_as_compact_json() -> None:
    assert "ocsf" in format_names()
    raw = (SAMPLES / "feature_update_status.json").read_bytes()
    ecs = normalize_raw(raw, _provenance(raw), now=NOW)
    before = copy.deepcopy(ecs)
    line = encoder_for("ocsf")(ecs)
    assert line == encode(ecs)
    assert b"\n" not in line and b'": ' not in line
    assert ecs == before, "the encoder must not change its input"


# --- the mapping, as a SIEM user sees it -----------------------------------------------------


def test_an_audit_is_an_entity_management_event_about_the_record() -> None:
    event = _sample("feature_update_status.json")
    assert (event["class_uid"], event["category_uid"], event["type_uid"]) == (3004, 3, 300403)
    assert event["time"] == 1_795_788_312_417  # 2026-11-27T14:05:12.417Z
    assert event["metadata"]["logged_time"] == 1_795_788_612_990
    assert event["metadata"]["processed_time"] == 1_795_788_613_052
    assert event["metadata"]["uid"] == "7712852070579044363"
    assert event["metadata"]["correlation_uid"] == "feature:7712852070702501001"
    assert event["actor"]["user"] == {
        "uid": "6514078897796815681",
        "name": "Priya Menon",
        "email_addr": "priya.menon@example.com",
    }
    assert event["entity"] == {
        "type_id": 99,
        "type": "feature",
        "uid": "7712852070702501001",
        "data": {"url": "https://acme.aha.io/features/DEMO-28"},
    }
    [change] = event["entity_result"]["data"]["changes"]
    assert (change["old"], change["new"]) == ("Under consideration", "Ready to develop")
    assert event["cloud"] == {"provider": "Aha!", "org": {"uid": "acme-prod", "name": "acme"}}


@pytest.mark.parametrize(
    ("action", "activity_id", "activity_name"),
    [
        ("create", 1, "Create"),
        ("update", 3, "Update"),
        ("destroy", 4, "Delete"),
        ("archive", 99, "archive"),
        (None, 0, "Unknown"),
    ],
)
def test_audit_actions_map_to_activities(
    action: str | None, activity_id: int, activity_name: str
) -> None:
    audit = {"id": "1", "auditable_type": "feature", "auditable_id": "2", "audit_action": action}
    event = orjson.loads(
        encode(normalize({"event": "audit", "audit": audit}, Provenance(), now=NOW))
    )
    assert_valid_ocsf(event)
    assert (event["activity_id"], event["activity_name"]) == (activity_id, activity_name)
    assert event["type_uid"] == 300400 + activity_id


def test_a_change_by_no_user_has_no_actor_and_keeps_the_parent_record() -> None:
    event = _sample("comment_create_null_user.json")
    assert "actor" not in event and "observables" not in event
    assert event["message"] == "Jira integration commented on feature DEMO-28 Language options"
    assert event["entity"]["data"]["associated"] == {"type": "feature", "id": "7712852070702501001"}


def test_a_deleted_record_has_no_result() -> None:
    event = _sample("release_destroy.json")
    assert event["activity_name"] == "Delete"
    assert "entity_result" not in event
    assert event["entity"] == {"type_id": 99, "type": "release", "uid": "7712852203846484006"}


def test_a_renamed_record_names_its_result() -> None:
    event = _sample("collation/collated_new_id.json")
    assert event["entity_result"]["name"] == "Audit log export"
    assert "name" not in event["entity"]


def test_contributors_are_kept_and_searchable() -> None:
    event = _sample("collation/collated_new_id.json")
    contributors = event["unmapped"]["aha"]["audit"]["contributors"]
    assert [user["name"] for user in contributors] == ["Priya Menon", "Jonas Düring"]
    emails = [obs["value"] for obs in event["observables"] if obs["type_id"] == 5]
    assert emails == ["priya.menon@example.com", "jonas.during@example.com"]


def test_a_user_record_is_a_user_entity() -> None:
    audit = {"id": "1", "audit_action": "update", "auditable_type": "user", "auditable_id": "42"}
    event = orjson.loads(
        encode(normalize({"event": "audit", "audit": audit}, Provenance(), now=NOW))
    )
    assert_valid_ocsf(event)
    assert event["entity"] == {"type_id": 2, "type": "User", "user": {"uid": "42"}, "uid": "42"}
    assert "cloud" in event and "org" not in event["cloud"]
    assert "tenant_uid" not in event["metadata"]


def test_an_email_ocsf_would_reject_stays_unmapped() -> None:
    audit: dict[str, Any] = {"id": "1", "audit_action": "update", "auditable_type": "feature"}
    audit["user"] = {"id": "7", "email": "not an address"}
    event = orjson.loads(
        encode(normalize({"event": "audit", "audit": audit}, Provenance(), now=NOW))
    )
    assert_valid_ocsf(event)
    assert event["actor"]["user"] == {"uid": "7"}
    assert event["unmapped"]["user"] == {"email": "not an address"}


def test_a_failed_login_is_a_failed_authentication() -> None:
    event = _sample("security_event_unknown_type.json")
    assert (event["class_uid"], event["activity_id"], event["type_uid"]) == (3002, 1, 300201)
    assert (event["status_id"], event["status"]) == (2, "Failure")
    assert event["status_detail"] == "invalid_password"
    assert event["user"] == {"uid": "6514078897796815681", "email_addr": "priya.menon@example.com"}
    assert event["src_endpoint"] == {"ip": "203.0.113.24"}
    assert event["service"] == {"name": "Aha! Roadmaps"}
    assert event["unmapped"]["aha"]["security"]["details"] == {
        "reason": "invalid_password",
        "attempt": 3,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"event": "security", "security": {"id": "9", "action": "user.password_reset"}},
        {"event": "security", "security": {"id": "9", "action": "user.login_failed"}},
        {"event": "billing", "billing": {"plan": "enterprise"}},
    ],
)
def test_other_event_types_ship_whole_as_base_events(body: dict[str, Any]) -> None:
    event = orjson.loads(encode(normalize(body, Provenance(received_at=RECEIVED), now=NOW)))
    assert_valid_ocsf(event)
    assert (event["class_uid"], event["category_uid"], event["activity_id"]) == (0, 0, 99)
    kind = body["event"]
    assert event["activity_name"] == body[kind].get("action", kind)
    assert event["unmapped"]["aha"][kind] == body[kind]


def test_bytes_that_are_not_json_ship_as_a_base_event() -> None:
    raw = b"\x00not json"
    ecs = normalize_raw(raw, _provenance(raw), now=NOW, include_original=True)
    event = orjson.loads(encode(ecs))
    assert_valid_ocsf(event)
    assert event["raw_data"] == ecs["event"]["original"]
    assert event["raw_data_hash"]["value"] == hashlib.sha256(raw).hexdigest()
    assert event["unmapped"]["aha"]["unparsed"] == {"raw": raw.decode("utf-8", "replace")}


# --- any input -------------------------------------------------------------------------------

_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_values = st.one_of(st.none(), _INT64, st.floats(allow_nan=False, allow_infinity=False), st.text())
_users = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.text(), _INT64),
            "name": st.text(),
            "email": st.one_of(st.emails(), st.text()),
        },
    ),
)
_types = st.one_of(
    st.sampled_from(["feature", "ideas/idea", "ideas/idea_endorsement", "user", "unknown"]),
    st.text(),
)


@given(
    audit=st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.text(), _INT64),
            "audit_action": st.one_of(st.sampled_from(["create", "update", "destroy"]), st.text()),
            "auditable_type": _types,
            "auditable_id": st.one_of(st.text(), _INT64, st.none()),
            "associated_type": st.one_of(_types, st.none()),
            "associated_id": st.one_of(st.text(), st.none()),
            "created_at": st.one_of(st.just("2026-11-27T14:05:12.417Z"), st.text(), _INT64),
            "interesting": st.booleans(),
            "user": _users,
            "contributors": st.lists(_users, max_size=3),
            "changes": st.lists(
                st.fixed_dictionaries(
                    {"field_name": st.one_of(st.sampled_from(["Name"]), st.text(), st.none())},
                    optional={"value": _values},
                ),
                max_size=4,
            ),
            "description": st.text(),
            "auditable_url": st.one_of(st.none(), st.text()),
        },
    ),
    token=st.one_of(st.none(), st.text(min_size=1)),
    original=st.booleans(),
)
def test_any_audit_is_valid_ocsf_and_loses_no_change(
    audit: dict[str, Any], token: str | None, original: bool
) -> None:
    raw = orjson.dumps({"event": "audit", "audit": audit})
    provenance = Provenance(received_at=RECEIVED, token_id=token, account="acme")
    ecs = normalize_raw(raw, provenance, now=NOW, include_original=original)
    event = orjson.loads(encode(ecs))
    assert_valid_ocsf(event)
    assert event["class_uid"] == 3004
    shipped = event.get("entity_result", event["entity"]).get("data", {}).get("changes", [])
    assert shipped == ecs["aha"]["audit"]["changes"]
    author = ecs.get("user", {})
    if not author:
        assert "actor" not in event
    elif "id" in author:
        assert event["actor"]["user"]["uid"] == author["id"]
    elif "name" in author:
        assert event["actor"]["user"]["name"] == author["name"]


@given(
    security=st.fixed_dictionaries(
        {
            "action": st.one_of(
                st.just("user.login_failed"), st.text(), _INT64, st.lists(st.text(), max_size=2)
            )
        },
        optional={
            "id": st.text(),
            "user": _users,
            "ip_address": st.one_of(st.ip_addresses().map(str), st.text()),
            "details": st.one_of(
                st.dictionaries(st.text(), _values), st.fixed_dictionaries({"reason": _values})
            ),
        },
    )
)
def test_any_security_event_is_valid_ocsf(security: dict[str, Any]) -> None:
    raw = orjson.dumps({"event": "security", "security": security})
    event = orjson.loads(encode(normalize_raw(raw, _provenance(raw), now=NOW)))
    assert_valid_ocsf(event)
    assert event["class_uid"] in (3002, 0)
    assert event["unmapped"]["aha"]["security"] == security
