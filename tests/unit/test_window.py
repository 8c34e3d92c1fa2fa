"""Dedupe `window` mode: holding a record's audits and merging them, without Kafka."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings

from forwarder.core import dedupe, window
from forwarder.core.normalize import Provenance, normalize
from tests.unit.test_dedupe import COLLATED, PARTS, bursts

HORIZON = 3600.0
WINDOW = 60.0


def created(audit: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(audit["created_at"].replace("Z", "+00:00")).timestamp()


def run_window(
    arrivals: list[tuple[dict[str, Any], float]],
    state: dedupe.State | None = None,
    now: float = 10_000.0,
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], dedupe.State | None, int]:
    """What the agent does for one record: hold each arrival (dropping copies), then flush.

    Returns the merged (body, info) shipped, the state, and how many copies were dropped.
    """
    group: window.Group | None = None
    copies = 0
    for audit, event_time in arrivals:
        copy, _, state = dedupe.observe(state, audit, event_time=event_time, now=now)
        if copy:
            copies += 1
            continue
        group = window.hold(group, audit, {"received-at": "x"}, now=now, event_time=event_time)
    shipped = []
    if group is not None:
        assert window.due(group, now=now + WINDOW, window=WINDOW)
        ship, state = dedupe.decide_group(
            state,
            [(entry["audit"], entry["time"]) for entry in group["audits"]],
            now=now + WINDOW,
            horizon=HORIZON,
        )
        if ship:
            shipped.append(window.merge(group))
    return shipped, state, copies


def changes_of(body: dict[str, Any]) -> dict[str, Any]:
    return {change["field_name"]: change["value"] for change in body["audit"]["changes"]}


def users_of(body: dict[str, Any]) -> set[str | None]:
    audit = body["audit"]
    return {dedupe.user_key(user) for user in [audit["user"], *audit["contributors"]]}


PRIYA = dedupe.user_key(PARTS[0]["user"])
JONAS = dedupe.user_key(PARTS[1]["user"])
FINAL = {"Name": "Audit log export", "Description": "<p>Export as CSV and JSON</p>"}


def test_every_arrival_order_of_the_burst_ships_one_merged_event_with_the_last_values() -> None:
    for variant, collated in COLLATED.items():
        for order in itertools.permutations([*PARTS, collated]):
            arrivals = [(audit, created(audit)) for audit in order]
            shipped, _, copies = run_window(arrivals)
            assert copies == 0
            [(body, info)] = shipped
            assert changes_of(body) == FINAL, (variant, [a["id"] for a in order])
            assert users_of(body) == {PRIYA, JONAS}
            assert set(info["sources"]) == {audit["id"] for audit in [*PARTS, collated]}
            # Who set the last Description: Priya in the third audit, not the collated one.
            by_field = dict(
                zip(
                    [c["field_name"] for c in body["audit"]["changes"]],
                    info["changed_by"],
                    strict=True,
                )
            )
            assert by_field["Description"]["audit_id"] == PARTS[2]["id"]
            assert dedupe.user_key(by_field["Description"]["user"]) == PRIYA
            assert by_field["Name"]["audit_id"] == PARTS[0]["id"]


def test_parts_from_the_api_listing_their_author_merge_like_the_webhook_parts() -> None:
    """The REST API lists the author as a contributor of every audit: no collation in that."""
    api_parts = [{**part, "contributors": [part["user"]]} for part in PARTS]
    for collated in COLLATED.values():
        for order in itertools.permutations(range(len(PARTS) + 1)):
            merged = []
            for parts in (PARTS, api_parts):
                burst = [*parts, collated]
                shipped, _, _ = run_window([(burst[i], created(burst[i])) for i in order])
                [(body, info)] = shipped
                merged.append((changes_of(body), users_of(body), info["changed_by"]))
            assert merged[0] == merged[1]
    # And a backfilled copy of a held webhook audit is an exact copy.
    _, _, copies = run_window([(PARTS[0], created(PARTS[0])), (api_parts[0], created(PARTS[0]))])
    assert copies == 1


def test_resends_inside_a_window_are_dropped_as_exact_copies() -> None:
    order = [PARTS[0], PARTS[1], PARTS[0], COLLATED["new id"], PARTS[1], PARTS[2]]
    shipped, _, copies = run_window([(audit, created(audit)) for audit in order])
    assert copies == 2
    [(body, info)] = shipped
    assert changes_of(body) == FINAL
    assert len(info["sources"]) == 4


def test_a_collated_audit_after_its_parts_shipped_in_a_window_is_suppressed() -> None:
    first, state, _ = run_window([(audit, created(audit)) for audit in PARTS])
    [(body, _)] = first
    assert changes_of(body) == FINAL
    late = COLLATED["new id"]
    second, _, _ = run_window([(late, created(late))], state=state, now=20_000.0)
    assert second == []


def test_a_part_after_its_collated_audit_shipped_ships_only_what_was_collapsed() -> None:
    collated = COLLATED["reused id"]
    first, state, _ = run_window([(collated, created(collated))])
    [(body, _)] = first
    assert changes_of(body) == FINAL
    # The intermediate value Jonas set was collapsed by the collated audit: it ships late.
    second, state, _ = run_window([(PARTS[1], created(PARTS[1]))], state=state, now=20_000.0)
    [(late, _)] = second
    assert changes_of(late) == {"Description": "<p>Export as CSV</p>"}
    # The third part carries nothing new: suppressed.
    third, _, _ = run_window([(PARTS[2], created(PARTS[2]))], state=state, now=30_000.0)
    assert third == []


def test_a_merged_event_normalizes_with_its_sources_and_who_set_each_change() -> None:
    order = [COLLATED["reused id"], *PARTS]
    [(body, info)] = run_window([(audit, created(audit)) for audit in order])[0]
    doc = normalize(body, Provenance(token_id="t", account="acme"), now="2026-11-27T00:00:00Z")
    window.annotate(doc, info, held_seconds=61.5)
    collation = doc["aha"]["collation"]
    assert collation["mode"] == "window"
    assert set(collation["sources"]) == {audit["id"] for audit in order}
    assert doc["event"]["id"] not in collation["supersedes"]
    assert set(collation["supersedes"]) | {doc["event"]["id"]} == set(collation["sources"])
    assert collation["held_seconds"] == 61.5
    assert {"Priya Menon", "Jonas Düring"} <= set(doc["related"]["user"])
    described = {c["field_name"]: c for c in doc["aha"]["audit"]["changes"]}
    assert described["Description"]["changed_by"]["name"] == "Priya Menon"
    assert described["Description"]["audit_id"] == PARTS[2]["id"]


def test_create_then_updates_merge_into_a_create_and_destroy_wins() -> None:
    create = {**PARTS[0], "id": "1", "audit_action": "create"}
    update = {**PARTS[1], "id": "2"}
    [(body, _)] = run_window([(create, 1.0), (update, 2.0)])[0]
    assert body["audit"]["audit_action"] == "create"
    destroy = {**PARTS[2], "id": "3", "audit_action": "destroy", "changes": []}
    [(body, _)] = run_window([(create, 1.0), (update, 2.0), (destroy, 3.0)])[0]
    assert body["audit"]["audit_action"] == "destroy"


def test_a_window_is_due_only_once_its_time_has_passed() -> None:
    group = window.hold(None, PARTS[0], {}, now=100.0, event_time=1.0)
    group = window.hold(group, PARTS[1], {}, now=150.0, event_time=2.0)
    assert not window.due(group, now=159.0, window=60.0)
    assert window.due(group, now=160.0, window=60.0)  # from the first audit, not the last
    assert window.first_headers(window.hold(None, PARTS[0], {"a": "b"}, now=0, event_time=0)) == {
        "a": "b"
    }


@settings(max_examples=300)
@given(bursts())
def test_property_any_burst_in_any_order_merges_to_the_last_value_per_field_and_every_user(
    burst: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    parts, order = burst
    collated = next(audit for audit in order if audit.get("contributors"))
    # Parts happen one second apart; a collated audit reusing the first id carries its time.
    times = {part["id"]: 1000.0 + index for index, part in enumerate(parts)}
    collated_time = times[parts[0]["id"]] if collated["id"] in times else 1000.0 + len(parts)

    def time_of(audit: dict[str, Any]) -> float:
        return collated_time if audit.get("contributors") else times[audit["id"]]

    shipped, _, _ = run_window([(audit, time_of(audit)) for audit in order])
    [(body, info)] = shipped
    last: dict[str, Any] = {}
    for part in parts:
        last[part["changes"][0]["field_name"]] = part["changes"][0]["value"]
    assert changes_of(body) == last
    assert users_of(body) == {dedupe.user_key(part["user"]) for part in parts}
    assert set(info["sources"]) == {audit["id"] for audit in order}
    # Who set each last value: the last part that wrote that field.
    setters = {part["changes"][0]["field_name"]: part for part in parts}
    for change, setter in zip(body["audit"]["changes"], info["changed_by"], strict=True):
        expected = setters[change["field_name"]]
        assert setter["user"] == expected["user"]


def test_a_merge_of_audits_sent_with_interesting_as_a_string_false_is_not_interesting() -> None:
    # Aha! may send booleans as strings; the merge reads them as normalize does.
    quiet = [{**part, "interesting": "false"} for part in PARTS]
    [(body, _)] = run_window([(audit, created(audit)) for audit in quiet])[0]
    doc = normalize(body, Provenance(token_id="t", account="acme"), now="2026-11-27T00:00:00Z")
    assert doc["aha"]["audit"]["interesting"] is False
    loud = [*quiet[:-1], {**quiet[-1], "interesting": "true"}]
    [(body, _)] = run_window([(audit, created(audit)) for audit in loud])[0]
    doc = normalize(body, Provenance(token_id="t", account="acme"), now="2026-11-27T00:00:00Z")
    assert doc["aha"]["audit"]["interesting"] is True
