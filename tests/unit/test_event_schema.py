from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.normalize import Provenance, normalize, normalize_raw
from tests.helpers import normalized_sample, sample_paths
from tests.schema import assert_valid_event

NOW = "2026-11-27T14:10:13.052Z"


@pytest.mark.parametrize("path", sample_paths(), ids=lambda path: path.stem)
def test_every_sample_validates_against_the_published_schema(path) -> None:  # type: ignore[no-untyped-def]
    assert_valid_event(normalized_sample(path, include_original=True))


def test_the_schema_catches_a_broken_event() -> None:
    raw = next(iter(sample_paths())).read_bytes()
    event = normalize_raw(raw, Provenance(), now=NOW)
    event["event"]["category"] = ["not-an-ecs-category"]
    del event["observer"]
    with pytest.raises(AssertionError) as raised:
        assert_valid_event(event)
    assert "event/category/0" in str(raised.value)
    assert "observer" in str(raised.value)


def test_unparsed_bytes_still_validate() -> None:
    assert_valid_event(normalize_raw(b"\x00not json", Provenance(received_at=NOW), now=NOW))


_values = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(), st.booleans())
_users = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"id": st.text(), "name": st.text(), "email": st.text()}),
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.text(), st.integers()),
            "audit_action": st.one_of(st.sampled_from(["create", "update", "destroy"]), st.text()),
            "auditable_type": st.one_of(
                st.sampled_from(["feature", "ideas/idea", "user"]), st.text()
            ),
            "auditable_id": st.one_of(st.text(), st.integers(), st.none()),
            "created_at": st.one_of(st.just("2026-11-27T14:05:12.417Z"), st.text(), st.integers()),
            "interesting": st.booleans(),
            "user": _users,
            "contributors": st.lists(_users, max_size=3),
            "changes": st.lists(
                st.fixed_dictionaries(
                    {"field_name": st.one_of(st.text(), st.none()), "value": _values}
                ),
                max_size=4,
            ),
            "description": st.text(),
            "auditable_url": st.one_of(st.none(), st.text()),
        },
    )
)
def test_any_audit_shape_validates(audit: dict) -> None:
    assert_valid_event(
        normalize({"event": "audit", "audit": audit}, Provenance(received_at=NOW), now=NOW)
    )
