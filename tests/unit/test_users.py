"""One shape for an audit's users: the REST API's wrapped contributors and the webhook's flat ones."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.users import (
    canonical_audit,
    canonical_body,
    merges,
    others,
    user_record,
)
from tests.helpers import SAMPLES

PRIYA = {"id": "6514078897796815681", "name": "Priya Menon", "email": "priya@example.com"}
JONAS = {"id": "6514079921178334209", "name": "Jonas Düring", "email": "jonas@example.com"}


def test_a_wrapped_contributor_is_unwrapped_and_a_flat_one_kept() -> None:
    assert user_record({"user": PRIYA}) == PRIYA
    assert user_record(PRIYA) is PRIYA
    # Something beside `user` is kept; the user's own keys win.
    assert user_record({"user": PRIYA, "role": "owner", "created_at": None}) == {
        **PRIYA,
        "role": "owner",
        "created_at": None,
    }
    assert user_record({"user": {**PRIYA, "role": "admin"}, "role": "owner"})["role"] == "admin"
    # A flat record that happens to have a `user` key is a flat record.
    odd = {"id": "1", "user": {"id": "2"}}
    assert user_record(odd) is odd
    assert user_record("Priya") == "Priya"


def test_canonical_audit_flattens_and_leaves_flat_audits_alone() -> None:
    wrapped = {"id": "1", "user": PRIYA, "contributors": [{"user": PRIYA}, {"user": JONAS}]}
    assert canonical_audit(wrapped)["contributors"] == [PRIYA, JONAS]
    assert wrapped["contributors"] == [{"user": PRIYA}, {"user": JONAS}]  # not changed in place
    flat = {"id": "1", "user": PRIYA, "contributors": [PRIYA, JONAS]}
    assert canonical_audit(flat) is flat
    bare = {"id": "1", "user": PRIYA}
    assert canonical_audit(bare) is bare
    # A lone contributor (not in a list) becomes a list of one.
    assert canonical_audit({"contributors": {"user": JONAS}})["contributors"] == [JONAS]
    mixed = canonical_audit({"contributors": [{"user": PRIYA}, JONAS, None]})
    assert mixed["contributors"] == [PRIYA, JONAS, None]


def test_canonical_body_touches_only_audits() -> None:
    body = {"event": "audit", "audit": {"contributors": [{"user": JONAS}]}}
    assert canonical_body(body) == {"event": "audit", "audit": {"contributors": [JONAS]}}
    other = {"event": "security", "security": {"contributors": [{"user": JONAS}]}}
    assert canonical_body(other) is other
    flat = {"event": "audit", "audit": {"contributors": [JONAS]}}
    assert canonical_body(flat) is flat


def test_only_users_besides_the_author_make_an_audit_merge() -> None:
    # What the REST API sends on every audit: the author as its only contributor.
    assert not merges({"user": PRIYA, "contributors": [PRIYA]})
    assert not merges({"user": PRIYA, "contributors": []})
    assert not merges({"user": PRIYA})
    assert merges({"user": PRIYA, "contributors": [PRIYA, JONAS]})
    assert others({"user": PRIYA, "contributors": [PRIYA, JONAS, JONAS]}) == [f"id:{JONAS['id']}"]
    # A system change (no author) that names a user merged that user's work.
    assert merges({"user": None, "contributors": [JONAS]})


def test_the_wrapped_sample_is_the_flat_sample_once_canonical() -> None:
    def audit(name: str) -> dict[str, Any]:
        return orjson.loads((SAMPLES / "collation" / name).read_bytes())["audit"]

    wrapped = audit("collated_wrapped_contributors.json")
    flat = audit("collated_new_id.json")
    assert wrapped != flat
    assert canonical_audit(wrapped) == flat


@given(
    st.recursive(
        st.none() | st.text(max_size=5) | st.integers(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    )
)
def test_any_contributors_value_is_accepted_and_canonical_is_idempotent(value: Any) -> None:
    audit = {"user": PRIYA, "contributors": value}
    once = canonical_audit(audit)
    assert canonical_audit(once) == once
    merges(once)
