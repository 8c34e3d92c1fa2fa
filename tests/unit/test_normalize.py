from __future__ import annotations

import hashlib
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.normalize import ECS_VERSION, Provenance, normalize, normalize_raw
from tests.helpers import SAMPLES, SHARED_EXAMPLE, sample_paths, sample_provenance

NOW = "2026-11-27T14:10:13.052Z"


provenance_for = sample_provenance


def normalized(name: str) -> dict:
    raw = (SAMPLES / name).read_bytes()
    return normalize_raw(raw, provenance_for(raw), now=NOW)


@pytest.mark.skipif(not SHARED_EXAMPLE.exists(), reason="shared example not beside the checkout")
def test_feature_update_matches_the_documented_example_event() -> None:
    expected = json.loads(SHARED_EXAMPLE.read_text())
    expected.pop("_comment")
    expected["event"]["hash"] = hashlib.sha256(
        (SAMPLES / "feature_update_status.json").read_bytes()
    ).hexdigest()
    assert normalized("feature_update_status.json") == expected


def test_every_sample_normalizes_with_the_ecs_basics() -> None:
    for path in sample_paths():
        raw = path.read_bytes()
        body = orjson.loads(raw)
        doc = normalize_raw(raw, provenance_for(raw), now=NOW)
        inner = body[body["event"]]
        assert doc["ecs"] == {"version": ECS_VERSION}, path.name
        assert doc["@timestamp"] == inner["created_at"], path.name
        assert doc["event"]["id"] == inner["id"], path.name
        assert doc["event"]["hash"] == hashlib.sha256(raw).hexdigest(), path.name
        assert doc["organization"] == {"id": "acme-prod", "name": "acme"}, path.name
        assert doc["aha"]["event"] == body["event"], path.name
        orjson.dumps(doc)  # serializable as is


def test_null_user_yields_no_user_and_no_related() -> None:
    doc = normalized("comment_create_null_user.json")
    assert "user" not in doc
    assert "related" not in doc
    assert doc["aha"]["audit"]["associated"] == {"type": "feature", "id": "7712852070702501001"}
    assert doc["event"]["type"] == ["creation"]


def test_destroy_is_a_deletion_without_url() -> None:
    doc = normalized("release_destroy.json")
    assert doc["event"]["type"] == ["deletion"]
    assert doc["event"]["action"] == "release-destroy"
    assert "url" not in doc


def test_a_number_becomes_text_and_keeps_its_typed_original() -> None:
    changes = normalized("requirement_estimate_integer.json")["aha"]["audit"]["changes"]
    assert changes[0] == {"field_name": "Estimate", "value": "5", "value_raw": 5}
    # A string stays as it is, with no copy.
    assert changes[1] == {"field_name": "Due date", "value": "2027-01-15"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ("", ""),
        (0, "0"),
        (-1.5, "-1.5"),
        (1e300, "1e+300"),
        (True, "true"),
        (False, "false"),
        ([1, "a", None], '[1,"a",null]'),
        ({"b": {"c": [True]}, "a": 1}, '{"b":{"c":[true]},"a":1}'),
        ({}, "{}"),
    ],
)
def test_every_value_is_text_or_null_and_the_typed_original_is_kept(
    value: object, text: str | None
) -> None:
    doc = normalize(
        {"event": "audit", "audit": {"changes": [{"field_name": "F", "value": value}]}},
        Provenance(),
        now=NOW,
    )
    (change,) = doc["aha"]["audit"]["changes"]
    assert change["value"] == text
    if value is None or isinstance(value, str):
        assert "value_raw" not in change
    else:
        assert change["value_raw"] == value
    # Only Aha!'s text is read as rich text or as `old &rarr; new`.
    assert set(change) <= {"field_name", "value", "value_raw"}


def test_an_object_value_is_never_read_as_rich_text_or_a_move() -> None:
    value = {"html": "<p>a &rarr; b</p>", "move": "a \u2192 b"}
    doc = normalize(
        {"event": "audit", "audit": {"changes": [{"field_name": "F", "value": value}]}},
        Provenance(),
        now=NOW,
    )
    (change,) = doc["aha"]["audit"]["changes"]
    assert change == {"field_name": "F", "value": orjson.dumps(value).decode(), "value_raw": value}


def test_an_integer_beyond_64_bits_keeps_its_digits_as_text_only() -> None:
    huge = 2**70
    doc = normalize(
        {"event": "audit", "audit": {"changes": [{"field_name": "F", "value": [huge]}]}},
        Provenance(),
        now=NOW,
    )
    assert doc["aha"]["audit"]["changes"] == [{"field_name": "F", "value": f"[{huge}]"}]
    orjson.dumps(doc)


@pytest.mark.parametrize(
    ("sent", "flag"),
    [(True, True), (False, False), ("false", False), ("true", True), (0, False), (1, True),
     (None, False), ({}, False)],
)  # fmt: skip
def test_interesting_is_a_boolean_read_as_meant(sent: object, flag: bool) -> None:
    doc = normalize({"event": "audit", "audit": {"interesting": sent}}, Provenance(), now=NOW)
    assert doc["aha"]["audit"]["interesting"] is flag


@pytest.mark.parametrize(
    ("event_type", "key"),
    [
        ("security", "security"),
        ("ingest", "ingest_event"),
        ("collation", "collation_event"),
        ("audit.id", "audit_id"),
        ("ingest.received_at", "ingest_received_at"),
        ("user login", "user_login"),
    ],
)
def test_another_event_type_never_lands_on_a_field_of_the_event(event_type: str, key: str) -> None:
    payload = {"id": "1", "received_at": {"not": "a date"}, "supersedes": 5}
    doc = normalize(
        {"event": event_type, event_type: payload},
        Provenance(received_at="2026-11-27T14:10:12.990Z", source="webhook"),
        now=NOW,
    )
    assert doc["aha"]["event"] == key
    assert doc["aha"][key] == payload
    assert doc["aha"]["ingest"] == {"received_at": "2026-11-27T14:10:12.990Z", "source": "webhook"}
    assert "collation" not in doc["aha"]
    assert doc["event"]["action"] == event_type


def test_namespaced_record_type_makes_a_clean_action() -> None:
    doc = normalized("idea_endorsement_create.json")
    assert doc["event"]["action"] == "ideas-idea-endorsement-create"
    assert doc["aha"]["audit"]["auditable"]["type"] == "ideas/idea_endorsement"


def test_collated_audit_lists_every_contributor_in_related_user() -> None:
    doc = normalized("collation/collated_new_id.json")
    assert doc["related"]["user"] == [
        "6514078897796815681",
        "Priya Menon",
        "priya.menon@example.com",
        "6514079921178334209",
        "Jonas Düring",
        "jonas.during@example.com",
    ]
    assert len(doc["aha"]["audit"]["contributors"]) == 2


def test_wrapped_and_flat_contributors_normalize_alike() -> None:
    """The REST API wraps each contributor as {"user": {...}}; the webhook page lists users."""
    flat = normalized("collation/collated_new_id.json")
    wrapped = normalized("collation/collated_wrapped_contributors.json")
    assert wrapped["related"] == flat["related"]
    assert wrapped["aha"]["audit"]["contributors"] == flat["aha"]["audit"]["contributors"]
    assert len(flat["aha"]["audit"]["contributors"]) == 2
    # A body given to normalize() directly, not read through parse_body, too.
    body = orjson.loads((SAMPLES / "collation/collated_wrapped_contributors.json").read_bytes())
    direct = normalize(body, Provenance(), now=NOW)
    assert direct["related"] == flat["related"]


def test_unknown_event_type_is_kept_whole() -> None:
    raw = (SAMPLES / "security_event_unknown_type.json").read_bytes()
    doc = normalize_raw(raw, provenance_for(raw), now=NOW)
    assert doc["aha"]["event"] == "security"
    assert doc["aha"]["security"] == orjson.loads(raw)["security"]
    assert doc["event"]["action"] == "security-user.login_failed"
    assert doc["user"]["email"] == "priya.menon@example.com"


def test_bytes_that_are_not_a_webhook_are_shipped_not_dropped() -> None:
    doc = normalize_raw(
        b"\xff garbage", Provenance(received_at=NOW), now=NOW, include_original=True
    )
    assert doc["aha"]["event"] == "unparsed"
    assert doc["@timestamp"] == NOW
    assert "garbage" in doc["event"]["original"]


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "audit_action",
                "user",
                "changes",
                "contributors",
                "created_at",
                "auditable_type",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(),
            st.lists(st.one_of(st.none(), st.text(), st.integers())),
        ),
    )
)
def test_any_shape_of_audit_normalizes_without_raising(audit: dict) -> None:
    doc = normalize({"event": "audit", "audit": audit}, Provenance(), now=NOW)
    orjson.dumps(doc)
    assert doc["event"]["kind"] == "event"


def test_a_lone_change_that_is_not_a_list_is_kept() -> None:
    doc = normalize(
        {"event": "audit", "audit": {"changes": {"field_name": "Name", "value": "x"}}},
        Provenance(),
        now=NOW,
    )
    assert doc["aha"]["audit"]["changes"] == [{"field_name": "Name", "value": "x"}]


@pytest.mark.parametrize(
    ("created_at", "timestamp"),
    [
        ("2026-11-27T14:05:12.417Z", "2026-11-27T14:05:12.417Z"),
        ("2026-11-27T15:05:12.417+01:00", "2026-11-27T14:05:12.417Z"),
        ("2026-11-27 14:05:12", "2026-11-27T14:05:12.000Z"),
        ("yesterday", "2026-11-27T14:10:12.990Z"),
        (1764252312, "2026-11-27T14:10:12.990Z"),
    ],
)
def test_timestamp_is_normalized_or_falls_back_to_arrival(
    created_at: object, timestamp: str
) -> None:
    doc = normalize(
        {"event": "audit", "audit": {"created_at": created_at}},
        Provenance(received_at="2026-11-27T14:10:12.990Z"),
        now=NOW,
    )
    assert doc["@timestamp"] == timestamp


@pytest.mark.parametrize("header", ["yesterday", "2026-13-45T99:00:00Z", "1764806400", "\u0000"])
def test_a_received_at_header_that_is_no_time_is_left_out_and_tagged(header: str) -> None:
    from dataclasses import replace

    raw = (SAMPLES / "feature_create.json").read_bytes()
    body = orjson.loads(raw)
    body["audit"].pop("created_at")
    event = normalize(body, replace(provenance_for(raw), received_at=header), now=NOW)
    assert "received_at" not in event["aha"]["ingest"]
    assert event["@timestamp"] == NOW
    assert event["tags"] == ["aha_siem_invalid_received_at"]


def test_a_received_at_header_that_is_a_time_dates_an_event_without_created_at() -> None:
    from dataclasses import replace

    raw = (SAMPLES / "feature_create.json").read_bytes()
    body = orjson.loads(raw)
    body["audit"].pop("created_at")
    event = normalize(
        body, replace(provenance_for(raw), received_at="2026-12-03T10:00:00.5+00:00"), now=NOW
    )
    assert (
        event["@timestamp"] == event["aha"]["ingest"]["received_at"] == "2026-12-03T10:00:00.500Z"
    )
    assert "tags" not in event
