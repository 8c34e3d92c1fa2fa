from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.core.dedupe import (
    Decision,
    State,
    annotate,
    change_key,
    content_hash,
    decide,
    user_key,
)
from forwarder.core.users import canonical_audit
from tests.helpers import SAMPLES

HORIZON = 3600.0


def sample(name: str) -> dict[str, Any]:
    """A sample audit as the worker's dedupe sees it (contributors flat: `parse_body`)."""
    audit = orjson.loads((SAMPLES / "collation" / f"{name}.json").read_bytes())["audit"]
    return dict(canonical_audit(audit))


PARTS = [sample("pre_collation_1"), sample("pre_collation_2"), sample("pre_collation_3")]
COLLATED = {
    "new id": sample("collated_new_id"),
    "reused id": sample("collated_reuses_first_id"),
    "wrapped contributors": sample("collated_wrapped_contributors"),
}


def run(audits: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Decision]]:
    """Feed audits of one record in order; every decision in arrival order."""
    state: State | None = None
    out = []
    for index, audit in enumerate(audits):
        decision = decide(
            state, audit, event_time=1000.0 + index, now=5000.0 + index, horizon=HORIZON
        )
        state = decision.state
        out.append((audit, decision))
    return out


def shipped_summary(
    results: list[tuple[dict[str, Any], Decision]],
) -> tuple[Counter[str], set[str]]:
    """New (non-repeated) changes shipped, counted; every user shipped."""
    changes: Counter[str] = Counter()
    users: set[str] = set()
    for audit, decision in results:
        if not decision.ship:
            continue
        for index, change in enumerate(audit.get("changes") or []):
            if index not in decision.repeated:
                changes[change_key(change)] += 1
        for user in [audit.get("user"), *(audit.get("contributors") or [])]:
            key = user_key(user)
            if key:
                users.add(key)
    return changes, users


def expected_of(parts: list[dict[str, Any]]) -> tuple[Counter[str], set[str]]:
    changes = Counter({change_key(change): 1 for part in parts for change in part["changes"]})
    users = {key for part in parts if (key := user_key(part["user"]))}
    return changes, users


def test_usual_order_ships_the_parts_and_suppresses_the_collated_audit() -> None:
    for collated in COLLATED.values():
        results = run([*PARTS, collated])
        assert [decision.ship for _, decision in results] == [True, True, True, False]
        assert results[-1][1].reason == "collated"
        assert shipped_summary(results) == expected_of(PARTS)


def test_collated_first_ships_it_and_then_only_the_change_it_collapsed() -> None:
    results = run([COLLATED["new id"], *PARTS])
    assert [decision.ship for _, decision in results] == [True, False, True, False]
    # The intermediate "Export as CSV" by Jonas is a change of its own and is not lost.
    assert results[2][0]["changes"][0]["value"] == "<p>Export as CSV</p>"
    assert shipped_summary(results) == expected_of(PARTS)


def test_every_arrival_order_of_the_burst_ships_each_change_and_user_exactly_once() -> None:
    for name, collated in COLLATED.items():
        for order in itertools.permutations([*PARTS, collated]):
            results = run(list(order))
            assert shipped_summary(results) == expected_of(PARTS), (name, [a["id"] for a in order])


def test_resends_of_anything_are_dropped_as_exact_copies() -> None:
    for collated in COLLATED.values():
        burst = [*PARTS, collated]
        for order in itertools.permutations(burst):
            with_resends = [*order, *order[:2], order[0]]
            results = run(with_resends)
            assert shipped_summary(results) == expected_of(PARTS)
            assert all(not decision.ship for _, decision in results[len(burst) :])
    copies = run([PARTS[0], PARTS[0]])
    assert copies[1][1].reason == "exact"


def test_a_collated_audit_that_ships_lists_what_it_supersedes_and_marks_repeats() -> None:
    results = run([PARTS[0], COLLATED["new id"]])
    decision = results[1][1]
    assert decision.ship and decision.collated
    assert decision.supersedes == [PARTS[0]["id"]]
    assert decision.repeated == [0]  # Name was shipped by the first part


def test_a_collated_audit_reusing_an_id_is_a_revision() -> None:
    results = run([PARTS[0], PARTS[1], PARTS[2], COLLATED["reused id"]])
    assert results[-1][1].revision
    assert results[-1][1].reason == "collated"


def test_the_author_listed_as_contributor_is_no_collation_and_no_other_content() -> None:
    """The REST API lists the author in `contributors` of every audit; the webhook does not."""
    webhook = PARTS[0]
    api = {**PARTS[0], "contributors": [PARTS[0]["user"]]}
    assert content_hash(api) == content_hash(webhook)
    [(_, first), (_, second)] = run([webhook, api])
    assert first.ship and not first.collated
    assert (second.ship, second.reason, second.collated) == (False, "exact", False)
    [(_, alone)] = run([api])
    assert alone.ship and not alone.collated and not alone.revision
    event: dict[str, Any] = {"aha": {"audit": {"changes": []}}}
    assert "collation" not in annotate(event, alone)["aha"]
    # A contributor besides the author is what makes an audit collated.
    merged = {**api, "id": "other", "contributors": [PARTS[0]["user"], PARTS[1]["user"]]}
    assert content_hash(merged) != content_hash({**merged, "contributors": []})
    assert run([merged])[0][1].collated


def test_changes_outside_the_horizon_ship_again() -> None:
    first = decide(None, PARTS[0], event_time=0.0, now=0.0, horizon=60.0)
    again = decide(
        first.state, {**PARTS[0], "id": "other"}, event_time=120.0, now=120.0, horizon=60.0
    )
    assert again.ship


def test_create_and_destroy_without_changes_are_never_suppressed() -> None:
    destroy = {"id": "9", "audit_action": "destroy", "user": PARTS[0]["user"], "changes": []}
    results = run([PARTS[0], destroy])
    assert results[1][1].ship


def test_state_of_one_record_stays_bounded() -> None:
    state: State | None = None
    for index in range(50):
        audit = {**PARTS[0], "id": str(index), "changes": [{"field_name": "n", "value": index}]}
        state = decide(
            state, audit, event_time=float(index), now=0.0, horizon=10.0, max_audits=20
        ).state
    assert state is not None
    assert len(state.audits) == 20
    assert len(state.changes) <= 12  # only what is inside the horizon


_FIELDS = ["Name", "Description", "Status"]
_USERS = [{"id": str(n), "name": f"user {n}", "email": f"u{n}@example.com"} for n in range(3)]


@st.composite
def bursts(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Random edits of one record, their pre-collation audits, a collated one, an arrival order."""
    edits = draw(
        st.lists(
            st.tuples(st.sampled_from(_FIELDS), st.integers(0, 3), st.integers(0, 2)),
            min_size=1,
            max_size=6,
        )
    )
    parts = [
        {
            "id": str(1000 + index),
            "audit_action": "update",
            "auditable_type": "feature",
            "auditable_id": "1",
            "user": _USERS[user],
            "changes": [{"field_name": field_name, "value": f"v{value}"}],
        }
        for index, (field_name, value, user) in enumerate(edits)
    ]
    last: dict[str, Any] = {}
    for part in parts:
        last[part["changes"][0]["field_name"]] = part["changes"][0]["value"]
    contributors = list({part["user"]["id"]: part["user"] for part in parts}.values())
    collated = {
        "id": draw(st.sampled_from([parts[0]["id"], "999999"])),
        "audit_action": "update",
        "auditable_type": "feature",
        "auditable_id": "1",
        "user": parts[-1]["user"],
        "contributors": contributors,
        "changes": [{"field_name": name, "value": value} for name, value in last.items()],
    }
    arrivals = draw(st.permutations([*parts, collated]))
    resends = draw(st.lists(st.sampled_from([*parts, collated]), max_size=4))
    positions = [draw(st.integers(0, len(arrivals))) for _ in resends]
    order = list(arrivals)
    for position, copy in zip(positions, resends, strict=True):
        order.insert(position, copy)
    return parts, order


@settings(max_examples=300)
@given(bursts())
def test_property_any_burst_in_any_order_with_resends(
    burst: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    parts, order = burst
    expected_changes, expected_users = expected_of(parts)
    changes, users = shipped_summary(run(order))
    assert changes == expected_changes
    assert users == expected_users
