"""The record state's stored format: version 2 written, version 1 (before the pure core) read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from forwarder.core import dedupe, window
from forwarder.core.state import RecordState, decode, encode
from forwarder.core.users import canonical_audit

COLLATION = Path(__file__).resolve().parents[3] / "forwarder" / "samples" / "collation"
HORIZON = 3600.0


def audit(name: str) -> dict[str, Any]:
    data = orjson.loads((COLLATION / f"{name}.json").read_bytes())["audit"]
    return dict(canonical_audit(data))


PARTS = [audit("pre_collation_1"), audit("pre_collation_2"), audit("pre_collation_3")]
COLLATED = audit("collated_new_id")


def as_version_1(state: RecordState) -> bytes:
    """A state as the worker stored it before version 2: one-letter keys, positional lists."""
    data: dict[str, Any] = {
        "a": {
            audit_id: [seen.content_hash, seen.event_time, seen.shipped, seen.fields, seen.users]
            for audit_id, seen in state.audits.items()
        },
        "i": {key: [c.audit_id, c.event_time] for key, c in state.changes.items()},
        "u": state.users,
        "seen": state.seen,
    }
    if state.held is not None:
        data["h"] = state.held
    return orjson.dumps(data)


def test_a_version_1_state_gives_the_same_decisions_as_the_state_it_was_written_from() -> None:
    first = dedupe.decide(None, PARTS[0], event_time=1000.0, now=5000.0, horizon=HORIZON)
    second = dedupe.decide(first.state, PARTS[1], event_time=1001.0, now=5001.0, horizon=HORIZON)
    old = decode(as_version_1(second.state))
    assert old == second.state
    for state in (second.state, old):
        third = dedupe.decide(state, PARTS[2], event_time=1002.0, now=5002.0, horizon=HORIZON)
        collated = dedupe.decide(
            third.state, COLLATED, event_time=1003.0, now=5003.0, horizon=HORIZON
        )
        copy = dedupe.decide(third.state, PARTS[0], event_time=1000.0, now=5004.0, horizon=HORIZON)
        assert (third.ship, collated.ship, collated.reason, copy.reason) == (
            True,
            False,
            "collated",
            "exact",
        )


def test_a_literal_version_1_value_is_read() -> None:
    raw = (
        b'{"a":{"11":["abc",1000.0,true,["Name"],["id:1"]]},'
        b'"i":{"Name\\u001f\\"x\\"":["11",1000.0]},"u":{"id:1":1000.0},"seen":5000.0,'
        b'"h":{"opened":4990.0,"audits":[{"audit":{"id":"12"},"time":999.0,'
        b'"headers":{"source":"webhook"},"order":0}]}}'
    )
    state = decode(raw)
    assert state is not None
    assert state.audits["11"].content_hash == "abc" and state.audits["11"].shipped
    assert state.audits["11"].fields == ["Name"] and state.audits["11"].users == ["id:1"]
    assert state.changes['Name\x1f"x"'].audit_id == "11"
    assert state.users == {"id:1": 1000.0} and state.seen == 5000.0
    assert state.held is not None and state.held["audits"][0]["audit"] == {"id": "12"}
    assert window.due(state.held, now=5110.0, window=120.0)


def test_version_2_has_named_fields_and_reads_back_equal() -> None:
    decision = dedupe.decide(None, COLLATED, event_time=1000.0, now=5000.0, horizon=HORIZON)
    state = decision.state
    state.held = window.hold(None, PARTS[0], {"source": "webhook"}, now=5000.0, event_time=999.0)
    stored = orjson.loads(encode(state))
    assert stored["version"] == 2
    assert set(stored) == {"version", "seen", "audits", "changes", "users", "held"}
    (seen,) = stored["audits"].values()
    assert set(seen) == {"content_hash", "event_time", "shipped", "fields", "users"}
    assert all(set(c) == {"audit_id", "event_time"} for c in stored["changes"].values())
    assert decode(encode(state)) == state


def test_rewriting_a_version_1_state_writes_version_2() -> None:
    first = dedupe.decide(None, PARTS[0], event_time=1000.0, now=5000.0, horizon=HORIZON)
    old = decode(as_version_1(first.state))
    later = dedupe.decide(old, PARTS[1], event_time=1001.0, now=5001.0, horizon=HORIZON)
    assert orjson.loads(dedupe.encode_state(later.state))["version"] == 2


def test_nothing_stored_is_no_state() -> None:
    assert decode(None) is None
