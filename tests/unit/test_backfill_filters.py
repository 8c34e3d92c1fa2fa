"""The webhook's filters as backfill and reconcile apply them: which audits a filtered activity
webhook would have sent, and why the others are left out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from forwarder.backfill.config import FiltersConfig
from forwarder.backfill.filters import AuditFilter, workspace_of
from forwarder.config import ConfigError, parse
from tests.helpers import SAMPLES

PRIYA = {"id": "6514078897796815681", "name": "Priya Menon", "email": "priya.menon@example.com"}
JONAS = {"id": "6514079921178334209", "name": "Jonas Düring", "email": "jonas.during@example.com"}


def sample(name: str) -> dict[str, Any]:
    return orjson.loads((SAMPLES / name).read_bytes())["audit"]


@pytest.mark.parametrize(
    ("name", "workspace"),
    [
        ("feature_update_status.json", "DEMO"),  # .../features/DEMO-28
        ("comment_create_null_user.json", "DEMO"),  # the feature it is on
        ("idea_endorsement_create.json", "DEMO"),  # .../ideas/ideas/DEMO-I-15
        ("requirement_estimate_integer.json", "DEMO"),  # .../requirements/DEMO-41-2
        ("release_destroy.json", "DEMO"),  # no URL: "deleted release DEMO-R-3 Parking lot"
    ],
)
def test_the_workspace_is_read_from_the_record_reference(name: str, workspace: str) -> None:
    assert workspace_of(sample(name)) == workspace


@pytest.mark.parametrize(
    ("audit", "workspace"),
    [
        ({"auditable_url": "https://acme.aha.io/features/MOB2-7?x=1#c", "description": ""}, "MOB2"),
        ({"auditable_url": "https://acme.aha.io/epics/OPS-E-12/"}, "OPS"),
        ({"auditable_url": None, "description": "updated feature OPS-3 SAML-2 support"}, "OPS"),
        # No reference anywhere (an account-level record, say): unknown.
        (
            {"auditable_url": "https://acme.aha.io/settings/users", "description": "added user"},
            None,
        ),
        ({"description": "renamed re-run-3 and x-12"}, None),
        ({}, None),
    ],
)
def test_workspace_of_odd_audits(audit: dict[str, Any], workspace: str | None) -> None:
    assert workspace_of(audit) == workspace


def audit(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "1",
        "audit_action": "update",
        "user": PRIYA,
        "auditable_type": "feature",
        "auditable_id": "7",
        "description": "updated feature DEMO-7 Name",
        "auditable_url": "https://acme.aha.io/features/DEMO-7",
        "changes": [{"field_name": "Workflow status", "value": "a &rarr; b"}],
    }
    return {**base, **fields}


FILTERS = FiltersConfig(
    workspaces=["demo"],
    record_types=["Feature", "ideas/idea"],
    fields=["workflow STATUS", "Estimate"],
    users=["Priya.Menon@example.com", 6514079921178334209],
)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (audit(), None),
        (audit(auditable_url="https://acme.aha.io/features/OPS-7"), "workspace"),
        (audit(auditable_url=None, description="updated a feature"), "workspace_unknown"),
        (audit(auditable_type="release"), "record_type"),
        (audit(auditable_type="ideas/idea"), None),
        (audit(changes=[{"field_name": "Name", "value": "x"}]), "field"),
        # Sent when any of its changes is to a selected field.
        (audit(changes=[{"field_name": "Name", "value": "x"}, {"field_name": "Estimate"}]), None),
        (audit(changes=[]), "field"),
        (audit(user={"id": "9", "email": "mallory@example.com"}), "user"),
        (audit(user=None), "user"),
        (audit(user=JONAS), None),  # by id
        # A contributor besides the author counts as the user's activity.
        (audit(user={"id": "9"}, contributors=[{"id": "9"}, JONAS]), None),
        # The first filter that fails names the reason.
        (audit(auditable_type="release", changes=[], user=None), "record_type"),
    ],
)
def test_rejects_names_why_the_webhook_would_not_have_sent_it(
    case: dict[str, Any], reason: str | None
) -> None:
    assert AuditFilter.of(FILTERS).rejects(case) == reason


def test_an_audit_without_a_workspace_can_be_let_through() -> None:
    lenient = AuditFilter.of(FiltersConfig(workspaces=["DEMO"], unknown_workspace="inject"))
    assert lenient.rejects(audit(auditable_url=None, description="updated a feature")) is None
    assert lenient.rejects(audit(auditable_url="https://acme.aha.io/features/OPS-1")) == (
        "workspace"
    )


def test_no_filters_let_everything_through() -> None:
    nothing = FiltersConfig()
    assert not nothing.active
    assert AuditFilter.of(nothing).rejects(audit(user=None, changes=[])) is None
    for path in SAMPLES.rglob("*.json"):
        body = orjson.loads(path.read_bytes())
        if body["event"] == "audit":
            assert AuditFilter.of(nothing).rejects(body["audit"]) is None


def test_the_filters_section_is_validated_with_the_key_named() -> None:
    config = parse(
        {
            "aha": {
                "accounts": [
                    {
                        "name": "acme",
                        "filters": {"workspaces": ["demo", "Ops"], "users": [6514078897796815681]},
                    }
                ]
            }
        }
    )
    filters = config.aha.accounts[0].filters
    assert filters.workspaces == ("DEMO", "OPS")
    assert filters.users == ("6514078897796815681",)
    assert filters.active
    with pytest.raises(ConfigError, match=r"aha\.accounts\.0\.filters\.workspaces"):
        parse({"aha": {"accounts": [{"name": "acme", "filters": {"workspaces": ["DEMO-1"]}}]}})
    with pytest.raises(ConfigError, match=r"aha\.accounts\.0\.filters\.fields"):
        parse({"aha": {"accounts": [{"name": "acme", "filters": {"fields": [" "]}}]}})
    with pytest.raises(ConfigError, match=r"aha\.accounts\.0\.filters\.projects"):
        parse({"aha": {"accounts": [{"name": "acme", "filters": {"projects": ["x"]}}]}})
