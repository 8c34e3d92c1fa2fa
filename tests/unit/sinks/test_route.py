"""A sink's `route`: which normalized events it takes, checked on the real samples."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from forwarder.config import Config
from forwarder.sinks.config import RouteConfig
from tests.helpers import body_id, normalized_sample, sample_paths

SAMPLES = {body_id(path): normalized_sample(path) for path in sample_paths()}

COLLATED = {
    "collation/collated_new_id",
    "collation/collated_reuses_first_id",
    "collation/collated_wrapped_contributors",
}
# Priya Menon (6514078897796815681) and Jonas Düring (6514079921178334209), as author or
# contributor. feature_create names Jonas only as the value of "Assigned to user": not his action.
PRIYA = COLLATED | {
    "collation/pre_collation_1",
    "collation/pre_collation_3",
    "feature_create",
    "feature_update_status",
    "release_destroy",
    "security_event_unknown_type",
    "tagging_create_uninteresting",
}
JONAS = COLLATED | {
    "collation/pre_collation_2",
    "idea_endorsement_create",
    "note_rich_text",
    "requirement_estimate_integer",
}


@pytest.mark.parametrize(
    ("route", "selected"),
    [
        ({}, set(SAMPLES)),
        ({"fields": ["Workflow status"]}, {"feature_update_status"}),
        ({"fields": ["  workflow STATUS "]}, {"feature_update_status"}),
        (
            {"fields": ["Description"]},
            COLLATED | {"collation/pre_collation_2", "collation/pre_collation_3"},
        ),
        (
            {"fields": ["Body", "Estimate"]},
            {"comment_create_null_user", "note_rich_text", "requirement_estimate_integer"},
        ),
        # Events without changes (a destroy, an endorsement, another event type) have no field.
        (
            {"fields": ["Name", "Tag"]},
            COLLATED
            | {"collation/pre_collation_1", "feature_create", "tagging_create_uninteresting"},
        ),
        ({"users": ["jonas.during@example.com"]}, JONAS),
        ({"users": ["6514079921178334209"]}, JONAS),
        ({"users": [6514078897796815681]}, PRIYA),  # an id written without quotes in YAML
        ({"users": ["PRIYA.MENON@EXAMPLE.COM"]}, PRIYA),
        ({"users": ["priya.menon@example.com", "jonas.during@example.com"]}, PRIYA | JONAS),
        ({"users": ["nobody@example.com"]}, set()),
        # Every key that is set must pass.
        (
            {"fields": ["Description"], "users": ["6514078897796815681"]},
            COLLATED | {"collation/pre_collation_3"},
        ),
        (
            {"fields": ["Name"], "actions": ["create"]},
            {"feature_create"},
        ),
        ({"users": ["jonas.during@example.com"], "record_types": ["note"]}, {"note_rich_text"}),
    ],
)
def test_route_selects_by_field_and_user(route: dict[str, Any], selected: set[str]) -> None:
    config = RouteConfig.model_validate(route)
    taken = {name for name, doc in SAMPLES.items() if config.matches(doc)}
    assert taken == selected & set(SAMPLES)


def test_a_contributor_in_the_rest_apis_wrapped_shape_is_matched_too() -> None:
    doc = SAMPLES["collation/pre_collation_1"] | {"related": None}
    doc["aha"] = doc["aha"] | {
        "audit": doc["aha"]["audit"]
        | {"contributors": [{"user": {"id": "42", "email": "Kim@Example.com"}}]}
    }
    assert RouteConfig(users=("kim@example.com",)).matches(doc)
    assert RouteConfig(users=("42",)).matches(doc)
    assert not RouteConfig(users=("43",)).matches(doc)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"users": [""]}, "users"),
        ({"fields": ["Name", "  "]}, "fields"),
        ({"fields": [{"name": "Name"}]}, "fields"),
        ({"users": "a@example.com", "unknown": 1}, "unknown"),
    ],
)
def test_route_mistakes_are_named(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Config.model_validate(
            {"sinks": [{"type": "file", "name": "f", "path": "/tmp/x", "route": route}]}
        )
    assert message in str(raised.value)


def test_one_name_alone_is_a_list_of_one() -> None:
    route = RouteConfig.model_validate({"fields": "Workflow status", "users": 42})
    assert route.fields == ("Workflow status",) and route.users == ("42",)
