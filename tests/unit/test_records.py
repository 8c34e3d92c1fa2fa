from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from forwarder.records import decode_headers, encode_headers, iso_millis, record_key


def test_key_is_record_type_and_id() -> None:
    body = {
        "event": "audit",
        "audit": {"id": "1", "auditable_type": "feature", "auditable_id": "42"},
    }
    assert record_key(body, "hash") == b"feature:42"


def test_key_falls_back_to_event_id_then_body_hash() -> None:
    assert record_key({"event": "security", "security": {"id": 7}}, "hash") == b"security:7"
    assert record_key({"event": "audit", "audit": {}}, "abc") == b"abc"
    assert (
        record_key({"event": "audit", "audit": {"auditable_type": "", "auditable_id": "1"}}, "h")
        == b"h"
    )


@given(
    st.dictionaries(
        st.text(),
        st.recursive(
            st.none() | st.text() | st.integers(), lambda c: st.dictionaries(st.text(), c)
        ),
    )
)
def test_key_is_never_empty(body: dict) -> None:
    assert record_key(body, "fallback")


def test_headers_round_trip() -> None:
    headers = {"token-id": "acme-prod", "source": "webhook"}
    assert decode_headers(encode_headers(headers)) == headers
    assert decode_headers({"a": b"1", "b": None}) == {"a": "1", "b": ""}


def test_iso_millis_is_utc_with_z() -> None:
    moment = datetime(2026, 11, 27, 14, 5, 12, 417_999, tzinfo=UTC)
    assert iso_millis(moment) == "2026-11-27T14:05:12.417Z"
